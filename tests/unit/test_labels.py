"""SERVICE_* metadata as gliderlabs/registrator users write it: precedence, tags, meta."""

from __future__ import annotations

import pytest

from registrator.labels import (
    address_override,
    flag,
    is_true_ignore,
    parse_tags,
    problems_with_keys,
    service_meta,
    service_metadata,
    weights,
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


# Every scope sets NAME; each case removes the more specific ones to show the next one wins.
ALL_SCOPES_LABELS = {
    "SERVICE_53_udp_NAME": "port+proto label",
    "SERVICE_53_NAME": "port label",
    "SERVICE_50-60_udp_NAME": "range+proto label",
    "SERVICE_50-60_NAME": "range label",
    "SERVICE_NAME": "wide label",
}
ALL_SCOPES_ENV = {key: value.replace("label", "env") for key, value in ALL_SCOPES_LABELS.items()}


def _without(mapping: dict[str, str], *keys: str) -> dict[str, str]:
    return {key: value for key, value in mapping.items() if key not in keys}


@pytest.mark.parametrize(
    ("labels", "env", "port", "protocol", "value"),
    [
        pytest.param(
            ALL_SCOPES_LABELS, ALL_SCOPES_ENV, 53, "udp", "port+proto label", id="port+proto wins"
        ),
        pytest.param(
            {}, ALL_SCOPES_ENV, 53, "udp", "port+proto env", id="port+proto env > port label"
        ),
        pytest.param(
            ALL_SCOPES_LABELS, ALL_SCOPES_ENV, 53, "tcp", "port label", id="other protocol: port"
        ),
        pytest.param(
            _without(ALL_SCOPES_LABELS, "SERVICE_53_NAME"),
            _without(ALL_SCOPES_ENV, "SERVICE_53_NAME"),
            53,
            "tcp",
            "range label",
            id="no port key, other protocol: range",
        ),
        pytest.param(
            _without(ALL_SCOPES_LABELS, "SERVICE_53_udp_NAME", "SERVICE_53_NAME"),
            _without(ALL_SCOPES_ENV, "SERVICE_53_udp_NAME", "SERVICE_53_NAME"),
            53,
            "udp",
            "range+proto label",
            id="no port keys: range+proto",
        ),
        pytest.param(
            {"SERVICE_NAME": "wide label"},
            {"SERVICE_50-60_NAME": "range env"},
            53,
            "tcp",
            "range env",
            id="range env > container-wide label",
        ),
        pytest.param(
            ALL_SCOPES_LABELS, ALL_SCOPES_ENV, 61, "udp", "wide label", id="outside the range"
        ),
        pytest.param(
            {"SERVICE_53-53_NAME": "one-port range"}, {}, 53, "tcp", "one-port range", id="N-N"
        ),
        pytest.param(
            {"SERVICE_1-65535_NAME": "wide range", "SERVICE_50-60_NAME": "narrow range"},
            {},
            53,
            "tcp",
            "narrow range",
            id="narrower range wins",
        ),
        pytest.param(
            {"SERVICE_1-65535_NAME": "wide range label"},
            {"SERVICE_50-60_NAME": "narrow range env"},
            53,
            "tcp",
            "narrow range env",
            id="narrower env range beats wider label range",
        ),
        pytest.param(
            {"SERVICE_50-60_NAME": "label"},
            {"SERVICE_50-60_NAME": "env"},
            53,
            "tcp",
            "label",
            id="same range: label > env",
        ),
        pytest.param(
            {"SERVICE_40-60_NAME": "low", "SERVICE_50-70_NAME": "high"},
            {},
            53,
            "tcp",
            "low",
            id="equal width: the lower start, whatever the order",
        ),
        pytest.param(
            {"SERVICE_53_UDP_NAME": "upper"}, {}, 53, "udp", "upper", id="protocol in any case"
        ),
        pytest.param(
            {"SERVICE_60-50_NAME": "reversed", "SERVICE_NAME": "wide"},
            {},
            55,
            "tcp",
            "wide",
            id="reversed range applies nowhere",
        ),
        pytest.param(
            ALL_SCOPES_LABELS, ALL_SCOPES_ENV, None, "tcp", "wide label", id="container-wide view"
        ),
    ],
)
def test_service_metadata_scopes(
    labels: dict[str, str], env: dict[str, str], port: int | None, protocol: str, value: str
) -> None:
    container = make_container(labels=labels, env=env)
    assert service_metadata(container, port, protocol).get("NAME") == value


@pytest.mark.parametrize(
    ("labels", "port_scoped"),
    [
        pytest.param({"SERVICE_53_udp_ID": "a"}, {"ID"}, id="port+proto"),
        pytest.param({"SERVICE_53_ID": "a"}, {"ID"}, id="port"),
        pytest.param({"SERVICE_50-60_ID": "a"}, set(), id="range: shared by several ports"),
        pytest.param({"SERVICE_50-60_udp_ID": "a"}, set(), id="range+proto"),
        pytest.param({"SERVICE_ID": "a"}, set(), id="container-wide"),
    ],
)
def test_only_exact_port_keys_are_port_scoped(
    labels: dict[str, str], port_scoped: set[str]
) -> None:
    metadata = service_metadata(make_container(labels=labels), 53, "udp")
    assert metadata.get("ID") == "a"
    assert metadata.port_scoped == port_scoped


def test_service_metadata_scoped_meta_key() -> None:
    container = make_container(labels={"SERVICE_53_udp_VERSION": "2", "SERVICE_VERSION": "1"})
    meta, problems = service_meta(service_metadata(container, 53, "udp"), container)
    assert (meta, problems) == ({"version": "2"}, [])


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
        pytest.param("off", False, id="off, as for options"),
        pytest.param("OFF", False, id="OFF"),
        pytest.param("n", False, id="n"),
        pytest.param("on", True, id="on"),
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
        pytest.param({"SERVICE_53_udp": "x"}, {}, ["label SERVICE_53_udp"], id="protocol, no key"),
        pytest.param({"SERVICE_53_udp_": "x"}, {}, ["label SERVICE_53_udp_"], id="empty key"),
        pytest.param({"SERVICE_10-20": "x"}, {}, ["label SERVICE_10-20"], id="range, no key"),
    ],
)
def test_problems_with_keys(
    labels: dict[str, str], env: dict[str, str], expected: list[str]
) -> None:
    problems = problems_with_keys(make_container(labels=labels, env=env))
    assert [p.key for p in problems] == expected
    assert all(isinstance(p, Problem) and p.container == "web-1" for p in problems)
    assert all("SERVICE_<port>_<KEY>" in p.reason for p in problems)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        pytest.param("SERVICE_20-10_IGNORE", "20-10 is not a port range", id="reversed range"),
        pytest.param("SERVICE_0-10_IGNORE", "0-10 is not a port range", id="range from 0"),
        pytest.param("SERVICE_1-70000_IGNORE", "1-70000 is not a port range", id="past 65535"),
        pytest.param("SERVICE_10-x_IGNORE", "10-x is not a port range", id="not a number"),
        pytest.param("SERVICE_10-_IGNORE", "10- is not a port range", id="half a range"),
        pytest.param("SERVICE_70000_NAME", "port 70000 is not 1-65535", id="port past 65535"),
        pytest.param("SERVICE_0_NAME", "port 0 is not 1-65535", id="port 0"),
        pytest.param("SERVICE_80_PORT", "applies to the whole container", id="port-scoped PORT"),
        pytest.param(
            "SERVICE_1-9_NETWORK", "applies to the whole container", id="range-scoped NETWORK"
        ),
    ],
)
def test_problems_with_scoped_keys(key: str, reason: str) -> None:
    """One warning naming the key; the key then applies nowhere (not even as Meta)."""
    container = make_container(labels={key: "x"})
    (problem,) = problems_with_keys(container)
    assert problem.key == f"label {key}"
    assert reason in problem.reason
    for port in (None, 1, 10, 15, 80, 65535):
        assert service_metadata(container, port).values == {}


@pytest.mark.parametrize(
    "key",
    ["SERVICE_53_udp_NAME", "SERVICE_1-65535_IGNORE", "SERVICE_80_IP", "SERVICE_0080_NAME"],
)
def test_valid_scoped_keys_are_no_problem(key: str) -> None:
    assert problems_with_keys(make_container(labels={key: "x"})) == []


@pytest.mark.parametrize(
    ("value", "expected", "problem"),
    [
        pytest.param("", False, False, id="absent"),
        pytest.param("true", True, False, id="true"),
        pytest.param("ON", True, False, id="ON"),
        pytest.param(" yes ", True, False, id="yes padded"),
        pytest.param("1", True, False, id="1"),
        pytest.param("off", False, False, id="off"),
        pytest.param("No", False, False, id="No"),
        pytest.param("0", False, False, id="0"),
        pytest.param("sure", False, True, id="not a boolean word: warned, ignored"),
    ],
)
def test_flag(value: str, expected: bool, problem: bool) -> None:
    container = make_container(labels={"SERVICE_ENABLE_TAG_OVERRIDE": value} if value else {})
    got, problems = flag(service_metadata(container, 80), "ENABLE_TAG_OVERRIDE", container)
    assert got is expected
    assert [p.key for p in problems] == (["label SERVICE_ENABLE_TAG_OVERRIDE"] if problem else [])


@pytest.mark.parametrize(
    ("labels", "expected", "problem_keys"),
    [
        pytest.param({}, None, [], id="absent: Consul's defaults"),
        pytest.param({"SERVICE_WEIGHT": "10"}, (10, 1), [], id="passing only"),
        pytest.param({"SERVICE_WEIGHT_WARNING": "3"}, (1, 3), [], id="warning only"),
        pytest.param(
            {"SERVICE_WEIGHT": "10", "SERVICE_WEIGHT_WARNING": "2"}, (10, 2), [], id="both"
        ),
        pytest.param({"SERVICE_80_WEIGHT": "7", "SERVICE_WEIGHT": "2"}, (7, 1), [], id="port"),
        pytest.param({"SERVICE_WEIGHT": "65535"}, (65535, 1), [], id="largest"),
        pytest.param({"SERVICE_WEIGHT": "0"}, None, ["label SERVICE_WEIGHT"], id="zero"),
        pytest.param({"SERVICE_WEIGHT": "-1"}, None, ["label SERVICE_WEIGHT"], id="negative"),
        pytest.param({"SERVICE_WEIGHT": "1.5"}, None, ["label SERVICE_WEIGHT"], id="fraction"),
        pytest.param({"SERVICE_WEIGHT": "65536"}, None, ["label SERVICE_WEIGHT"], id="too big"),
        pytest.param({"SERVICE_WEIGHT": "²"}, None, ["label SERVICE_WEIGHT"], id="unicode digit"),
        pytest.param(
            {"SERVICE_WEIGHT": "x", "SERVICE_WEIGHT_WARNING": "4"},
            (1, 4),
            ["label SERVICE_WEIGHT"],
            id="bad half: the other still applies",
        ),
    ],
)
def test_weights(
    labels: dict[str, str], expected: tuple[int, int] | None, problem_keys: list[str]
) -> None:
    container = make_container(labels=labels)
    got, problems = weights(service_metadata(container, 80), container)
    assert got == expected
    assert [p.key for p in problems] == problem_keys
    assert all(p.container == "web-1" and "whole number" in p.reason for p in problems)


@pytest.mark.parametrize(
    ("labels", "opt_in", "address", "problem"),
    [
        pytest.param({}, "", "", "", id="absent"),
        pytest.param(
            {"SERVICE_IP": "10.1.2.3"}, "", "", "-useIpFromLabel SERVICE_IP", id="refused"
        ),
        pytest.param(
            {"SERVICE_IP": "10.1.2.3"},
            "com.example.ip",
            "",
            "-useIpFromLabel SERVICE_IP",
            id="refused: the operator named another label",
        ),
        pytest.param({"SERVICE_IP": "10.1.2.3"}, "SERVICE_IP", "10.1.2.3", "", id="allowed"),
        pytest.param({"SERVICE_IP": "10.1.2.3/24"}, "SERVICE_IP", "10.1.2.3", "", id="CIDR"),
        pytest.param({"SERVICE_IP": "fd00::7"}, "SERVICE_IP", "fd00::7", "", id="IPv6"),
        pytest.param(
            {"SERVICE_IP": "10.1.2.3", "SERVICE_80_IP": "10.9.9.9"},
            "SERVICE_IP",
            "10.9.9.9",
            "",
            id="port-scoped wins",
        ),
        pytest.param(
            {"SERVICE_IP": "web.local"}, "SERVICE_IP", "", "not an IP address", id="not an IP"
        ),
    ],
)
def test_address_override(labels: dict[str, str], opt_in: str, address: str, problem: str) -> None:
    container = make_container(labels=labels)
    got, problems = address_override(service_metadata(container, 80), container, opt_in)
    assert got == address
    assert [p.reason for p in problems if problem in p.reason] == [p.reason for p in problems]
    assert len(problems) == (1 if problem else 0)
