"""Ids that Consul's id-in-path endpoints can and cannot address (registrator.ids), and how the
planner keeps every port of a container registered under an id of its own.

The cases are the ones measured against Consul 1.14 (the table in registrator/ids.py);
tests/integration/test_ids.py sends the addressable ones through the real agent.
"""

from __future__ import annotations

import pytest

from registrator.ids import MAX_ENCODED_ID, path_segment, unaddressable
from registrator.model import ContainerPort, PortBinding
from registrator.planner import desired_services, distinct_ids
from tests.unit.builders import NODE, make_container, make_context

# Register answers 200 for each; the paths answer 200 once the id is encoded as one segment.
ADDRESSABLE = [
    pytest.param("plain", id="plain"),
    pytest.param("a/b", id="slash"),
    pytest.param("trail/", id="trailing slash"),
    pytest.param("a?b", id="question mark"),
    pytest.param("a#b", id="hash"),
    pytest.param("a%b", id="percent"),
    pytest.param("a%2Fb", id="encoded-looking slash"),
    pytest.param("a b", id="space"),
    pytest.param(" lead", id="leading space"),
    pytest.param("a+b", id="plus"),
    pytest.param("a;b", id="semicolon"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a&b=c", id="query-looking"),
    pytest.param("ünï", id="latin accents"),
    pytest.param("日本", id="CJK"),
    pytest.param("\U0001f600", id="emoji"),
    pytest.param("a:b", id="colon"),
    pytest.param("x" * 1000, id="1000 characters"),
    pytest.param("x" * MAX_ENCODED_ID, id="at the size limit"),
]
# Register answers 200 for each; the paths answer 301 (cleaned), 400 (not printable) or 431.
UNADDRESSABLE = [
    pytest.param("", "empty", id="empty"),
    pytest.param("/lead", "path segment", id="leading slash"),
    pytest.param("a//b", "path segment", id="double slash"),
    pytest.param("a//", "path segment", id="double trailing slash"),
    pytest.param(".", "path segment", id="dot"),
    pytest.param("..", "path segment", id="dot dot"),
    pytest.param("a/./b", "path segment", id="inner dot"),
    pytest.param("a/../b", "path segment", id="inner dot dot"),
    pytest.param("a/..", "path segment", id="trailing dot dot"),
    pytest.param("./a", "path segment", id="leading dot"),
    pytest.param("a\tb", "U+0009", id="tab"),
    pytest.param("a\nb", "U+000A", id="newline"),
    pytest.param("a\rb", "U+000D", id="carriage return"),
    pytest.param("a\x00b", "U+0000", id="NUL"),
    pytest.param("a\x7fb", "U+007F", id="DEL"),
    pytest.param("\u00a0", "U+00A0", id="no-break space"),
    pytest.param("\u200b", "U+200B", id="zero-width space"),
    pytest.param("a\u3000b", "U+3000", id="ideographic space"),
    pytest.param("\ue000", "U+E000", id="private use"),
    pytest.param("x" * (MAX_ENCODED_ID + 1), "KiB", id="over the size limit"),
    pytest.param("é" * (MAX_ENCODED_ID // 6 + 1), "KiB", id="over the limit once encoded"),
]


@pytest.mark.parametrize("service_id", ADDRESSABLE)
def test_addressable_ids(service_id: str) -> None:
    assert unaddressable(service_id) == ""


@pytest.mark.parametrize(("service_id", "reason"), UNADDRESSABLE)
def test_unaddressable_ids_say_why(service_id: str, reason: str) -> None:
    assert reason in unaddressable(service_id)


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("node1:web:80", "node1%3Aweb%3A80"),
        ("a/b", "a%2Fb"),
        ("a?b#c", "a%3Fb%23c"),
        ("a%2Fb", "a%252Fb"),
        ("a b", "a%20b"),
        ("ü", "%C3%BC"),
        ("trail/", "trail%2F"),
    ],
)
def test_path_segment_encodes_everything_but_unreserved(value: str, segment: str) -> None:
    assert path_segment(value) == segment


@pytest.mark.parametrize(
    ("labels", "key"),
    [
        ({"SERVICE_ID": "a/../b"}, "label SERVICE_ID"),
        ({"SERVICE_80_ID": "web\n"}, None),  # trailing whitespace is trimmed: addressable
        ({"SERVICE_80_ID": "we\tb"}, "label SERVICE_80_ID"),
        ({"SERVICE_ID": "/web"}, "label SERVICE_ID"),
    ],
)
def test_planner_refuses_ids_consul_could_never_deregister(
    labels: dict[str, str], key: str | None
) -> None:
    result = desired_services(make_container(labels=labels), make_context())
    if key is None:
        assert [s.id for s in result.services] == ["web"]
        assert result.problems == ()
        return
    assert result.services == ()
    (problem,) = result.problems
    assert (problem.container, problem.key) == ("web-1", key)
    assert problem.reason.startswith("service id ")
    assert problem.reason.endswith("; not registered")


def test_a_node_name_that_makes_ids_unaddressable_is_refused_per_service() -> None:
    result = desired_services(make_container(), make_context(node="edge//1"))
    assert result.services == ()
    (problem,) = result.problems
    assert "'edge//1:web-1:80'" in problem.reason


def _ports(*specs: tuple[int, str]) -> tuple[ContainerPort, ...]:
    return tuple(
        ContainerPort(port, protocol, (PortBinding("0.0.0.0", 10000 + port),))
        for port, protocol in specs
    )


@pytest.mark.parametrize(
    ("ports", "labels", "ids", "warned"),
    [
        pytest.param(
            [(53, "tcp"), (53, "udp")], {"SERVICE_53_ID": "dns"}, ["dns:53", "dns:53:udp"], True,
            id="port-scoped id on both protocols of one port",
        ),
        pytest.param(
            [(80, "tcp"), (443, "tcp")], {"SERVICE_80_ID": "web", "SERVICE_443_ID": "web"},
            ["web:80", "web:443"], True,
            id="two port-scoped ids with one value",
        ),
        pytest.param(
            [(80, "tcp"), (443, "tcp")], {"SERVICE_ID": "web"}, ["web:80", "web:443"], False,
            id="container-wide id on several ports (suffixed as before, no clash)",
        ),
        pytest.param(
            [(53, "tcp"), (53, "udp")], {"SERVICE_ID": "dns"}, ["dns:53", "dns:53:udp"], False,
            id="container-wide id on tcp and udp of one port",
        ),
        pytest.param(
            [(9, "tcp"), (9, "sctp")], {}, [f"{NODE}:web-1:9", f"{NODE}:web-1:9:sctp"], False,
            id="generated ids name a protocol other than tcp",
        ),
        pytest.param(
            [(80, "tcp"), (81, "tcp")], {"SERVICE_81_ID": f"{NODE}:web-1:80"},
            [f"{NODE}:web-1:80:80", f"{NODE}:web-1:80:81"], True,
            id="an explicit id equal to a generated one",
        ),
        pytest.param(
            [(80, "tcp"), (81, "tcp"), (82, "tcp")],
            {"SERVICE_80_ID": "x", "SERVICE_81_ID": "x", "SERVICE_82_ID": "x:80"},
            ["x:80:80", "x:81", "x:80:82"], True,
            id="a suffixed id that meets another explicit one is suffixed again",
        ),
    ],
)  # fmt: skip
def test_every_port_keeps_a_registration_with_a_distinct_id(
    ports: list[tuple[int, str]], labels: dict[str, str], ids: list[str], warned: bool
) -> None:
    container = make_container(ports=_ports(*ports), labels=labels)
    result = desired_services(container, make_context())
    assert [s.id for s in result.services] == ids
    # Deterministic: the same container plans the same ids whatever the order of its ports.
    reordered = make_container(ports=tuple(reversed(_ports(*ports))), labels=labels)
    assert sorted(s.id for s in desired_services(reordered, make_context()).services) == sorted(ids)
    clashes = [p for p in result.problems if "wanted by several ports" in p.reason]
    assert bool(clashes) is warned
    assert len(result.problems) == len(clashes)


@pytest.mark.parametrize(
    ("wanted", "ids"),
    [
        ([], []),
        ([("a", "1")], ["a"]),
        ([("a", "1"), ("b", "2")], ["a", "b"]),
        ([("a", "1"), ("a", "2")], ["a:1", "a:2"]),
        ([("a", "1"), ("a", "2"), ("a", "3")], ["a:1", "a:2", "a:3"]),
        ([("a", "1"), ("a", "2"), ("a:1", "3")], ["a:1:1", "a:2", "a:1:3"]),
    ],
)
def test_distinct_ids(wanted: list[tuple[str, str]], ids: list[str]) -> None:
    assert distinct_ids(wanted) == ids
