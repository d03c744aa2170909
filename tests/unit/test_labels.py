"""SERVICE_* metadata as gliderlabs/registrator users write it: precedence, tags, meta."""

from __future__ import annotations

import pytest

from registrator.labels import (
    is_true_ignore,
    parse_tags,
    problems_with_keys,
    service_meta,
    service_metadata,
)
from registrator.model import Problem
from registrator.vocabulary import expand_template
from tests.unit.builders import make_container, make_metadata


@pytest.mark.parametrize(
    ("labels", "env", "port", "value", "origin"),
    [
        pytest.param({}, {"SERVICE_NAME": "e"}, 80, "e", "env SERVICE_NAME", id="generic env"),
        pytest.param(
            {"SERVICE_NAME": "l"},
            {"SERVICE_NAME": "e"},
            80,
            "l",
            "label SERVICE_NAME",
            id="generic label > generic env",
        ),
        pytest.param(
            {"SERVICE_NAME": "l"},
            {"SERVICE_80_NAME": "pe"},
            80,
            "pe",
            "env SERVICE_80_NAME",
            id="port env > generic label",
        ),
        pytest.param(
            {"SERVICE_80_NAME": "pl", "SERVICE_NAME": "l"},
            {"SERVICE_80_NAME": "pe", "SERVICE_NAME": "e"},
            80,
            "pl",
            "label SERVICE_80_NAME",
            id="port label > everything",
        ),
        pytest.param(
            {"SERVICE_443_NAME": "other", "SERVICE_NAME": "l"},
            {},
            80,
            "l",
            "label SERVICE_NAME",
            id="another port's key does not apply",
        ),
        pytest.param(
            {"SERVICE_80_NAME": "pl", "SERVICE_NAME": "l"},
            {},
            None,
            "l",
            "label SERVICE_NAME",
            id="container-wide view ignores port keys",
        ),
        pytest.param(
            {"SERVICE_name": "lower"},
            {},
            80,
            "lower",
            "label SERVICE_name",
            id="key suffix is case-insensitive, origin keeps the spelling",
        ),
        pytest.param({"service_name": "x"}, {}, 80, "", "SERVICE_NAME", id="prefix is not"),
        pytest.param({"SERVICE_": "x", "SERVICE_80": "y"}, {}, 80, "", "SERVICE_NAME", id="no key"),
    ],
)
def test_service_metadata_precedence(
    labels: dict[str, str], env: dict[str, str], port: int | None, value: str, origin: str
) -> None:
    metadata = make_metadata(labels, env, port)
    assert metadata.get("NAME") == value
    assert metadata.origin("NAME") == origin


def test_service_metadata_marks_port_scoped_keys() -> None:
    metadata = make_metadata(
        {"SERVICE_80_NAME": "a", "SERVICE_TAGS": "t"}, {"SERVICE_80_ID": "i", "SERVICE_ID": "g"}
    )
    assert metadata.port_scoped == {"NAME", "ID"}
    assert dict(metadata.values) == {"NAME": "a", "TAGS": "t", "ID": "i"}


def test_service_metadata_ignores_other_labels() -> None:
    metadata = make_metadata({"com.example.team": "x", "MY_SERVICE_NAME": "y"}, {"PATH": "/bin"})
    assert dict(metadata.values) == {}


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        pytest.param("", [], id="empty"),
        pytest.param("a", ["a"], id="one"),
        pytest.param("a,b,c", ["a", "b", "c"], id="several"),
        pytest.param(" a , b ", ["a", "b"], id="spaces trimmed"),
        pytest.param("a,,b,", ["a", "b"], id="empties dropped"),
        pytest.param(" , ,", [], id="only separators"),
        pytest.param("a,b,a", ["a", "b"], id="duplicates dropped, first kept"),
        pytest.param("b,a", ["b", "a"], id="order kept"),
        pytest.param("a\\,b,c", ["a,b", "c"], id="gliderlabs escaped comma"),
        pytest.param("\\,a", [",a"], id="leading escaped comma"),
        pytest.param("a\\,", ["a,"], id="trailing escaped comma"),
        pytest.param("a\\", ["a\\"], id="trailing backslash kept"),
        pytest.param("a\\b", ["a\\b"], id="backslash before other char kept"),
        pytest.param("a\\\\,b", ["a\\,b"], id="only the backslash next to the comma escapes"),
        pytest.param("k=v,x:y", ["k=v", "x:y"], id="tags with = and :"),
    ],
)
def test_parse_tags(text: str, tags: list[str]) -> None:
    assert parse_tags(text) == tags


@pytest.mark.parametrize(
    ("value", "ignored"),
    [
        pytest.param("true", True, id="true"),
        pytest.param("1", True, id="1"),
        pytest.param("yes", True, id="yes"),
        pytest.param("anything", True, id="any other word (gliderlabs)"),
        pytest.param("", False, id="empty"),
        pytest.param("   ", False, id="blank"),
        pytest.param("false", False, id="false"),
        pytest.param("FALSE", False, id="FALSE"),
        pytest.param(" no ", False, id="no, padded"),
        pytest.param("0", False, id="0"),
    ],
)
def test_is_true_ignore(value: str, ignored: bool) -> None:
    assert is_true_ignore(value) is ignored


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("", "", id="empty"),
        pytest.param("plain,tags", "plain,tags", id="no placeholders"),
        pytest.param("{{.Name}}", "web-1", id="name"),
        pytest.param("{{ .Image }}", "example/web:1.0", id="image, spaced"),
        pytest.param("{{.Hostname}}", "0123456789ab", id="hostname"),
        pytest.param("{{.Node}}", "node7", id="node"),
        pytest.param("{{.Labels.team}}", "payments", id="label by field"),
        pytest.param("{{.Labels.com.example.tier}}", "gold", id="dotted label by field"),
        pytest.param('{{index .Labels "com.example.tier"}}', "gold", id="label by index"),
        pytest.param("{{.Labels.missing}}", "", id="missing label is empty"),
        pytest.param("{{.Nope}}", "", id="unknown field is empty"),
        pytest.param("node={{.Node}},{{.Name}}", "node=node7,web-1", id="several"),
    ],
)
def test_expand_template(template: str, expected: str) -> None:
    container = make_container(labels={"team": "payments", "com.example.tier": "gold"})
    assert expand_template(template, container, "node7") == expected


SIXTY_ONE = {f"SERVICE_K{index:02d}": "v" for index in range(61)}


@pytest.mark.parametrize(
    ("labels", "meta", "problem_keys"),
    [
        pytest.param({"SERVICE_VERSION": "1.2"}, {"version": "1.2"}, [], id="lower-cased key"),
        pytest.param(
            {"SERVICE_build-id": "7", "SERVICE_GIT_SHA": "abc"},
            {"build-id": "7", "git_sha": "abc"},
            [],
            id="dash and underscore allowed",
        ),
        pytest.param(
            {
                "SERVICE_NAME": "n",
                "SERVICE_ID": "i",
                "SERVICE_TAGS": "t",
                "SERVICE_IGNORE": "",
                "SERVICE_PORT": "1",
                "SERVICE_NETWORK": "n",
                "SERVICE_IP": "1.2.3.4",
                "SERVICE_WEIGHT": "1",
                "SERVICE_CHECK_HTTP": "/",
                "SERVICE_CHECK": "x",
                "SERVICE_CONNECT": "sidecar",
                "SERVICE_CONNECT_UPSTREAMS": "db:1",
            },
            {},
            [],
            id="keys with a meaning of their own are not meta",
        ),
        pytest.param({"SERVICE_MY.KEY": "x"}, {}, ["label SERVICE_MY.KEY"], id="dot in key"),
        pytest.param({"SERVICE_A B": "x"}, {}, ["label SERVICE_A B"], id="space in key"),
        pytest.param(
            {"SERVICE_TIER\n": "x", "SERVICE_OK": "y"},
            {"ok": "y"},
            ["label SERVICE_TIER\n"],
            id="trailing newline in key",
        ),
        pytest.param(
            {"SERVICE_" + "K" * 129: "x"},
            {},
            ["label SERVICE_" + "K" * 129],
            id="key over 128 characters",
        ),
        pytest.param({"SERVICE_" + "K" * 128: "x"}, {"k" * 128: "x"}, [], id="key of 128"),
        pytest.param({"SERVICE_BIG": "v" * 513}, {}, ["label SERVICE_BIG"], id="value over 512"),
        pytest.param({"SERVICE_BIG": "v" * 512}, {"big": "v" * 512}, [], id="value of 512"),
        pytest.param(
            {"SERVICE_CONSUL-VERSION": "x"},
            {},
            ["label SERVICE_CONSUL-VERSION"],
            id="consul- prefix reserved by Consul",
        ),
        pytest.param(
            {"SERVICE_REGISTRATOR-NODE": "x", "SERVICE_EXTERNAL-SOURCE": "y"},
            {},
            ["label SERVICE_EXTERNAL-SOURCE", "label SERVICE_REGISTRATOR-NODE"],
            id="ownership keys reserved",
        ),
        pytest.param(
            SIXTY_ONE,
            {f"k{index:02d}": "v" for index in range(60)},
            ["label SERVICE_K60"],
            id="61st key over Consul's 64 minus our 4",
        ),
    ],
)
def test_service_meta(
    labels: dict[str, str], meta: dict[str, str], problem_keys: list[str]
) -> None:
    container = make_container(labels=labels)
    got, problems = service_meta(service_metadata(container, 80), container)
    assert got == meta
    assert [p.key for p in problems] == problem_keys
    assert all(p.container == "web-1" and p.reason.startswith("skipped: ") for p in problems)


def test_service_meta_reports_env_origin() -> None:
    container = make_container(env={"SERVICE_80_BAD.KEY": "x"})
    _, problems = service_meta(service_metadata(container, 80), container)
    assert [p.key for p in problems] == ["env SERVICE_80_BAD.KEY"]


@pytest.mark.parametrize(
    ("labels", "env", "expected"),
    [
        pytest.param({"SERVICE_80_NAME": "a", "SERVICE_NAME": "b"}, {}, [], id="valid keys"),
        pytest.param({"SERVICE_80": "web"}, {}, ["label SERVICE_80"], id="label without key"),
        pytest.param({}, {"SERVICE_443": "web"}, ["env SERVICE_443"], id="env without key"),
        pytest.param(
            {"SERVICE_80": "a"},
            {"SERVICE_80": "b"},
            ["env SERVICE_80", "label SERVICE_80"],
            id="both",
        ),
        pytest.param({"service_80": "a"}, {}, [], id="not our prefix"),
    ],
)
def test_problems_with_keys(
    labels: dict[str, str], env: dict[str, str], expected: list[str]
) -> None:
    problems = problems_with_keys(make_container(labels=labels, env=env))
    assert [p.key for p in problems] == expected
    assert all(isinstance(p, Problem) and p.container == "web-1" for p in problems)
    assert all("SERVICE_<port>_<KEY>" in p.reason for p in problems)
