"""The node's liveness signal in Consul, and the Swarm leader's reaping of lost nodes.

`NodeHeartbeat` registers `registrator:<node>` (reaping.py builds it) on the Consul agent the
reconciler writes to, before anything else is registered, and beats its TTL check every
TTL/2 seconds; when Consul has lost it (restarted empty, or reaped it after an outage) the
next beat registers it again. A restarted agent uses the same service and check ids, so it
resumes the heartbeat instead of starting a new one; on a clean stop it beats once more, so a
restart has the whole TTL to come back.

`NodeReaper` runs on the Swarm leader after each full reconcile: it reads `GET /nodes`, what
the Consul agent holds and the heartbeats' check states, and deregisters what
`reaping.reap_plan` names. Any failed read means no action this time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from registrator.backends import ConsulAPI, DockerAPI
from registrator.consul import ConsulError
from registrator.docker import DockerError
from registrator.reaping import (
    heartbeat_check_id,
    heartbeat_output,
    heartbeat_registration,
    heartbeat_service_id,
    heartbeats_from_agent,
    owned_by_node,
    parse_nodes,
    reap_plan,
    track_down,
)

log = logging.getLogger(__name__)


class NodeHeartbeat:
    """One node's heartbeat service: `ttl` seconds, beaten every `ttl / 2`."""

    def __init__(
        self,
        consul: ConsulAPI,
        node: str,
        ttl: int,
        reap_after: int,
        holder: str,
        address: str = "",
        swarm_node_id: str = "",
    ) -> None:
        self.consul = consul
        self.node = node
        self.ttl = ttl
        self.holder = holder  # who beats, for the check output: agent version, host, pid
        self._body = heartbeat_registration(node, ttl, reap_after, address, swarm_node_id)
        self._failing = False  # the last beat did not reach Consul
        self._warned = False  # and that was said (once per failure, not per beat)

    @property
    def service_id(self) -> str:
        return heartbeat_service_id(self.node)

    @property
    def interval(self) -> float:
        return self.ttl / 2

    @property
    def failing(self) -> bool:
        """The last beat did not reach Consul (which may since have restarted empty)."""
        return self._failing

    async def register(self) -> bool:
        """(Re)register the heartbeat, passing; False if Consul did not take it."""
        try:
            await self.consul.register(self._body)
        except ConsulError as err:
            hint = ""
            if err.status in {401, 403}:
                # Every service aliases this heartbeat: without it they would all be critical.
                hint = (
                    " (the ACL token needs service:write on 'registrator' for the node "
                    "heartbeat; without it every service's node alias check is critical: grant "
                    "it, or set -node-ttl 0)"
                )
            self._failed(f"register node heartbeat {self.service_id}: {err}{hint}", err.transient)
            return False
        return await self.beat(register_if_missing=False)

    async def beat(self, stopping: bool = False, register_if_missing: bool = True) -> bool:
        """One heartbeat; registers the service again if Consul no longer knows the check."""
        output = heartbeat_output(self.holder, datetime.now(UTC), self.ttl, stopping)
        try:
            await self.consul.update_check(heartbeat_check_id(self.node), "passing", output)
        except ConsulError as err:
            if err.transient or not register_if_missing:
                self._failed(f"node heartbeat {self.service_id}: {err}", err.transient)
                return False
            log.warning(
                "node heartbeat %s was not in Consul (%s): registering it", self.service_id, err
            )
            return await self.register()
        if self._warned:
            log.info("node heartbeat %s beating again", self.service_id)
        self._failing = self._warned = False
        return True

    async def run(self) -> None:
        """Beat every TTL/2 until cancelled (the first beat is `register`'s)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.beat()

    async def deregister(self) -> None:
        try:
            await self.consul.deregister(self.service_id)
        except ConsulError as err:
            log.warning("could not deregister node heartbeat %s: %s", self.service_id, err)

    def _failed(self, message: str, transient: bool = False) -> None:
        # Consul being unreachable is the reconciler's to report (once per outage); anything
        # else is said here once, until a beat works again.
        if self._warned or transient:
            log.debug("%s", message)
        else:
            log.warning("%s", message)
            self._warned = True
        self._failing = True


class NodeReaper:
    """Deregisters the services of lost Swarm nodes; call `reap` only on the Swarm leader.

    `grace` is the seconds a node must have been seen `down` (Docker's `GET /nodes`,
    Status.State) before its services go.
    """

    def __init__(self, docker: DockerAPI, consul: ConsulAPI, node: str, grace: float) -> None:
        self.docker = docker
        self.consul = consul
        self.node = node
        self.grace = grace
        self._down_since: dict[str, float] = {}  # Swarm node id → monotonic time first seen lost
        self.reaped = 0  # services deregistered, for /metrics

    def forget(self) -> None:
        """No longer the leader: a later term starts every grace period afresh."""
        self._down_since.clear()

    async def reap(self) -> None:
        try:
            nodes = parse_nodes(await self.docker.nodes())
        except DockerError as err:
            log.debug("not reaping: cannot read Swarm nodes: %s", err)
            return
        now = time.monotonic()
        self._down_since = track_down(self._down_since, nodes, now)
        try:
            services: dict[str, dict[str, Any]] = await self.consul.services()
            checks = await self.consul.checks()
        except ConsulError as err:
            log.debug("not reaping: cannot read Consul: %s", err)
            return
        plans = reap_plan(
            nodes=nodes,
            down_since=self._down_since,
            now=now,
            grace=self.grace,
            heartbeats=heartbeats_from_agent(services, checks),
            owned=owned_by_node(services),
            self_node=self.node,
        )
        for plan in plans:
            log.warning(
                "node %s is lost (%s): deregistering its %d service(s)",
                plan.node,
                plan.reason,
                len(plan.service_ids),
            )
            for service_id in plan.service_ids:
                try:
                    await self.consul.deregister(service_id)
                except ConsulError as err:
                    log.warning(
                        "could not deregister %s of lost node %s: %s", service_id, plan.node, err
                    )
                    continue
                self.reaped += 1
                log.info(
                    "deregistered %s: node %s is lost",
                    service_id,
                    plan.node,
                    extra={"service_id": service_id, "reason": plan.reason},
                )
