"""desired_services over captured containers, then the plan against what Consul holds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from registrator.model import (
    META_CONTAINER,
    META_NODE,
    META_SOURCE,
    Container,
    ContainerPort,
    HeldService,
    PortBinding,
)
from registrator.payload import held_from_service
from registrator.planner import (
    ContainerPlan,
    PlanContext,
    default_service_name,
    desired_services,
    image_base_name,
    keeps_registrations,
    plan_changes,
)
from registrator.settings import DeregisterMode
from tests.unit.builders import (
    NODE,
    fixture_container,
    inspect_document,
    make_container,
    make_context,
    with_labels,
)

DEFAULT_ADDRESS = "10.0.0.9"  # make_context's default_address


def bridge_ip(name: str) -> str:
    # The default bridge hands out addresses in start order, so read what the capture got.
    address: str = inspect_document(name)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    return address


def host_port(name: str, key: str) -> int:
    return int(inspect_document(name)["NetworkSettings"]["Ports"][key][0]["HostPort"])


def plan(
    name: str, labels: dict[str, str] | None = None, **context: Any
) -> tuple[Container, ContainerPlan]:
    container = with_labels(fixture_container(name), labels or {})
    return container, desired_services(container, make_context(**context))


def endpoints(result: ContainerPlan) -> list[tuple[str, str, str, int]]:
    return [(s.id, s.name, s.address, s.port) for s in result.services]


def sid(name: str, port: str) -> str:
    return f"{NODE}:fixture-capture-{name}:{port}"


# --- addresses and ports ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "context", "expected"),
    [
        pytest.param(
            "bridge-published",
            {},
            [(sid("bridge-published", "80"), "web", DEFAULT_ADDRESS, 8080)],
            id="published on 0.0.0.0: node address, host port",
        ),
        pytest.param(
            "bridge-published",
            {"ip": "1.2.3.4"},
            [(sid("bridge-published", "80"), "web", "1.2.3.4", 8080)],
            id="-ip",
        ),
        pytest.param(
            "bridge-published-specific-ip",
            {},
            [(sid("bridge-published-specific-ip", "80"), "busybox", "127.0.0.1", 8081)],
            id="published on loopback (-p 127.0.0.1:8081:80): that address, with a warning",
        ),
        pytest.param(
            "bridge-published-specific-ip",
            {"ip": "1.2.3.4"},
            [(sid("bridge-published-specific-ip", "80"), "busybox", "127.0.0.1", 8081)],
            id="published on loopback: -ip would name a port nothing listens on",
        ),
        pytest.param("exposed-only", {}, [], id="exposed but not published: nothing"),
        pytest.param("no-ports", {}, [], id="no ports: nothing"),
        pytest.param(
            "host-network",
            {},
            [(sid("host-network", "8500"), "busybox", DEFAULT_ADDRESS, 8500)],
            id="host network: exposed port on the node address",
        ),
        pytest.param(
            "host-network",
            {"ip": "1.2.3.4", "internal": True},
            [(sid("host-network", "8500"), "busybox", "1.2.3.4", 8500)],
            id="host network with -ip, even -internal",
        ),
        pytest.param("paused", {"internal": True}, [], id="paused"),
        pytest.param("exited-nonzero", {"internal": True}, [], id="exited"),
        pytest.param("killed", {"internal": True}, [], id="killed"),
    ],
)
def test_published_addresses(
    name: str, context: dict[str, Any], expected: list[tuple[str, str, str, int]]
) -> None:
    _, result = plan(name, **context)
    assert endpoints(result) == expected
    loopback = [p for p in result.problems if "loopback" in p.reason]
    assert [p.key for p in loopback] == (
        ["published port 127.0.0.1:8081->80/tcp"] if name.endswith("specific-ip") else []
    )
    assert all("reachable from this host only" in p.reason for p in loopback)
    assert len(result.problems) == len(loopback)


@pytest.mark.parametrize(
    ("bindings", "context", "expected", "warned"),
    [
        pytest.param(
            [("10.1.2.3", 8080)], {}, ("10.1.2.3", 8080), False, id="specific LAN IP: that IP"
        ),
        pytest.param(
            [("10.1.2.3", 8080)], {"ip": "1.2.3.4"}, ("1.2.3.4", 8080), False,
            id="specific LAN IP and -ip: -ip, as gliderlabs",
        ),
        pytest.param(
            [("127.0.0.1", 8080)], {}, ("127.0.0.1", 8080), True, id="127.0.0.1: warned",
        ),
        pytest.param(
            [("127.0.0.2", 8080)], {}, ("127.0.0.2", 8080), True, id="any 127/8: warned",
        ),
        pytest.param([("::1", 8080)], {}, ("::1", 8080), True, id="::1: warned"),
        pytest.param(
            [("127.0.0.1", 8080), ("0.0.0.0", 9090)], {}, ("10.0.0.9", 9090), False,
            id="loopback and all interfaces: the one others can reach",
        ),
        pytest.param(
            [("::1", 8080), ("::", 9090)], {"ip": "fd00::9"}, ("fd00::9", 9090), False,
            id="IPv6 loopback and all interfaces: the one others can reach",
        ),
        pytest.param(
            [("127.0.0.1", 8080)], {"ip": "127.0.0.1"}, ("127.0.0.1", 8080), True,
            id="loopback asked for with -ip too: still warned",
        ),
    ],
)  # fmt: skip
def test_loopback_bindings_are_registered_where_they_listen_with_a_warning(
    bindings: list[tuple[str, int]],
    context: dict[str, Any],
    expected: tuple[str, int],
    warned: bool,
) -> None:
    port = ContainerPort(80, "tcp", tuple(PortBinding(ip, p) for ip, p in bindings))
    result = desired_services(make_container(ports=(port,)), make_context(**context))
    assert [(s.address, s.port) for s in result.services] == [expected]
    assert [p.key for p in result.problems] == (
        [f"published port {expected[0]}:{expected[1]}->80/tcp"] if warned else []
    )


@pytest.mark.parametrize(
    ("context", "kind"),
    [
        pytest.param({"default_address": ""}, make_container, id="published on all interfaces"),
        pytest.param(
            {"default_address": ""},
            lambda: make_container(network_mode="host", ports=(ContainerPort(8500, "tcp"),)),
            id="host network",
        ),
    ],
)
def test_no_default_address_waits_with_a_problem_naming_ip(
    context: dict[str, Any], kind: Any
) -> None:
    result = desired_services(kind(), make_context(**context))
    assert result.services == ()
    assert [p.key for p in result.problems] == ["-ip"]
    assert "not registered until -ip" in result.problems[0].reason


@pytest.mark.parametrize(
    ("name", "expected_ports"),
    [
        pytest.param("bridge-published", [("80", 80)], id="container port, not host port"),
        pytest.param("exposed-only", [("80", 80)], id="exposed-only counts"),
        pytest.param("udp", [("53:udp", 53)], id="udp"),
        pytest.param(
            "multi-port", [("80", 80), ("443", 443), ("9000", 9000)], id="published and exposed"
        ),
    ],
)
def test_internal_registers_container_address(
    name: str, expected_ports: list[tuple[str, int]]
) -> None:
    _, result = plan(name, internal=True)
    assert [(s.id, s.address, s.port) for s in result.services] == [
        (sid(name, suffix), bridge_ip(name), port) for suffix, port in expected_ports
    ]


def test_multi_port_names_and_ids() -> None:
    _, result = plan("multi-port")
    # 9000 is only exposed; without -internal nothing reaches it from outside.
    assert endpoints(result) == [
        (sid("multi-port", "80"), "busybox-80", DEFAULT_ADDRESS, host_port("multi-port", "80/tcp")),
        (
            sid("multi-port", "443"),
            "busybox-443",
            DEFAULT_ADDRESS,
            host_port("multi-port", "443/tcp"),
        ),
    ]


def test_udp_id_suffix_and_tag() -> None:
    _, result = plan("udp", {"SERVICE_TAGS": "dns"})
    (service,) = result.services
    assert (service.id, service.port, service.tags) == (sid("udp", "53:udp"), 5353, ("dns", "udp"))


def test_service_fields_from_labels_and_env() -> None:
    container, result = plan("bridge-published")
    (service,) = result.services
    assert service.tags == ("prod", "blue")
    assert dict(service.meta) == {
        "version": "1.2",
        META_SOURCE: "registrator",
        META_NODE: NODE,
        META_CONTAINER: container.id,
    }
    assert (service.container_id, service.container_name) == (container.id, container.name)
    assert (service.checks, service.connect, service.script) == ((), None, "")


def test_tags_template_is_appended_per_container() -> None:
    _, result = plan("bridge-published", tags="{{.Node}},prod,{{.Labels.SERVICE_NAME}}")
    (service,) = result.services
    assert service.tags == ("prod", "blue", NODE, "web")


# --- networks ---------------------------------------------------------------------------------

TWO_NETWORKS = ("fixture-capture-net-a", "198.18.201.2"), ("fixture-capture-net-b", "198.18.202.2")


@pytest.mark.parametrize(
    ("labels", "network", "address", "problem_keys"),
    [
        pytest.param(
            {}, "", "198.18.201.2", ["SERVICE_NETWORK"], id="several: first by name, warned"
        ),
        pytest.param({}, "fixture-capture-net-b", "198.18.202.2", [], id="-network"),
        pytest.param(
            {"SERVICE_NETWORK": "fixture-capture-net-b"},
            "fixture-capture-net-a",
            "198.18.202.2",
            [],
            id="SERVICE_NETWORK beats -network",
        ),
        pytest.param(
            {},
            "nope",
            "198.18.201.2",
            ["REGISTRATOR_NETWORK", "SERVICE_NETWORK"],
            id="unknown -network: warned, then first by name",
        ),
        pytest.param(
            {"SERVICE_NETWORK": "nope"},
            "",
            "198.18.201.2",
            ["label SERVICE_NETWORK", "SERVICE_NETWORK"],
            id="unknown SERVICE_NETWORK: the label is named",
        ),
    ],
)
def test_network_choice(
    labels: dict[str, str], network: str, address: str, problem_keys: list[str]
) -> None:
    # The capture has no ports, so SERVICE_PORT gives it one to register.
    container, result = plan(
        "two-networks", {"SERVICE_PORT": "80", **labels}, internal=True, network=network
    )
    assert [(s.address, s.port) for s in result.services] == [(address, 80)]
    assert [p.key for p in result.problems] == problem_keys
    assert all(p.container == container.name for p in result.problems)
    assert all("fixture-capture-net-a" in p.reason for p in result.problems)


def test_multi_network_choice_is_deterministic() -> None:
    container = fixture_container("two-networks", labels={"SERVICE_PORT": "80"})
    flipped = replace(container, networks=tuple(reversed(container.networks)))
    first = desired_services(container, make_context(internal=True))
    assert desired_services(flipped, make_context(internal=True)) == first


def test_ingress_network_is_never_chosen() -> None:
    container = fixture_container("two-networks", labels={"SERVICE_PORT": "80"})
    ingress = replace(container.networks[0], name="ingress", ip="10.255.0.5")
    result = desired_services(
        replace(container, networks=(ingress, container.networks[1])), make_context(internal=True)
    )
    assert [s.address for s in result.services] == ["198.18.202.2"]
    assert result.problems == ()


def test_internal_without_any_address_is_a_problem() -> None:
    container = fixture_container("exposed-only", networks=())
    result = desired_services(container, make_context(internal=True))
    assert result.services == ()
    assert [p.key for p in result.problems] == ["-internal"]


def test_two_networks_without_ports_does_not_warn() -> None:
    # Nothing would be registered, so which network is irrelevant.
    _, result = plan("two-networks", internal=True)
    assert result == ContainerPlan((), ())


# --- SERVICE_PORT, SERVICE_ID, names, ignore, explicit ------------------------------------------


@pytest.mark.parametrize(
    ("name", "context", "address"),
    [
        pytest.param("no-ports", {}, "bridge", id="bridge: container address"),
        pytest.param("no-ports", {"internal": True}, "bridge", id="-internal"),
        pytest.param("exposed-only", {}, "bridge", id="unpublished ports count as none"),
        pytest.param("two-networks", {"internal": True}, "198.18.201.2", id="two networks"),
    ],
)
def test_service_port_registers_a_port_less_container(
    name: str, context: dict[str, Any], address: str
) -> None:
    _, result = plan(name, {"SERVICE_PORT": "7000"}, **context)
    expected = bridge_ip(name) if address == "bridge" else address
    assert endpoints(result) == [(sid(name, "7000"), "busybox", expected, 7000)]


def test_service_port_on_host_network_uses_node_address() -> None:
    container = fixture_container("host-network", ports=(), labels={"SERVICE_PORT": "7000"})
    result = desired_services(container, make_context())
    assert endpoints(result) == [(sid("host-network", "7000"), "busybox", DEFAULT_ADDRESS, 7000)]


@pytest.mark.parametrize(
    ("labels", "env", "key"),
    [
        pytest.param({"SERVICE_PORT": "http"}, {}, "label SERVICE_PORT", id="word"),
        pytest.param({"SERVICE_PORT": "0"}, {}, "label SERVICE_PORT", id="zero"),
        pytest.param({}, {"SERVICE_PORT": "70000"}, "env SERVICE_PORT", id="too big, from env"),
        pytest.param({"SERVICE_PORT": "-80"}, {}, "label SERVICE_PORT", id="negative"),
    ],
)
def test_bad_service_port(labels: dict[str, str], env: dict[str, str], key: str) -> None:
    container = fixture_container("no-ports", labels=labels, env=env)
    result = desired_services(container, make_context())
    assert result.services == ()
    (problem,) = result.problems
    assert (problem.container, problem.key) == ("fixture-capture-no-ports", key)
    assert "not a port number" in problem.reason


@pytest.mark.parametrize(
    ("name", "labels", "ids"),
    [
        pytest.param(
            "bridge-published", {"SERVICE_ID": "web-a"}, ["web-a"], id="generic, one port"
        ),
        pytest.param(
            "multi-port",
            {"SERVICE_ID": "web-a"},
            ["web-a:80", "web-a:443"],
            id="generic on several ports gets the port suffix",
        ),
        pytest.param(
            "multi-port",
            {"SERVICE_80_ID": "front"},
            ["front", sid("multi-port", "443")],
            id="port-scoped only for its port",
        ),
        pytest.param(
            "multi-port",
            {"SERVICE_80_ID": "front", "SERVICE_ID": "web-a"},
            ["front", "web-a:443"],
            id="port-scoped beats generic",
        ),
        pytest.param("udp", {"SERVICE_ID": "dns"}, ["dns"], id="udp, generic, one port"),
    ],
)
def test_service_id(name: str, labels: dict[str, str], ids: list[str]) -> None:
    _, result = plan(name, labels)
    assert [s.id for s in result.services] == ids
    assert result.problems == ()


def test_same_id_twice_keeps_both_ports_under_distinct_ids() -> None:
    container, result = plan("multi-port", {"SERVICE_80_ID": "x", "SERVICE_443_ID": "x"})
    assert [(s.id, s.port) for s in result.services] == [
        ("x:80", host_port("multi-port", "80/tcp")),
        ("x:443", host_port("multi-port", "443/tcp")),
    ]
    (problem,) = result.problems
    assert (problem.container, problem.key) == (
        container.name,
        "label SERVICE_80_ID, label SERVICE_443_ID",
    )
    assert "'x:80'" in problem.reason and "'x:443'" in problem.reason


@pytest.mark.parametrize(
    ("labels", "names"),
    [
        pytest.param({}, ["busybox-80", "busybox-443"], id="default name, suffixed"),
        pytest.param({"SERVICE_NAME": "web"}, ["web-80", "web-443"], id="generic, suffixed"),
        pytest.param(
            {"SERVICE_80_NAME": "front", "SERVICE_NAME": "web"},
            ["front", "web-443"],
            id="port-scoped name is used as is",
        ),
        pytest.param({"SERVICE_443_IGNORE": "true"}, ["busybox-80"], id="port-scoped ignore"),
        pytest.param({"SERVICE_443_IGNORE": "false"}, ["busybox-80", "busybox-443"], id="false"),
        pytest.param({"SERVICE_IGNORE": "1"}, [], id="generic ignore"),
    ],
)
def test_multi_port_names_and_ignore(labels: dict[str, str], names: list[str]) -> None:
    _, result = plan("multi-port", labels)
    assert [s.name for s in result.services] == names


@pytest.mark.parametrize(
    ("labels", "names"),
    [
        pytest.param({}, [], id="no name: nothing"),
        pytest.param({"SERVICE_NAME": "  "}, [], id="blank name: nothing"),
        pytest.param({"SERVICE_NAME": "web"}, ["web-80", "web-443"], id="generic name: all"),
        pytest.param({"SERVICE_443_NAME": "tls"}, ["tls"], id="port-scoped name: that port"),
    ],
)
def test_explicit(labels: dict[str, str], names: list[str]) -> None:
    _, result = plan("multi-port", labels, explicit=True)
    assert [s.name for s in result.services] == names


@pytest.mark.parametrize(
    ("name", "labels", "expected"),
    [
        pytest.param("swarm-task-labels", {}, "web", id="swarm: stack prefix stripped"),
        pytest.param(
            "swarm-task-labels",
            {"com.docker.stack.namespace": ""},
            "mystack_web",
            id="swarm without stack",
        ),
        pytest.param(
            "swarm-task-labels",
            {"com.docker.stack.namespace": "other"},
            "mystack_web",
            id="swarm, stack not a prefix",
        ),
        pytest.param(
            "swarm-task-labels",
            {"com.docker.compose.service": "api"},
            "web",
            id="swarm beats compose",
        ),
        pytest.param("compose-labels", {}, "api", id="compose service"),
        pytest.param("no-ports", {}, "busybox", id="image base name"),
        pytest.param("image-by-id", {}, "fixture-capture-image-by-id", id="image id: container"),
    ],
)
def test_default_service_name(name: str, labels: dict[str, str], expected: str) -> None:
    container = with_labels(fixture_container(name), labels)
    assert default_service_name(container) == expected
    # And it is what a port-less container registered through SERVICE_PORT is called.
    result = desired_services(with_labels(container, {"SERVICE_PORT": "80"}), make_context())
    assert [s.name for s in result.services] == [expected]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        pytest.param("app", "app", id="bare"),
        pytest.param("app:1.2", "app", id="tag"),
        pytest.param("org/app:1.2", "app", id="org"),
        pytest.param("registry:5000/org/app:1.2", "app", id="registry with port"),
        pytest.param("registry:5000/app", "app", id="registry port, no tag"),
        pytest.param("registry:5000/org/app:tag@sha256:" + "a" * 64, "app", id="tag and digest"),
        pytest.param("org/app@sha256:" + "a" * 64, "app", id="digest only"),
        pytest.param("sha256:" + "a" * 64, "", id="image id"),
        pytest.param("50aa5fd43fbd", "", id="short image id"),
        pytest.param("", "", id="empty"),
    ],
)
def test_image_base_name(image: str, expected: str) -> None:
    assert image_base_name(image) == expected
    assert "sha256" not in image_base_name(image)


# --- -useIpFromLabel ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address", "problem_keys"),
    [
        pytest.param("10.1.2.3", "10.1.2.3", [], id="address"),
        pytest.param("10.1.2.3/24", "10.1.2.3", [], id="CIDR keeps the address"),
        pytest.param("fd00::7", "fd00::7", [], id="IPv6"),
        pytest.param(" ", DEFAULT_ADDRESS, [], id="blank label ignored"),
        pytest.param("my-host", DEFAULT_ADDRESS, ["label com.example.ip"], id="not an IP"),
    ],
)
def test_use_ip_from_label(value: str, address: str, problem_keys: list[str]) -> None:
    _, result = plan(
        "bridge-published", {"com.example.ip": value}, use_ip_from_label="com.example.ip"
    )
    assert [s.address for s in result.services] == [address]
    assert [p.key for p in result.problems] == problem_keys


def test_use_ip_from_label_beats_internal() -> None:
    _, result = plan("bridge-published", {"ip": "10.1.2.3"}, use_ip_from_label="ip", internal=True)
    assert [(s.address, s.port) for s in result.services] == [("10.1.2.3", 80)]


# --- checks through the planner -----------------------------------------------------------------


def test_checks_target_the_registered_address() -> None:
    _, result = plan("bridge-published", {"SERVICE_CHECK_HTTP": "/health"}, ttl=30)
    (service,) = result.services
    assert [(c.check_id, c.fields.get("HTTP") or c.fields.get("TTL")) for c in service.checks] == [
        (f"service:{service.id}:http", f"http://{DEFAULT_ADDRESS}:8080/health"),
        (f"service:{service.id}:registrator-ttl", "30s"),
    ]


def test_docker_healthcheck_is_mirrored() -> None:
    _, result = plan("healthcheck", {"SERVICE_PORT": "80"})
    (service,) = result.services
    assert [c.check_id for c in service.checks] == [f"service:{service.id}:docker-health"]
    _, result = plan("healthcheck", {"SERVICE_PORT": "80"}, docker_health=False)
    assert result.services[0].checks == ()


# --- problems name their container and key ------------------------------------------------------

PROBLEM_SCENARIOS = [
    pytest.param("no-ports", {"SERVICE_PORT": "x"}, {}, id="bad SERVICE_PORT"),
    pytest.param("no-ports", {"SERVICE_80": "x", "SERVICE_PORT": "80"}, {}, id="key without name"),
    pytest.param("two-networks", {"SERVICE_PORT": "80"}, {"internal": True}, id="networks"),
    pytest.param(
        "two-networks", {"SERVICE_PORT": "80"}, {"internal": True, "network": "x"}, id="network"
    ),
    pytest.param("bridge-published", {"ip": "x"}, {"use_ip_from_label": "ip"}, id="label IP"),
    pytest.param("bridge-published", {}, {"default_address": ""}, id="no address"),
    pytest.param("host-network", {}, {"default_address": ""}, id="host network, no address"),
    pytest.param("bridge-published", {"SERVICE_A.B": "x"}, {}, id="meta key"),
    pytest.param("bridge-published", {"SERVICE_CHECK_TTL": "1"}, {}, id="check"),
    pytest.param("bridge-published", {"SERVICE_CONNECT": "maybe"}, {}, id="connect"),
    pytest.param("multi-port", {"SERVICE_ID": "a", "SERVICE_443_ID": "a:80"}, {}, id="dup id"),
    pytest.param("exposed-only", {}, {"internal": True, "network": "x"}, id="internal network"),
]


@pytest.mark.parametrize(("name", "labels", "context"), PROBLEM_SCENARIOS)
def test_every_problem_names_container_and_key(
    name: str, labels: dict[str, str], context: dict[str, Any]
) -> None:
    container, result = plan(name, labels, **context)
    assert result.problems, "scenario should produce a problem"
    for problem in result.problems:
        assert problem.container == container.name
        assert problem.key.strip()
        assert str(problem).startswith(f"container {container.name}: {problem.key}: ")


def test_no_address_skips_the_service() -> None:
    _, result = plan("bridge-published", default_address="")
    assert result.services == ()
    assert [p.key for p in result.problems] == ["-ip"]


def test_planning_is_repeatable() -> None:
    context = make_context(internal=True, ttl=10, tags="{{.Name}}")
    container = fixture_container("multi-port", labels={"SERVICE_CHECK_TCP": "true"})
    assert desired_services(container, context) == desired_services(container, context)


# --- keeping registrations of dead containers -------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "running", "exit_code", "keeps"),
    [
        pytest.param(DeregisterMode.ALWAYS, False, 1, False, id="always: exit 1"),
        pytest.param(DeregisterMode.ALWAYS, False, 0, False, id="always: exit 0"),
        pytest.param(DeregisterMode.ON_SUCCESS, False, 0, False, id="on-success: exit 0"),
        pytest.param(DeregisterMode.ON_SUCCESS, False, 1, True, id="on-success: exit 1"),
        pytest.param(DeregisterMode.ON_SUCCESS, False, 3, True, id="on-success: exit 3"),
        pytest.param(DeregisterMode.ON_SUCCESS, False, 128, True, id="on-success: exit 128"),
        pytest.param(DeregisterMode.ON_SUCCESS, False, 137, False, id="on-success: SIGKILL (137)"),
        pytest.param(DeregisterMode.ON_SUCCESS, False, 143, False, id="on-success: SIGTERM (143)"),
        pytest.param(DeregisterMode.ON_SUCCESS, True, 1, False, id="on-success: running"),
    ],
)
def test_keeps_registrations(
    mode: DeregisterMode, running: bool, exit_code: int, keeps: bool
) -> None:
    container = make_container(running=running, exit_code=exit_code)
    assert keeps_registrations(container, mode) is keeps


@pytest.mark.parametrize(
    ("name", "keeps"),
    [
        pytest.param("exited-nonzero", True, id="captured exit 3"),
        pytest.param("killed", False, id="captured docker kill"),
        pytest.param("bridge-published", False, id="captured running"),
    ],
)
def test_keeps_registrations_of_captured_containers(name: str, keeps: bool) -> None:
    assert keeps_registrations(fixture_container(name), DeregisterMode.ON_SUCCESS) is keeps


# --- plan_changes -------------------------------------------------------------------------------


def _desired() -> tuple[Any, ...]:
    _, result = plan("multi-port", internal=True)
    return result.services


def _held(*services: Any) -> dict[str, HeldService]:
    return {s.id: held_from_service(s) for s in services}


STALE = HeldService(id="node1:gone:80", container_id="dead", payload_hash="x")


@pytest.mark.parametrize(
    ("held", "keep", "register", "deregister"),
    [
        pytest.param({}, False, [0, 1, 2], [], id="new: register all"),
        pytest.param(_held(*_desired()), False, [], [], id="unchanged: empty plan"),
        pytest.param(
            _held(replace(_desired()[0], tags=("old",)), *_desired()[1:]),
            False,
            [0],
            [],
            id="changed tags: register that one",
        ),
        pytest.param(
            _held(*_desired())
            | {_desired()[1].id: replace(held_from_service(_desired()[1]), address="10.9.9.9")},
            False,
            [1],
            [],
            id="Consul holds another address: register",
        ),
        pytest.param(
            _held(*_desired()) | {STALE.id: STALE},
            False,
            [],
            [STALE.id],
            id="held extra: deregister",
        ),
        pytest.param({STALE.id: STALE}, True, [], [], id="keep: empty plan"),
    ],
)
def test_plan_changes(
    held: dict[str, HeldService], keep: bool, register: list[int], deregister: list[str]
) -> None:
    desired = _desired()
    result = plan_changes(desired, held, keep=keep)
    assert result.register == tuple(desired[index] for index in register)
    assert result.deregister == tuple(deregister)
    assert result.empty is (not register and not deregister)


def test_plan_changes_deregisters_in_sorted_order() -> None:
    held = {key: HeldService(id=key, container_id="c", payload_hash="h") for key in ("b", "c", "a")}
    assert plan_changes((), held).deregister == ("a", "b", "c")


def test_plan_context_defaults_are_gliderlabs_defaults() -> None:
    options = PlanContext(node="n").settings
    assert (options.internal, options.explicit, options.ttl) == (False, False, 0)
    assert options.docker_health and options.docker_health_initial == "critical"


# --- node heartbeat --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_ttl", "reap_after", "alias"),
    [
        pytest.param(0, 0, None, id="-node-ttl 0: no alias"),
        pytest.param(30, 0, {"AliasService": f"registrator:{NODE}"}, id="alias, no reaping"),
        pytest.param(
            30,
            300,
            {"AliasService": f"registrator:{NODE}", "DeregisterCriticalServiceAfter": "300s"},
            id="alias reaped by Consul",
        ),
    ],
)
def test_every_service_aliases_its_nodes_heartbeat(
    node_ttl: int, reap_after: int, alias: dict[str, object] | None
) -> None:
    _, result = plan("multi-port", node_ttl=node_ttl, node_reap_after=reap_after)
    assert len(result.services) > 1
    for service in result.services:
        found = [
            {k: v for k, v in check.fields.items() if k != "Notes"}
            for check in service.checks
            if check.check_id == f"service:{service.id}:registrator-node"
        ]
        assert found == ([alias] if alias else [])
