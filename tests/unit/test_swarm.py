"""Swarm services: parsing a manager's answers, routing-mesh ports, and -swarm-vip planning.

The documents in fixtures/swarm/ are real answers of a single-node swarm (Docker 20.10):

    docker swarm init --advertise-addr 127.0.0.1
    docker network create -d overlay --attachable --subnet 198.18.200.0/24 exp-ov
    docker service create --name exp-ing --network exp-ov -p 18081:80 -e SERVICE_NAME=exping IMG
    docker service create --name exp-vip --network exp-ov IMG
    docker service create --name exp-mixed --network exp-ov --endpoint-mode dnsrr \\
        --publish mode=host,published=18082,target=80 --label SERVICE_TAGS=from-deploy \\
        --container-label com.example=1 -e SERVICE_80_NAME=mixed IMG
    docker service create --name exp-udp --network exp-ov -p 18083:53/udp -p 18084:80 IMG

saved as `docker service inspect` (service-*.json) and `docker inspect` of exp-ing's task
(task-ing.json), one object each. IMG is registrator-test/web:latest (EXPOSE 80).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from registrator.containers import InspectError, image_exposed_ports, parse_container
from registrator.model import META_CONTAINER, META_NODE, Container, ContainerPort, SwarmPort
from registrator.planner import desired_services, left_to_vip
from registrator.swarm import is_vip_key, parse_service, task_service_id, vip_container, vip_key
from tests.unit.builders import NODE, SWARM_DIR, inspect_document, make_container, make_context

OVERLAY_ID = "vz8j2g05ciffr1296iiu0cx6f"
INGRESS_ID = "oilpntbakl0eoths4uftrc2xk"
USABLE_NETWORKS = {OVERLAY_ID: "exp-ov"}  # what the reconciler passes: ingress left out
DEFAULT_ADDRESS = "10.0.0.9"  # make_context's default_address


def document(name: str) -> dict[str, Any]:
    return inspect_document(name, SWARM_DIR)


def task(service: str = "service-ing", **overrides: Any) -> Container:
    """exp-ing's task container, enriched as a manager's agent enriches it."""
    container = parse_container(document("task-ing"))
    swarm = parse_service(document(service)) if service else None
    return replace(container, swarm_service=swarm, **overrides)


def host_mode_task() -> Container:
    """A host-mode task: its container carries the binding in NetworkSettings.Ports, as -p."""
    raw = document("task-ing")
    raw["NetworkSettings"]["Ports"] = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18082"}]}
    return replace(parse_container(raw), swarm_service=parse_service(document("service-mixed")))


def task_ip() -> str:
    address: str = document("task-ing")["NetworkSettings"]["Networks"]["exp-ov"]["IPAddress"]
    return address


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode", "ports", "vips"),
    [
        ("service-ing", "vip", [SwarmPort(80, 18081, "tcp", "ingress")], 2),
        ("service-vip", "vip", [], 1),
        ("service-mixed", "dnsrr", [SwarmPort(80, 18082, "tcp", "host")], 0),
        (
            "service-udp",
            "vip",
            [SwarmPort(53, 18083, "udp", "ingress"), SwarmPort(80, 18084, "tcp", "ingress")],
            2,
        ),
    ],
)
def test_parse_service_reads_mode_ports_and_vips(
    name: str, mode: str, ports: list[SwarmPort], vips: int
) -> None:
    service = parse_service(document(name))
    assert service.endpoint_mode == mode
    assert sorted(service.ports, key=lambda p: p.target) == ports
    assert len(service.virtual_ips) == vips
    assert all("/" not in address for address in service.virtual_ips.values())
    assert service.name == f"exp-{name.removeprefix('service-')}"
    assert service.image == "registrator-test/web:latest"


def test_parse_service_keeps_deploy_labels_apart_from_container_labels_and_env() -> None:
    service = parse_service(document("service-mixed"))
    assert service.labels == {"SERVICE_TAGS": "from-deploy"}
    assert service.container_labels == {"com.example": "1"}
    assert service.env == {"SERVICE_80_NAME": "mixed"}


@pytest.mark.parametrize(
    "raw",
    [
        {"ID": "x", "Spec": "nonsense", "Endpoint": {"Ports": [{"TargetPort": "80"}]}},
        {"ID": "x", "Endpoint": {"VirtualIPs": [{"NetworkID": "n", "Addr": "not-an-ip"}]}},
        {"ID": "x", "Endpoint": {"Ports": [{"TargetPort": 0, "PublishedPort": 1}]}},
        {"ID": "x", "Endpoint": {"Ports": [None, 5]}, "Spec": {"TaskTemplate": []}},
    ],
)
def test_parse_service_drops_malformed_fields(raw: dict[str, Any]) -> None:
    service = parse_service(raw)
    assert (service.ports, dict(service.virtual_ips), service.endpoint_mode) == ((), {}, "vip")


def test_parse_service_refuses_an_answer_without_id() -> None:
    with pytest.raises(InspectError, match="no ID"):
        parse_service({"Spec": {"Name": "web"}})


def test_a_port_left_to_swarm_is_read_from_the_live_endpoint() -> None:
    raw = document("service-ing")
    raw["Spec"]["EndpointSpec"]["Ports"][0]["PublishedPort"] = 0  # `-p 80`: Swarm picks
    assert parse_service(raw).ports == (SwarmPort(80, 18081, "tcp", "ingress"),)
    del raw["Endpoint"]  # while being created: only the spec is there
    assert parse_service(raw).ports == (SwarmPort(80, 0, "tcp", "ingress"),)


def test_image_exposed_ports() -> None:
    image = {"Config": {"ExposedPorts": {"80/tcp": {}, "53/udp": {}, "bad": {}}}}
    assert image_exposed_ports(image) == (ContainerPort(53, "udp"), ContainerPort(80, "tcp"))
    assert image_exposed_ports(None) == ()


# --- task containers: routing-mesh ports ---------------------------------------------------


def registered(container: Container, **context: Any) -> list[tuple[str, str, int, list[str]]]:
    plan = desired_services(container, make_context(**context))
    return [(s.name, s.address, s.port, list(s.tags)) for s in plan.services]


@pytest.mark.parametrize(
    ("container", "context", "expected"),
    [
        pytest.param(
            task(), {}, [("exping", DEFAULT_ADDRESS, 18081, [])], id="ingress: node address"
        ),
        pytest.param(
            task(),
            {"ip": "192.0.2.7"},
            [("exping", "192.0.2.7", 18081, [])],
            id="ingress: -ip wins",
        ),
        pytest.param(task(service=""), {}, [], id="worker: service unknown, nothing published"),
        pytest.param(
            task(),
            {"internal": True},
            [("exping", task_ip(), 80, [])],
            id="-internal: overlay address, never ingress",
        ),
        pytest.param(
            task(service="service-udp"),
            {},
            [
                ("exping-53", DEFAULT_ADDRESS, 18083, ["udp"]),
                ("exping-80", DEFAULT_ADDRESS, 18084, []),
            ],
            id="published target the image does not EXPOSE (53/udp)",
        ),
        pytest.param(
            task(service="service-mixed"),
            {},
            [],
            id="host-mode publishing without a binding on this container: nothing",
        ),
        pytest.param(
            host_mode_task(),
            {},
            [("exping", DEFAULT_ADDRESS, 18082, [])],
            id="host-mode binding: node address and host port",
        ),
    ],
)
def test_task_registration(
    container: Container, context: dict[str, Any], expected: list[tuple[str, str, int, list[str]]]
) -> None:
    assert registered(container, **context) == expected


def test_task_ids_stay_per_node_and_container() -> None:
    (service,) = desired_services(task(), make_context()).services
    assert service.id == f"{NODE}:{task().name}:80"
    assert service.meta[META_NODE] == NODE


# --- -swarm-vip ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("container", "swarm_vip", "left"),
    [
        pytest.param(task(), False, False, id="option off"),
        pytest.param(task(), True, True, id="vip service"),
        pytest.param(task(service=""), True, True, id="worker: mode unknown, left to leader"),
        pytest.param(task(service="service-mixed"), True, False, id="dnsrr service: per task"),
        pytest.param(make_container(), True, False, id="not a task"),
    ],
)
def test_left_to_vip(container: Container, swarm_vip: bool, left: bool) -> None:
    assert left_to_vip(container, make_context(swarm_vip=swarm_vip)) is left
    context = make_context(swarm_vip=swarm_vip, internal=True)
    services = desired_services(container, context).services
    assert (not services) if left else services


def vip_plan(name: str, image_ports: tuple[ContainerPort, ...] = (), **context: Any) -> Any:
    service = parse_service(document(name))
    container = vip_container(service, USABLE_NETWORKS, image_ports)
    return service, desired_services(container, make_context(swarm_vip=True, **context))


def test_vip_registration_is_one_service_at_the_overlay_vip() -> None:
    service, plan = vip_plan("service-ing")
    (registration,) = plan.services
    assert registration.address == service.virtual_ips[OVERLAY_ID]
    assert service.virtual_ips[INGRESS_ID] != registration.address
    assert (registration.name, registration.port) == ("exping", 80)
    # The same id whichever manager's agent writes it; ownership still names the writer.
    assert registration.id == "swarm:exp-ing:80"
    assert registration.meta[META_CONTAINER] == vip_key(service.id)
    assert registration.meta[META_NODE] == NODE
    assert not plan.problems


def test_vip_registration_takes_ports_from_the_image_when_nothing_is_published() -> None:
    _, plan = vip_plan("service-vip", (ContainerPort(80, "tcp"),))
    assert [(s.name, s.port) for s in plan.services] == [("exp-vip", 80)]
    _, nothing = vip_plan("service-vip")
    assert nothing.services == ()


def test_vip_registration_reads_deploy_labels_under_container_metadata() -> None:
    service = parse_service(document("service-mixed"))
    service = replace(service, endpoint_mode="vip", virtual_ips={OVERLAY_ID: "198.18.200.9"})
    container = vip_container(service, USABLE_NETWORKS)
    (registration,) = desired_services(container, make_context(swarm_vip=True)).services
    assert (registration.name, list(registration.tags)) == ("mixed", ["from-deploy"])


def test_vip_without_a_usable_network_is_a_named_problem() -> None:
    service = parse_service(document("service-ing"))
    container = vip_container(service, {})  # only the ingress VIP
    plan = desired_services(container, make_context(swarm_vip=True))
    assert plan.services == ()
    assert [p.key for p in plan.problems] == ["-swarm-vip"]


def test_vip_registration_cannot_run_a_script_and_is_critical_saying_so() -> None:
    service = parse_service(document("service-ing"))
    service = replace(service, env={**service.env, "SERVICE_CHECK_SCRIPT": "true"})
    plan = desired_services(vip_container(service, USABLE_NETWORKS), make_context(swarm_vip=True))
    (registration,) = plan.services
    assert registration.script == ""
    # A check the labels ask for is missing: never unchecked, critical with the reason.
    assert [c.check_id.rsplit(":", 1)[1] for c in registration.checks] == ["misconfigured"]
    (check,) = registration.checks
    reason = "'true' cannot run at a VIP registration (no container); no script"
    assert (check.fields["Status"], check.fields["Notes"]) == (
        "critical",
        f"env SERVICE_CHECK_SCRIPT: {reason}",
    )
    assert [p.reason for p in plan.problems] == [
        f"{reason}; the service is critical until it is fixed"
    ]


def test_vip_keys_never_look_like_container_ids() -> None:
    assert is_vip_key(vip_key("abc")) and not is_vip_key("a" * 64)
    assert task_service_id(task()) == parse_service(document("service-ing")).id
    assert task_service_id(make_container()) == ""
