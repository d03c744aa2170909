"""parse_container over documents a real dockerd produced, then over broken ones."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrator.containers import InspectError, parse_container, parse_env
from registrator.model import Container, ContainerPort, NetworkAttachment, PortBinding
from tests.unit.builders import INSPECT_NAMES, inspect_document

CID = "f" * 64
BRIDGE_ID = "9cfa8d11c931"  # the default bridge of the engine the fixtures were captured on


def parsed(name: str) -> Container:
    return parse_container(inspect_document(name))


def random_host_port(name: str, key: str) -> int:
    # `-p 80` lets Docker pick the host port, so a re-capture may get another one.
    return int(inspect_document(name)["NetworkSettings"]["Ports"][key][0]["HostPort"])


def test_every_case_was_captured() -> None:
    assert set(INSPECT_NAMES) >= {
        "bridge-published",
        "bridge-published-specific-ip",
        "multi-port",
        "udp",
        "no-ports",
        "exposed-only",
        "host-network",
        "two-networks",
        "paused",
        "exited-nonzero",
        "killed",
        "compose-labels",
        "swarm-task-labels",
        "healthcheck",
        "image-by-id",
    }


@pytest.mark.parametrize("name", INSPECT_NAMES)
def test_identity(name: str) -> None:
    document = inspect_document(name)
    container = parse_container(document)
    assert container.id == document["Id"]
    assert len(container.id) == 64
    # Docker reports "/name"; services are named after what `docker ps` shows.
    assert container.name == f"fixture-capture-{name}"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "bridge-published",
            (ContainerPort(80, "tcp", (PortBinding("0.0.0.0", 8080), PortBinding("::", 8080))),),
            id="one -p gives an IPv4 and an IPv6 binding",
        ),
        pytest.param(
            "bridge-published-specific-ip",
            (ContainerPort(80, "tcp", (PortBinding("127.0.0.1", 8081),)),),
            id="-p 127.0.0.1:8081:80",
        ),
        pytest.param(
            "udp",
            (ContainerPort(53, "udp", (PortBinding("0.0.0.0", 5353), PortBinding("::", 5353))),),
            id="udp",
        ),
        pytest.param("exposed-only", (ContainerPort(80, "tcp"),), id="exposed, null bindings"),
        pytest.param("no-ports", (), id="no ports"),
        pytest.param(
            "host-network", (ContainerPort(8500, "tcp"),), id="host network keeps --expose"
        ),
        pytest.param("exited-nonzero", (), id="exited"),
    ],
)
def test_ports(name: str, expected: tuple[ContainerPort, ...]) -> None:
    assert parsed(name).ports == expected


def test_ports_multi_port_sorted_with_unpublished_last_exposed() -> None:
    port_80 = random_host_port("multi-port", "80/tcp")
    port_443 = random_host_port("multi-port", "443/tcp")
    assert parsed("multi-port").ports == (
        ContainerPort(80, "tcp", (PortBinding("0.0.0.0", port_80), PortBinding("::", port_80))),
        ContainerPort(443, "tcp", (PortBinding("0.0.0.0", port_443), PortBinding("::", port_443))),
        ContainerPort(9000, "tcp"),
    )


@pytest.mark.parametrize(
    ("name", "network_mode", "networks"),
    [
        pytest.param(
            "two-networks",
            "fixture-capture-net-a",
            (
                ("fixture-capture-net-a", "198.18.201.2"),
                ("fixture-capture-net-b", "198.18.202.2"),
            ),
            id="two user networks, sorted by name",
        ),
        pytest.param("host-network", "host", (("host", ""),), id="host network has no IP"),
        pytest.param(
            "exited-nonzero", "default", (("bridge", ""),), id="exited keeps network, loses IP"
        ),
        pytest.param("killed", "default", (("bridge", ""),), id="killed"),
    ],
)
def test_networks(name: str, network_mode: str, networks: tuple[tuple[str, str], ...]) -> None:
    container = parsed(name)
    assert container.network_mode == network_mode
    assert tuple((n.name, n.ip) for n in container.networks) == networks
    assert all(len(n.network_id) == 64 for n in container.networks)


@pytest.mark.parametrize(
    "name",
    [
        "bridge-published",
        "no-ports",
        "paused",
        "healthcheck",
        "compose-labels",
        "image-by-id",
    ],
)
def test_default_bridge_network(name: str) -> None:
    document = inspect_document(name)
    (network,) = parsed(name).networks
    assert network.name == "bridge"
    assert network.network_id.startswith(BRIDGE_ID)
    assert network.ip == document["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] != ""


@pytest.mark.parametrize(
    ("name", "labels", "env"),
    [
        pytest.param(
            "bridge-published",
            {"SERVICE_NAME": "web", "SERVICE_TAGS": "prod,blue"},
            {"SERVICE_VERSION": "1.2"},
            id="SERVICE_* labels and env",
        ),
        pytest.param(
            "compose-labels", {"com.docker.compose.service": "api"}, {}, id="compose labels"
        ),
        pytest.param(
            "swarm-task-labels",
            {
                "com.docker.swarm.service.name": "mystack_web",
                "com.docker.stack.namespace": "mystack",
            },
            {},
            id="swarm labels",
        ),
        # busybox sets no ENV, so Docker sends `"Env": null`.
        pytest.param("no-ports", {}, {}, id="null env and empty labels"),
    ],
)
def test_labels_and_env(name: str, labels: dict[str, str], env: dict[str, str]) -> None:
    container = parsed(name)
    assert dict(container.labels) == labels
    assert dict(container.env) == env


@pytest.mark.parametrize(
    ("name", "running", "paused", "exit_code", "health"),
    [
        pytest.param("bridge-published", True, False, 0, None, id="running"),
        # Docker keeps Running true while paused; the planner must look at Paused too.
        pytest.param("paused", True, True, 0, None, id="paused"),
        pytest.param("exited-nonzero", False, False, 3, None, id="exit 3"),
        pytest.param("killed", False, False, 137, None, id="SIGKILL is 128+9"),
        pytest.param("healthcheck", True, False, 0, "healthy", id="healthy"),
    ],
)
def test_state(name: str, running: bool, paused: bool, exit_code: int, health: str | None) -> None:
    container = parsed(name)
    assert (container.running, container.paused, container.restarting) == (running, paused, False)
    assert container.exit_code == exit_code
    assert container.health == health


@pytest.mark.parametrize(
    ("name", "finished_at"),
    [
        pytest.param("exited-nonzero", "2026-11-28T03:58:44Z", id="exited: to the second"),
        pytest.param("bridge-published", "", id="never stopped: Docker's zero time"),
    ],
)
def test_finished_at(name: str, finished_at: str) -> None:
    assert parsed(name).finished_at == finished_at


def test_health_output_is_the_last_log_entry() -> None:
    document = inspect_document("healthcheck")
    document["State"]["Health"]["Log"].append({"ExitCode": 1, "Output": "db unreachable\n"})
    assert parse_container(document).health_output == "db unreachable\n"


@pytest.mark.parametrize(
    ("name", "image"),
    [
        pytest.param("bridge-published", "registrator-test/busybox:latest", id="by name"),
        pytest.param("image-by-id", inspect_document("image-by-id")["Image"], id="by id"),
    ],
)
def test_image_is_what_the_user_ran(name: str, image: str) -> None:
    assert parsed(name).image == image


def test_image_by_id_really_is_an_id() -> None:
    assert parsed("image-by-id").image.startswith("sha256:")


@pytest.mark.parametrize(
    ("name", "hostname"),
    [
        pytest.param("bridge-published", None, id="bridge: short container id"),
        pytest.param("host-network", "docker-host", id="host network: the host's name"),
    ],
)
def test_hostname(name: str, hostname: str | None) -> None:
    container = parsed(name)
    assert container.hostname == (hostname or container.id[:12])


# --- malformed documents -------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({}, id="empty"),
        pytest.param({"Id": ""}, id="empty Id"),
        pytest.param({"Id": 42}, id="numeric Id"),
        pytest.param({"Name": "/web", "Config": {}}, id="no Id"),
        pytest.param(None, id="null"),
        pytest.param([{"Id": CID}], id="the list docker inspect prints"),
        pytest.param("garbage", id="string"),
    ],
)
def test_without_id_is_refused(document: Any) -> None:
    with pytest.raises(InspectError):
        parse_container(document)


def doc(**fields: Any) -> dict[str, Any]:
    return {"Id": CID, **fields}


@pytest.mark.parametrize(
    ("document", "attribute", "expected"),
    [
        pytest.param(doc(), "name", CID[:12], id="no Name: short id"),
        pytest.param(doc(Name="/"), "name", CID[:12], id="Name '/'"),
        pytest.param(doc(Name=7), "name", CID[:12], id="Name not a string"),
        pytest.param(doc(), "image", "", id="no image at all"),
        pytest.param(doc(Image="sha256:abc"), "image", "sha256:abc", id="image from top level"),
        pytest.param(doc(Config="x", Image="app"), "image", "app", id="Config not an object"),
        pytest.param(doc(Config={"Image": 3}, Image="app"), "image", "app", id="Image mistyped"),
        pytest.param(
            doc(Config={"Labels": {"a": 1, "b": "x", "c": None}}),
            "labels",
            {"b": "x"},
            id="non-string label values dropped",
        ),
        pytest.param(doc(Config={"Labels": ["a=b"]}), "labels", {}, id="Labels a list"),
        pytest.param(doc(Config={"Env": "A=1"}), "env", {}, id="Env a string"),
        pytest.param(
            doc(Config={"Env": ["A=1", 5, "NOVALUE", "B=x=y", "A=2", None]}),
            "env",
            {"A": "2", "B": "x=y"},
            id="Env junk entries skipped, later duplicate wins",
        ),
        pytest.param(doc(Config={"ExposedPorts": ["80/tcp"]}), "ports", (), id="Exposed list"),
        pytest.param(
            doc(
                Config={
                    "ExposedPorts": {
                        "abc/tcp": {},
                        "0/tcp": {},
                        "70000/tcp": {},
                        "80": {},
                        "53/UDP": {},
                    }
                }
            ),
            "ports",
            (ContainerPort(53, "udp"), ContainerPort(80, "tcp")),
            id="bad port keys skipped, protocol defaults to tcp, lower-cased",
        ),
        pytest.param(
            doc(NetworkSettings={"Ports": {"80/tcp": "x"}}),
            "ports",
            (ContainerPort(80, "tcp"),),
            id="bindings not a list",
        ),
        pytest.param(
            doc(
                NetworkSettings={
                    "Ports": {
                        "80/tcp": [
                            {"HostIp": "0.0.0.0", "HostPort": 8080},
                            {"HostIp": "0.0.0.0", "HostPort": "abc"},
                            {"HostIp": "0.0.0.0", "HostPort": "0"},
                            {"HostIp": "0.0.0.0", "HostPort": ""},
                            "junk",
                            None,
                        ]
                    }
                }
            ),
            "ports",
            (ContainerPort(80, "tcp"),),
            id="unusable bindings skipped",
        ),
        pytest.param(
            doc(
                NetworkSettings={
                    "Ports": {
                        "80/tcp": [
                            {"HostIp": 5, "HostPort": "8080"},
                            {"HostIp": "", "HostPort": "8080"},
                        ]
                    }
                }
            ),
            "ports",
            (ContainerPort(80, "tcp", (PortBinding("", 8080),)),),
            id="mistyped HostIp is empty, duplicates merged",
        ),
        pytest.param(
            doc(
                Config={"ExposedPorts": {"80/tcp": {}}},
                NetworkSettings={"Ports": {"80/tcp": None}},
            ),
            "ports",
            (ContainerPort(80, "tcp"),),
            id="exposed and null bindings",
        ),
        pytest.param(doc(NetworkSettings=[]), "networks", (), id="NetworkSettings a list"),
        pytest.param(
            doc(NetworkSettings={"Networks": {"bridge": "x"}}),
            "networks",
            (NetworkAttachment("bridge", "", ""),),
            id="network entry not an object",
        ),
        pytest.param(
            doc(
                NetworkSettings={"Networks": {"b": {"IPAddress": 1}, "a": {"IPAddress": "1.2.3.4"}}}
            ),
            "networks",
            (NetworkAttachment("a", "1.2.3.4", ""), NetworkAttachment("b", "", "")),
            id="networks sorted, mistyped IP empty",
        ),
        pytest.param(doc(HostConfig={"NetworkMode": 5}), "network_mode", "default", id="mode"),
        pytest.param(doc(State="running"), "running", False, id="State a string"),
        pytest.param(doc(State={"Running": "true"}), "running", False, id="Running a string"),
        pytest.param(doc(State={"Paused": 1}), "paused", False, id="Paused a number"),
        pytest.param(doc(State={"ExitCode": "3"}), "exit_code", 0, id="ExitCode a string"),
        pytest.param(doc(State={"ExitCode": None}), "exit_code", 0, id="ExitCode null"),
        pytest.param(doc(State={"Health": "healthy"}), "health", None, id="Health a string"),
        pytest.param(doc(State={"Health": {"Status": ""}}), "health", None, id="empty status"),
        pytest.param(
            doc(State={"Health": {"Status": "starting", "Log": "x"}}),
            "health_output",
            "",
            id="Log a string",
        ),
        pytest.param(
            doc(State={"Health": {"Status": "starting", "Log": [{"Output": 5}]}}),
            "health_output",
            "",
            id="Output a number",
        ),
    ],
)
def test_mistyped_fields_become_empty(document: Any, attribute: str, expected: object) -> None:
    assert getattr(parse_container(document), attribute) == expected


def test_parse_env_of_non_list() -> None:
    assert parse_env({"A": "1"}) == {}


# Any JSON value in any position of a real document: parsing may degrade, never crash.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_paths(item, (*prefix, index)))
    return found


_BASE = inspect_document("multi-port")
_PATHS = [path for path in _paths(_BASE) if path != ("Id",)]


def _has(target: Any, step: str | int) -> bool:
    if isinstance(target, dict):
        return step in target
    return isinstance(target, list) and isinstance(step, int) and step < len(target)


def _replace_at(document: Any, path: tuple[str | int, ...], value: Any) -> None:
    """Put `value` at `path`, unless an earlier replacement already removed that path."""
    target = document
    for step in path[:-1]:
        if not _has(target, step):
            return
        target = target[step]
    if _has(target, path[-1]):
        target[path[-1]] = value


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(_PATHS), _JSON), min_size=1, max_size=4))
def test_any_value_anywhere_does_not_crash(
    replacements: list[tuple[tuple[str | int, ...], Any]],
) -> None:
    document = copy.deepcopy(_BASE)
    for path, value in replacements:
        _replace_at(document, path, value)
    assert parse_container(document).id == _BASE["Id"]


def test_engine29_api_1_55_document() -> None:
    """Captured from Docker Engine 29.7.2 at API 1.55, the newest the agent speaks: no top-level
    address fields any more, and a published port bound on both 0.0.0.0 and ::."""
    document = inspect_document("engine29-bridge-published")
    assert set(document["NetworkSettings"]) == {"Networks", "Ports", "SandboxID", "SandboxKey"}
    container = parse_container(document)
    assert [(n.name, n.ip) for n in container.networks] == [("fixture-capture-e29", "198.18.52.2")]
    assert container.ports == (
        ContainerPort(
            port=80,
            protocol="tcp",
            bindings=(PortBinding("0.0.0.0", 8080), PortBinding("::", 8080)),
        ),
    )
    assert container.running
