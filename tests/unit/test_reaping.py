"""The node heartbeat's registration and the Swarm leader's reaping decisions, as tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from registrator.model import META_CONTAINER, META_NODE, META_SOURCE
from registrator.reaping import (
    Heartbeat,
    Reap,
    SwarmNode,
    heartbeat_output,
    heartbeat_registration,
    heartbeats_from_agent,
    owned_by_node,
    parse_nodes,
    reap_plan,
    track_down,
)

GRACE = 60.0
NOW = 1000.0
SELF = "node1"
NODES = (
    SwarmNode("id1", "node1", "ready"),
    SwarmNode("id2", "node2", "ready"),
    SwarmNode("id3", "node3", "down"),
)
OWNED = {
    "node1": ("node1:web.1:80", "registrator:node1"),
    "node2": ("node2:web.2:80", "registrator:node2"),
    "node3": ("node3:web.3:80", "node3:web.4:80", "registrator:node3"),
}


def heartbeat(node: str, status: str = "critical", swarm_id: str | None = None) -> Heartbeat:
    return Heartbeat(node, f"id{node[-1]}" if swarm_id is None else swarm_id, status)


@pytest.mark.parametrize(
    ("nodes", "down_since", "heartbeats", "expected"),
    [
        pytest.param(
            NODES,
            {"id3": NOW - GRACE},
            {"node3": heartbeat("node3")},
            [("node3", OWNED["node3"], "Swarm node node3 down for 60 s")],
            id="down for the grace period, heartbeat critical: reaped",
        ),
        pytest.param(
            NODES,
            {"id3": NOW - GRACE + 1},
            {"node3": heartbeat("node3")},
            [],
            id="down, grace not over yet",
        ),
        pytest.param(
            NODES,
            {},
            {"node3": heartbeat("node3")},
            [],
            id="down, but not seen down by this leader yet",
        ),
        pytest.param(
            NODES,
            {"id3": 0.0},
            {"node3": heartbeat("node3", "passing")},
            [],
            id="down for Swarm, but its agent still beats: never",
        ),
        pytest.param(
            NODES,
            {"id3": 0.0},
            {"node3": heartbeat("node3", "warning")},
            [],
            id="heartbeat warning counts as alive",
        ),
        pytest.param(
            (
                SwarmNode("id1", "node1", "ready"),
                SwarmNode("id2", "node2", "ready"),
                SwarmNode("id3", "node3", "ready"),
            ),
            {"id3": 0.0},
            {"node3": heartbeat("node3")},
            [],
            id="ready node: never, whatever its heartbeat says",
        ),
        pytest.param(
            (*NODES[:2], SwarmNode("id3", "node3", "unknown")),
            {"id3": 0.0},
            {"node3": heartbeat("node3")},
            [],
            id="unknown state (a manager just started): never",
        ),
        pytest.param(
            (*NODES[:2], SwarmNode("id3", "node3", "disconnected")),
            {"id3": NOW - GRACE},
            {"node3": heartbeat("node3")},
            [("node3", OWNED["node3"], "Swarm node node3 disconnected for 60 s")],
            id="disconnected counts as down",
        ),
        pytest.param(
            NODES[:2],
            {},
            {"node3": heartbeat("node3")},
            [("node3", OWNED["node3"], "Swarm node id3 left the swarm")],
            id="left the swarm (node removed), heartbeat critical: reaped at once",
        ),
        pytest.param(
            NODES[:2],
            {},
            {"node3": heartbeat("node3", "passing")},
            [],
            id="not in this swarm but beating (another swarm on the same Consul): never",
        ),
        pytest.param(
            NODES[:2],
            {},
            {"node3": heartbeat("node3", swarm_id="")},
            [],
            id="plain Docker host (no Swarm node id): left to Consul's reaping",
        ),
        pytest.param(
            NODES[:2],
            {},
            {},
            [],
            id="no heartbeat and no Swarm node of that name: unknown, never",
        ),
        pytest.param(
            NODES,
            {"id3": 0.0},
            {},
            [("node3", OWNED["node3"], "Swarm node node3 down for 1000 s")],
            id="no heartbeat (reaped already, or an older agent): matched by host name",
        ),
        pytest.param(
            (*NODES[:2], SwarmNode("id3", "host-c", "down")),
            {"id3": NOW - GRACE},
            {"node3": heartbeat("node3")},
            [("node3", OWNED["node3"], "Swarm node host-c down for 60 s")],
            id="-node differs from the host name: matched by the heartbeat's Swarm node id",
        ),
        pytest.param(
            (SwarmNode("id1", "node1", "down"), *NODES[1:]),
            {"id1": 0.0, "id3": 0.0},
            {"node1": heartbeat("node1"), "node3": heartbeat("node3", "passing")},
            [],
            id="this agent's own node: never",
        ),
        pytest.param(
            (),
            {},
            {"node3": heartbeat("node3")},
            [],
            id="empty node list: nothing known, nothing done",
        ),
    ],
)
def test_reap_plan(
    nodes: tuple[SwarmNode, ...],
    down_since: dict[str, float],
    heartbeats: dict[str, Heartbeat],
    expected: list[tuple[str, tuple[str, ...], str]],
) -> None:
    plans = reap_plan(
        nodes=nodes,
        down_since=down_since,
        now=NOW,
        grace=GRACE,
        heartbeats=heartbeats,
        owned=OWNED,
        self_node=SELF,
    )
    assert plans == tuple(Reap(node, reason, ids) for node, ids, reason in expected)


@pytest.mark.parametrize(
    ("previous", "states", "expected"),
    [
        pytest.param({}, {"a": "down"}, {"a": NOW}, id="first seen down now"),
        pytest.param({"a": 5.0}, {"a": "down"}, {"a": 5.0}, id="still down: clock kept"),
        pytest.param({"a": 5.0}, {"a": "ready"}, {}, id="back: clock dropped"),
        pytest.param({"a": 5.0}, {"a": "unknown"}, {}, id="unknown: clock dropped"),
        pytest.param({"a": 5.0}, {}, {}, id="removed from the swarm: clock dropped"),
        pytest.param({"a": 5.0}, {"a": "disconnected"}, {"a": 5.0}, id="down to disconnected"),
    ],
)
def test_track_down(
    previous: dict[str, float], states: dict[str, str], expected: dict[str, float]
) -> None:
    nodes = [SwarmNode(node_id, f"host-{node_id}", state) for node_id, state in states.items()]
    assert track_down(previous, nodes, NOW) == expected


def test_parse_nodes_reads_defensively() -> None:
    answer: Any = [
        {"ID": "n1", "Description": {"Hostname": "node1"}, "Status": {"State": "ready"}},
        {"ID": "n2", "Description": None, "Status": {"State": "Down"}},
        {"ID": "n3"},
        {"Description": {"Hostname": "no-id"}},
        "garbage",
    ]
    assert parse_nodes(answer) == (
        SwarmNode("n1", "node1", "ready"),
        SwarmNode("n2", "", "down"),
        SwarmNode("n3", "", "unknown"),
    )
    assert parse_nodes({"message": "not a list"}) == ()


def test_heartbeat_registration_round_trips_through_the_agent_listing() -> None:
    body = heartbeat_registration("node3", 30, 300, "10.0.0.3", "id3")
    assert body["ID"] == "registrator:node3" and body["Name"] == "registrator"
    assert {k: body["Check"][k] for k in ("CheckID", "TTL", "Status")} == {
        "CheckID": "service:registrator:node3:node-heartbeat",
        "TTL": "30s",
        "Status": "passing",
    }
    assert body["Check"]["DeregisterCriticalServiceAfter"] == "300s"
    assert META_CONTAINER not in body["Meta"]  # never one of a container's services
    services = {body["ID"]: {"ID": body["ID"], "Service": "registrator", "Meta": body["Meta"]}}
    checks = {body["Check"]["CheckID"]: {"Status": "critical"}}
    assert heartbeats_from_agent(services, checks) == {
        "node3": Heartbeat("node3", "id3", "critical")
    }
    assert heartbeats_from_agent(services, {}) == {"node3": Heartbeat("node3", "id3", "")}


def test_heartbeat_registration_without_reaping_or_swarm() -> None:
    body = heartbeat_registration("n", 2, 0)
    assert "DeregisterCriticalServiceAfter" not in body["Check"]
    assert "registrator-swarm-node-id" not in body["Meta"]


def test_heartbeats_from_agent_ignores_lookalikes() -> None:
    body = heartbeat_registration("node3", 30, 0)
    services = {
        # Somebody else's service named like ours, and ours under a foreign id.
        "registrator:node3": {"ID": "registrator:node3", "Meta": {META_NODE: "node3"}},
        "x": {"ID": "x", "Meta": body["Meta"]},
    }
    assert heartbeats_from_agent(services, {}) == {}


def test_owned_by_node_leaves_out_sidecars_vips_and_foreign_services() -> None:
    ours = {META_SOURCE: "registrator", META_NODE: "node3", META_CONTAINER: "c1"}
    services = {
        "node3:a:80": {"Meta": ours},
        "node3:a:80-sidecar-proxy": {"Kind": "connect-proxy", "Meta": ours},
        "swarm:web:80": {"Meta": {**ours, META_CONTAINER: "swarm-service:abc"}},
        "registrator:node3": {"Meta": heartbeat_registration("node3", 30, 0)["Meta"]},
        "theirs": {"Meta": {META_NODE: "node3"}},
        "no-meta": {},
    }
    assert owned_by_node(services) == {"node3": ("node3:a:80", "registrator:node3")}


@pytest.mark.parametrize(
    ("stopping", "expected"),
    [
        pytest.param(
            False,
            "registrator 1.0 on node n: last beat 2026-11-30T03:04:05Z; critical if none for 30 s",
            id="beat",
        ),
        pytest.param(
            True,
            "registrator 1.0 on node n: stopping at 2026-11-30T03:04:05Z; a restarted agent "
            "beats again within 30 s, else this check and the node's services turn critical",
            id="clean stop",
        ),
    ],
)
def test_heartbeat_output_says_who_and_when(stopping: bool, expected: str) -> None:
    when = datetime(2026, 11, 30, 3, 4, 5, tzinfo=UTC)
    assert heartbeat_output("registrator 1.0 on node n", when, 30, stopping) == expected
