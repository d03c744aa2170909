"""The agent's lifecycle: wait for Docker and Consul, follow events, resync, shut down.

The event stream (event_stream.py) survives reconnects; each new subscription asks for a full
reconcile, because events may have been missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from registrator import __version__
from registrator.addresses import AddressChoice, choose_default_address
from registrator.backends import ConsulAPI, DockerAPI
from registrator.consul import ConsulError
from registrator.containers import as_dict
from registrator.docker import DockerError
from registrator.event_stream import EventStream
from registrator.events import event_container_id, event_service_id, kill_signal
from registrator.heap import trim_heap
from registrator.hostnet import host_address
from registrator.node_heartbeat import NodeHeartbeat, NodeReaper
from registrator.planner import PlanContext
from registrator.reconciler import Reconciler
from registrator.settings import Settings
from registrator.status import Status
from registrator.swarm import in_swarm, manager_node_id
from registrator.swarm_view import SwarmView
from registrator.timing import Timing

log = logging.getLogger(__name__)

T = TypeVar("T")


class StartupError(Exception):
    """Docker or Consul never answered within -retry-attempts."""


@dataclass(frozen=True)
class Identity:
    node: str
    default_address: str
    docker_version: str
    consul_node: str
    address: AddressChoice = field(default_factory=AddressChoice)


def _hint(err: DockerError | ConsulError) -> str:
    if isinstance(err, ConsulError) and err.status in {401, 403}:
        return (
            " (Consul refused the ACL token: check CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE "
            "and that its policy grants agent:read and service:write)"
        )
    return ""


def plan_context(
    settings: Settings,
    docker_info: dict[str, Any],
    consul_self: dict[str, Any],
    docker_version: str = "",
    host: str = "",
) -> tuple[Identity, PlanContext]:
    """Who we are and how to plan, from settings and what Docker and Consul said at startup;
    `host` is the host's primary address when the agent runs in its network namespace."""
    node = settings.node or str(docker_info.get("Name") or "")
    if not node:
        raise StartupError("Docker info has no Name; set -node or REGISTRATOR_NODE")
    swarm = as_dict(docker_info.get("Swarm"))
    member = as_dict(consul_self.get("Member"))
    # What "the host's address" is when a port is published on all interfaces: see
    # registrator.addresses for the chain. Never a hostname lookup: that gave gliderlabs
    # users 127.0.1.1.
    swarm_address = str(swarm.get("NodeAddr") or "") if in_swarm(docker_info) else ""
    address = choose_default_address(
        settings.ip, swarm_address, str(member.get("Addr") or ""), host
    )
    default_address = address.address
    identity = Identity(
        node=node,
        default_address=default_address,
        docker_version=docker_version,
        consul_node=str(as_dict(consul_self.get("Config")).get("NodeName") or ""),
        address=address,
    )
    return identity, PlanContext(node, default_address, settings)


def address_warnings(choice: AddressChoice, internal: bool) -> list[str]:
    """What to say once at startup about the default address (see registrator.addresses)."""
    if choice.address:
        return []
    passed = "; ".join(choice.skipped) or "no Swarm or Consul agent address"
    needs = "host-network containers" if internal else "published ports and host-network containers"
    return [
        f"no address to register {needs} at ({passed}, and the agent does not run in the "
        "host's network namespace): they are not registered until -ip (REGISTRATOR_IP) gives "
        "the host's address"
    ]


def _address_origin(choice: AddressChoice) -> str:
    if not choice.address:
        return ""
    passed = "".join(f"; {note}, not used" for note in choice.skipped)
    return f" (the {choice.source}{passed})"


def swarm_notes(settings: Settings, docker_info: dict[str, Any]) -> list[str]:
    """What this node cannot do in a swarm, to say once at startup."""
    if not in_swarm(docker_info):
        return (
            ["-swarm-vip: this engine is not in a swarm; the option has no effect"]
            if (settings.swarm_vip)
            else []
        )
    if manager_node_id(docker_info):
        return []
    notes = []
    if settings.swarm_vip:
        notes.append(
            "-swarm-vip on a Swarm worker: workers cannot read services, so this node's Swarm "
            "tasks are left to the VIP registrations the leader's agent writes (tasks of "
            "dnsrr services on this node are not registered)"
        )
    elif not settings.internal:
        notes.append(
            "Swarm worker: ports published through the routing mesh (ingress) cannot be read "
            "here (services are visible to managers only), so tasks on this node are "
            "registered only for host-mode published ports; use -internal to register task "
            "addresses instead"
        )
    return notes


class Agent:
    def __init__(
        self,
        settings: Settings,
        docker: DockerAPI,
        consul: ConsulAPI,
        timing: Timing | None = None,
    ) -> None:
        self.settings = settings
        self.docker = docker
        self.consul = consul
        self.timing = timing or Timing()
        # Whether Docker and Consul answer, shared with the reconciler: /health reads it.
        self.status = Status()
        self.reconciler: Reconciler | None = None
        self.identity: Identity | None = None
        self._full_requested = asyncio.Event()
        self.events = EventStream(docker, self.status, self.timing)
        self._background: set[asyncio.Task[None]] = set()
        self.heartbeat: NodeHeartbeat | None = None
        self.reaper: NodeReaper | None = None

    @property
    def docker_ok(self) -> bool:
        return self.status.up("docker")

    @property
    def consul_ok(self) -> bool:
        return self.status.up("consul")

    @property
    def ready(self) -> bool:
        return bool(
            self.reconciler and self.reconciler.synced and self.docker_ok and self.consul_ok
        )

    async def _startup_call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry `call` per -retry-attempts/-retry-interval, logging once per state change."""
        attempts = self.settings.retry_attempts
        interval = self.settings.retry_interval / 1000
        tried = 0
        while True:
            try:
                return await call()
            except (DockerError, ConsulError) as err:
                if not err.transient:
                    # A 4xx (a refused ACL token, an API too old) will not change by waiting.
                    raise StartupError(f"{what}: {err}{_hint(err)}") from err
                tried += 1
                if attempts >= 0 and tried > attempts:
                    raise StartupError(f"{what}: {err}") from err
                if tried == 1:
                    log.warning("waiting for %s: %s (retrying every %.1f s)", what, err, interval)
                await self.timing.sleep(interval)

    async def start(self) -> Identity:
        docker_version = await self._startup_call(
            f"Docker at {self.docker.host}", self.docker.negotiate
        )
        info = await self._startup_call("Docker info", self.docker.info)
        self.status.answered("docker")
        consul_self = await self._startup_call(
            f"Consul at {self.consul.endpoint}", self.consul.agent_self
        )
        self.status.answered("consul")
        self.identity, context = plan_context(self.settings, info, consul_self, docker_version)
        if not self.identity.default_address:
            # Only now: reading the host's address costs a GET /networks that a locked-down
            # socket proxy may not allow, and most deployments never get this far.
            self.identity, context = plan_context(
                self.settings, info, consul_self, docker_version, await host_address(self.docker)
            )
        for warning in address_warnings(self.identity.address, self.settings.internal):
            log.warning("%s", warning)
        node, default_address = self.identity.node, self.identity.default_address
        swarm = SwarmView(
            self.docker,
            self.status,
            self.settings.swarm_vip,
            manager_node_id(info),
            in_swarm(info),
            # The leader's agent reaps lost nodes (-swarm-reap-after), so it needs leadership.
            watch_leader=self.settings.swarm_reap_after > 0,
        )
        self.reconciler = Reconciler(
            self.docker, self.consul, context, swarm, status=self.status, timing=self.timing
        )
        self.reconciler.on_consul_state_lost = self.request_full_reconcile
        self._node_liveness(info)
        for note in swarm_notes(self.settings, info):
            log.warning("%s", note)
        log.info(
            "started: node %s, Docker %s at %s, Consul at %s (node %s), default address %s%s",
            node,
            docker_version,
            self.docker.host,
            self.consul.endpoint,
            self.identity.consul_node,
            default_address or "(none)",
            _address_origin(self.identity.address),
        )
        return self.identity

    def _node_liveness(self, info: dict[str, Any]) -> None:
        """-node-ttl and -swarm-reap-after: this node's heartbeat, the leader's reaper."""
        assert self.identity is not None
        node = self.identity.node
        if self.settings.node_ttl:
            holder = (
                f"registrator {__version__} on node {node} "
                f"(host {socket.gethostname()}, pid {os.getpid()})"
            )
            self.heartbeat = NodeHeartbeat(
                self.consul,
                node,
                self.settings.node_ttl,
                self.settings.node_reap_after,
                holder,
                self.identity.default_address,
                str(as_dict(info.get("Swarm")).get("NodeID") or "") if in_swarm(info) else "",
            )
        if self.settings.swarm_reap_after and in_swarm(info):
            self.reaper = NodeReaper(self.docker, self.consul, node, self.settings.swarm_reap_after)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then finish in-flight work and return."""
        if self.reconciler is None:
            await self.start()
        assert self.reconciler is not None
        if self.heartbeat is not None:
            # Before any service that aliases it: an alias on a missing service is critical.
            await self.heartbeat.register()
        tasks = [
            asyncio.create_task(
                self.events.follow(self._subscribed, self._on_event), name="events"
            ),
            asyncio.create_task(self._full_reconciles(), name="reconcile"),
        ]
        if self.settings.resync > 0:
            tasks.append(asyncio.create_task(self._resync_timer(), name="resync"))
        if self.settings.ttl > 0:
            tasks.append(asyncio.create_task(self._ttl_heartbeats(), name="ttl"))
        if self.heartbeat is not None:
            tasks.append(asyncio.create_task(self.heartbeat.run(), name="node-heartbeat"))
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopped and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stopped.cancel()
            for task in [*tasks, *self._background]:
                task.cancel()
            await asyncio.gather(*tasks, *self._background, return_exceptions=True)
            try:
                await asyncio.wait_for(self.reconciler.idle(), timeout=self.timing.shutdown_idle)
                if self.settings.deregister_on_exit:
                    await asyncio.wait_for(
                        self.reconciler.deregister_all(), timeout=self.timing.shutdown_deregister
                    )
                if self.heartbeat is not None:
                    # A restart then has the whole TTL to beat again; a removal is final.
                    await asyncio.wait_for(
                        self.heartbeat.deregister()
                        if self.settings.deregister_on_exit
                        else self.heartbeat.beat(stopping=True, register_if_missing=False),
                        timeout=self.timing.shutdown_deregister,
                    )
            except TimeoutError:
                log.warning("shutdown: in-flight work did not finish in time; exiting anyway")
            await self.reconciler.close()

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drain(self, container_id: str, signal: str) -> None:
        assert self.reconciler is not None
        window = await self.reconciler.drain(container_id, signal)
        if window is None:
            return
        # A trapped or ignored signal leaves the container running past its stop timeout;
        # do not leave it drained.
        await self.timing.sleep(window * self.timing.drain_scale)
        await self.reconciler.undrain_if_running(container_id)

    def request_full_reconcile(self) -> None:
        self._full_requested.set()

    async def _full_reconciles(self) -> None:
        """Serial full reconciles on request; retried with bounded backoff after failures."""
        assert self.reconciler is not None
        backoff = self.timing.backoff(self.timing.reconcile_backoff)
        while True:
            await self._full_requested.wait()
            self._full_requested.clear()
            if self.heartbeat is not None and self.heartbeat.failing:
                # Consul may be back empty: the heartbeat first, or the services registered
                # now alias a missing service (critical) until the next beat.
                await self.heartbeat.beat()
            ok = await self.reconciler.full_reconcile()
            # The lists it decoded are garbage now; see registrator/heap.py.
            trim_heap()
            if self.reaper is not None:
                if self.reconciler.swarm.leader:
                    await self.reaper.reap()
                else:
                    self.reaper.forget()
            if ok:
                backoff.reset()
                continue
            # Backoff, cut short by a new request (the resync timer, a Docker reconnect): a
            # failure must not push the next scheduled resync further out.
            try:
                await asyncio.wait_for(self._full_requested.wait(), backoff.next())
            except TimeoutError:
                self._full_requested.set()

    async def _resync_timer(self) -> None:
        while True:
            await self.timing.sleep(self.settings.resync)
            self.request_full_reconcile()

    async def _ttl_heartbeats(self) -> None:
        assert self.reconciler is not None
        while True:
            await self.reconciler.heartbeat_ttl()
            await self.timing.sleep(self.settings.ttl_refresh)

    def _subscribed(self) -> None:
        assert self.reconciler is not None
        self.reconciler.forget_inspects()
        self.request_full_reconcile()

    def _on_event(self, event: dict[str, Any]) -> None:
        assert self.reconciler is not None
        service_id = event_service_id(event)
        if service_id:
            self.reconciler.swarm_service_changed(service_id)
        container_id = event_container_id(event)
        if container_id:
            signal = kill_signal(event)
            if self.settings.drain and signal is not None:
                self._spawn(self._drain(container_id, signal))
            self.reconciler.mark(container_id)
