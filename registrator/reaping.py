"""Pure: a node's liveness signal in Consul, and whose services to reap when a node is lost.

Every agent keeps one heartbeat service per node (`registrator:<node>`, one TTL check) on the
Consul agent it writes to, and every service it registers carries an alias check on it
(checks.py), so Consul itself turns all of a node's services critical when the heartbeat stops.

On a Swarm, the agent on the leader also reads node states (`GET /nodes`) and deregisters the
services of nodes that Swarm has reported `down` for longer than a grace period, or that have
left the swarm: `reap_plan` decides which, from what Swarm and Consul said and the time. It
never picks a node Swarm reports `ready`, nor one whose heartbeat still passes (its agent is
alive and would register everything again), nor this agent's own node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from registrator.containers import as_dict, as_str
from registrator.model import META_CONTAINER, META_NODE, META_SOURCE, OWNER_SOURCE
from registrator.swarm import is_vip_key

HEARTBEAT_SERVICE = "registrator"
HEARTBEAT_CHECK_KIND = "node-heartbeat"
# Heartbeat Meta: which Swarm node the agent runs on, so the leader can map a Swarm node to
# the services it owns even when -node is not the node's host name.
META_SWARM_NODE_ID = "registrator-swarm-node-id"
META_ROLE = "registrator-role"
ROLE_HEARTBEAT = "node-heartbeat"
# Swarm node states (Status.State) that mean "the managers cannot reach it". "unknown" (a
# manager that has just started and not yet heard from the node) is not one of them.
_LOST_STATES = frozenset({"down", "disconnected"})


def heartbeat_service_id(node: str) -> str:
    return f"{HEARTBEAT_SERVICE}:{node}"


def heartbeat_check_id(node: str) -> str:
    return f"service:{heartbeat_service_id(node)}:{HEARTBEAT_CHECK_KIND}"


def _duration(seconds: int) -> str:
    return f"{seconds}s"


def heartbeat_registration(
    node: str, ttl: int, reap_after: int, address: str = "", swarm_node_id: str = ""
) -> dict[str, Any]:
    """The body of `PUT /v1/agent/service/register` for the node's heartbeat service.

    `ttl` and `reap_after` are seconds (`reap_after` 0: Consul never removes it). Registered
    passing: the agent registering it is alive. No registrator-container Meta, so the
    reconciler never counts it among a container's services.
    """
    meta = {META_SOURCE: OWNER_SOURCE, META_NODE: node, META_ROLE: ROLE_HEARTBEAT}
    if swarm_node_id:
        meta[META_SWARM_NODE_ID] = swarm_node_id
    check: dict[str, Any] = {
        "CheckID": heartbeat_check_id(node),
        "Name": f"registrator heartbeat of node {node}",
        "TTL": _duration(ttl),
        "Status": "passing",
        "Notes": (
            f"kept passing by the registrator agent of node {node} every {max(1, ttl // 2)} s; "
            "critical when it stops, and with it every service that agent registered"
        ),
    }
    if reap_after:
        check["DeregisterCriticalServiceAfter"] = _duration(reap_after)
    return {
        "ID": heartbeat_service_id(node),
        "Name": HEARTBEAT_SERVICE,
        "Address": address,
        "Meta": meta,
        "Check": check,
    }


def heartbeat_output(holder: str, when: datetime, ttl: int, stopping: bool = False) -> str:
    """The check output Consul shows: who holds the heartbeat and when it last beat.

    Consul keeps it after the TTL expires ("TTL expired (last output before timeout
    follows): ..."), so a dead node's check still says who went quiet, and when.
    """
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if stopping:
        return (
            f"{holder}: stopping at {stamp}; a restarted agent beats again within {ttl} s, "
            "else this check and the node's services turn critical"
        )
    return f"{holder}: last beat {stamp}; critical if none for {ttl} s"


@dataclass(frozen=True)
class SwarmNode:
    """One entry of `GET /nodes` (Docker Engine API, managers only)."""

    id: str
    hostname: str
    state: str  # Status.State: "ready" | "down" | "unknown" | "disconnected"


def parse_nodes(answer: Any) -> tuple[SwarmNode, ...]:
    """The nodes of a `GET /nodes` answer; entries without an ID are skipped."""
    nodes = []
    for raw in answer if isinstance(answer, list) else []:
        item = as_dict(raw)
        node_id = as_str(item.get("ID"))
        if not node_id:
            continue
        hostname = as_str(as_dict(item.get("Description")).get("Hostname"))
        state = as_str(as_dict(item.get("Status")).get("State")).lower() or "unknown"
        nodes.append(SwarmNode(node_id, hostname, state))
    return tuple(nodes)


def track_down(
    previous: Mapping[str, float], nodes: Iterable[SwarmNode], now: float
) -> dict[str, float]:
    """Swarm node id → when it was first seen lost (monotonic seconds), for nodes lost now.

    A node that is seen `ready` (or `unknown`) again starts afresh; a new leader starts every
    clock afresh, which can only make it wait longer.
    """
    return {node.id: previous.get(node.id, now) for node in nodes if node.state in _LOST_STATES}


@dataclass(frozen=True)
class Heartbeat:
    """What the Consul agent holds of one node's heartbeat."""

    node: str  # the registrator node name (registrator-node Meta)
    swarm_node_id: str  # "" when that agent is not on a Swarm node
    status: str  # the check's status: "passing" | "warning" | "critical" | "" (no check)


def heartbeats_from_agent(
    services: Mapping[str, Any], checks: Mapping[str, Any]
) -> dict[str, Heartbeat]:
    """Heartbeats by node, from `GET /v1/agent/services` and `GET /v1/agent/checks`."""
    found = {}
    for entry in services.values():
        item = as_dict(entry)
        meta = as_dict(item.get("Meta"))
        node = as_str(meta.get(META_NODE))
        if meta.get(META_ROLE) != ROLE_HEARTBEAT or meta.get(META_SOURCE) != OWNER_SOURCE:
            continue
        if not node or item.get("ID") != heartbeat_service_id(node):
            continue
        status = as_str(as_dict(checks.get(heartbeat_check_id(node))).get("Status"))
        found[node] = Heartbeat(node, as_str(meta.get(META_SWARM_NODE_ID)), status)
    return found


def owned_by_node(services: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """registrator-node → the ids of the services it owns on this Consul agent.

    Sidecars (they go with their parent) and VIP registrations (they belong to the swarm and
    the leader's agent takes them over) are left out; heartbeats are included.
    """
    owned: dict[str, list[str]] = {}
    for service_id, entry in services.items():
        item = as_dict(entry)
        meta = as_dict(item.get("Meta"))
        node = as_str(meta.get(META_NODE))
        if item.get("Kind") or meta.get(META_SOURCE) != OWNER_SOURCE or not node:
            continue
        if is_vip_key(as_str(meta.get(META_CONTAINER))):
            continue
        owned.setdefault(node, []).append(str(service_id))
    return {node: tuple(sorted(ids)) for node, ids in owned.items()}


@dataclass(frozen=True)
class Reap:
    """Deregister `service_ids` (all owned by `node`) because of `reason`."""

    node: str
    reason: str
    service_ids: tuple[str, ...]


def reap_plan(
    *,
    nodes: Iterable[SwarmNode],
    down_since: Mapping[str, float],
    now: float,
    grace: float,
    heartbeats: Mapping[str, Heartbeat],
    owned: Mapping[str, tuple[str, ...]],
    self_node: str,
) -> tuple[Reap, ...]:
    """Which nodes' services to deregister, from a successful read of Swarm's nodes.

    A registrator node is matched to a Swarm node by the Swarm node id its heartbeat carries,
    else by host name (the seed's stack sets REGISTRATOR_NODE to `{{.Node.Hostname}}`). It is
    reaped when that Swarm node has been down (`down_since`, monotonic seconds) for `grace`
    seconds or more, or when its heartbeat names a Swarm node that is no longer in the swarm.
    Never: this agent's node, a node Swarm reports in any other state, a node whose heartbeat
    passes (or warns), an owner not known to be on a Swarm node (left to Consul's reaping).
    """
    by_id = {node.id: node for node in nodes}
    by_hostname = {node.hostname: node for node in by_id.values() if node.hostname}
    plans = []
    for owner in sorted(set(owned) - {self_node}):
        heartbeat = heartbeats.get(owner)
        if heartbeat is not None and heartbeat.status in {"passing", "warning"}:
            continue
        swarm_id = heartbeat.swarm_node_id if heartbeat is not None else ""
        node = by_id.get(swarm_id) if swarm_id else by_hostname.get(owner)
        if node is None:
            if swarm_id and by_id:
                plans.append(Reap(owner, f"Swarm node {swarm_id} left the swarm", owned[owner]))
            continue
        since = down_since.get(node.id)
        if node.state not in _LOST_STATES or since is None or now - since < grace:
            continue
        reason = f"Swarm node {node.hostname or node.id} {node.state} for {now - since:.0f} s"
        plans.append(Reap(owner, reason, owned[owner]))
    return tuple(plans)
