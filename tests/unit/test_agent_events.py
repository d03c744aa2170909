"""Tables for the agent's pure helpers: which events mark which container, `since`, identity."""

from __future__ import annotations

from typing import Any

import pytest

from registrator.agent import StartupError, plan_context, swarm_notes
from registrator.arguments import parse_args
from registrator.events import (
    event_container_id,
    event_service_id,
    kill_signal,
    signal_number,
    since_from_time_nano,
)
from registrator.swarm import manager_node_id

CID = "c" * 64


def container_event(action: str, **attributes: str) -> dict[str, Any]:
    return {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": CID, "Attributes": attributes},
        "timeNano": 1_700_000_000_123_456_789,
    }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(container_event("start"), CID, id="start"),
        pytest.param(container_event("die", exitCode="1"), CID, id="die"),
        pytest.param(container_event("stop"), CID, id="stop"),
        pytest.param(container_event("kill", signal="15"), CID, id="kill"),
        pytest.param(container_event("destroy"), CID, id="destroy"),
        pytest.param(container_event("pause"), CID, id="pause"),
        pytest.param(container_event("unpause"), CID, id="unpause"),
        pytest.param(container_event("rename"), CID, id="rename changes the service id"),
        pytest.param(container_event("health_status: healthy"), CID, id="health with value"),
        # Podman 4.3: one bare `health_status` per probe, and `remove` where Docker says destroy.
        pytest.param(container_event("health_status"), CID, id="podman health, no value"),
        pytest.param(container_event("remove"), CID, id="podman remove"),
        pytest.param(container_event("exec_died"), None, id="podman exec_died is noise"),
        pytest.param(container_event("exec_start: sh -c true"), None, id="exec is noise"),
        pytest.param(container_event("exec_die"), None, id="exec_die is noise"),
        pytest.param(container_event("attach"), None, id="attach is noise"),
        pytest.param(
            {
                "Type": "network",
                "Action": "connect",
                "Actor": {"ID": "n1", "Attributes": {"container": CID}},
            },
            CID,
            id="network connect marks the container",
        ),
        pytest.param(
            {"Type": "network", "Action": "create", "Actor": {"ID": "n1", "Attributes": {}}},
            None,
            id="network create marks nothing",
        ),
        pytest.param(
            {"status": "start", "id": CID, "Type": "container"}, CID, id="pre-1.22 event shape"
        ),
        pytest.param({"Type": "image", "Action": "pull"}, None, id="other types ignored"),
        pytest.param({"Type": "container", "Action": "start"}, None, id="no actor id"),
        pytest.param(
            {"Type": "container", "Action": "start", "Actor": "garbage"}, None, id="bad actor"
        ),
    ],
)
def test_event_container_id(event: dict[str, Any], expected: str | None) -> None:
    assert event_container_id(event) == expected


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(container_event("kill", signal="15"), "15", id="by number (dockerd 20.10)"),
        pytest.param(container_event("kill", signal="SIGHUP"), "SIGHUP", id="by name"),
        pytest.param(container_event("kill"), None, id="no signal attribute"),
        pytest.param(container_event("die"), None, id="not a kill"),
    ],
)
def test_kill_signal(event: dict[str, Any], expected: str | None) -> None:
    assert kill_signal(event) == expected


@pytest.mark.parametrize(
    ("signal", "number"),
    [
        pytest.param("15", 15, id="number"),
        pytest.param("SIGTERM", 15, id="SIG name"),
        pytest.param("term", 15, id="bare name, any case"),
        pytest.param("SIGQUIT", 3, id="SIGQUIT"),
        pytest.param("SIGRTMIN+3", "SIGRTMIN+3", id="unknown: as given"),
    ],
)
def test_signal_number(signal: str, number: int | str) -> None:
    assert signal_number(signal) == number


@pytest.mark.parametrize(
    ("time_nano", "expected"),
    [
        pytest.param(1_700_000_000_123_456_789, "1700000000.123456789", id="nanoseconds kept"),
        pytest.param(1_700_000_000_000_000_001, "1700000000.000000001", id="leading zeros"),
        pytest.param(0, "0.000000000", id="epoch"),
    ],
)
def test_since_from_time_nano(time_nano: int, expected: str) -> None:
    assert since_from_time_nano(time_nano) == expected


SWARM_ACTIVE = {"LocalNodeState": "active", "NodeAddr": "198.18.5.10"}
CONSUL_SELF = {"Member": {"Addr": "198.18.9.9"}, "Config": {"NodeName": "consul-1"}}


@pytest.mark.parametrize(
    ("argv", "info", "consul_self", "node", "address"),
    [
        pytest.param(
            [],
            {"Name": "host-a"},
            CONSUL_SELF,
            "host-a",
            "198.18.9.9",
            id="no swarm: the Consul agent's advertised address",
        ),
        pytest.param(
            [],
            {"Name": "host-a", "Swarm": SWARM_ACTIVE},
            CONSUL_SELF,
            "host-a",
            "198.18.5.10",
            id="swarm: the node address",
        ),
        pytest.param(
            [],
            {"Name": "host-a", "Swarm": {"LocalNodeState": "inactive", "NodeAddr": "198.18.5.10"}},
            CONSUL_SELF,
            "host-a",
            "198.18.9.9",
            id="inactive swarm ignored",
        ),
        pytest.param(
            ["-ip", "198.18.7.7"],
            {"Name": "host-a", "Swarm": SWARM_ACTIVE},
            CONSUL_SELF,
            "host-a",
            "198.18.7.7",
            id="-ip beats everything",
        ),
        pytest.param(
            ["-node", "n9"],
            {"Name": "host-a"},
            {},
            "n9",
            "",
            id="-node beats Docker's name; no address known",
        ),
    ],
)
def test_plan_context(
    argv: list[str], info: dict[str, Any], consul_self: dict[str, Any], node: str, address: str
) -> None:
    settings = parse_args(argv, {}).settings
    identity, context = plan_context(settings, info, consul_self)
    assert (identity.node, identity.default_address) == (node, address)
    assert (context.node, context.default_address) == (node, address)


def test_plan_context_without_any_node_name_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match="-node"):
        plan_context(parse_args([], {}).settings, {}, {})


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"Type": "service", "Action": "update", "Actor": {"ID": "svc1"}}, "svc1"),
        ({"Type": "service", "Action": "remove", "Actor": {"ID": "svc1"}}, "svc1"),
        ({"Type": "service", "Action": "create", "Actor": {}}, None),
        ({"Type": "service", "Action": "update", "Actor": "svc1"}, None),
        (container_event("start"), None),
    ],
)
def test_event_service_id(event: dict[str, Any], expected: str | None) -> None:
    assert event_service_id(event) == expected


MANAGER = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "n1"}}
WORKER = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": False, "NodeID": "n2"}}
NO_SWARM = {"Swarm": {"LocalNodeState": "inactive", "NodeID": ""}}


@pytest.mark.parametrize(
    ("info", "expected"),
    [(MANAGER, "n1"), (WORKER, ""), (NO_SWARM, ""), ({}, ""), ({"Swarm": "x"}, "")],
)
def test_manager_node_id(info: dict[str, Any], expected: str) -> None:
    assert manager_node_id(info) == expected


@pytest.mark.parametrize(
    ("argv", "info", "expected"),
    [
        pytest.param([], MANAGER, [], id="manager: nothing to say"),
        pytest.param(["-swarm-vip"], MANAGER, [], id="manager with -swarm-vip"),
        pytest.param([], NO_SWARM, [], id="no swarm"),
        pytest.param(["-swarm-vip"], NO_SWARM, ["not in a swarm"], id="-swarm-vip, no swarm"),
        pytest.param([], WORKER, ["routing mesh"], id="worker: ingress ports unknown"),
        pytest.param(["-internal"], WORKER, [], id="worker with -internal"),
        pytest.param(["-swarm-vip"], WORKER, ["left to the VIP"], id="worker with -swarm-vip"),
    ],
)
def test_swarm_notes(argv: list[str], info: dict[str, Any], expected: list[str]) -> None:
    notes = swarm_notes(parse_args(argv, {}).settings, info)
    assert len(notes) == len(expected)
    for note, fragment in zip(notes, expected, strict=True):
        assert fragment in note
