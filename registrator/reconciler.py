"""Applies Plans: reads the truth from Docker, diffs it with what Consul holds, writes the rest.

Level-triggered: callers only say "this container may have changed" (`mark`) or "check
everything" (`full_reconcile`). Work on one container is serialised by a per-container lock;
different containers proceed concurrently. One service failing never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from registrator import checks as checks_mod
from registrator.connect import sidecar_id
from registrator.consul import ConsulClient, ConsulError
from registrator.containers import InspectError, image_exposed_ports, parse_container
from registrator.docker import DockerClient, DockerError
from registrator.model import (
    META_HASH,
    Check,
    Container,
    ContainerPort,
    HeldService,
    Plan,
    Service,
    SwarmService,
)
from registrator.payload import held_from_agent, held_from_service, payload_hash, registration
from registrator.planner import PlanContext, desired_services, keeps_registrations, plan_changes
from registrator.settings import DeregisterMode
from registrator.swarm import (
    is_vip_key,
    manager_node_id,
    parse_service,
    task_service_id,
    vip_container,
    vip_key,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

FULL_RECONCILE_CONCURRENCY = 16
# "swarm": a manager's service reads, which can fail (no quorum, a demoted node) while the
# rest of Docker answers; kept apart so one does not end the other's outage in the logs.
_BACKEND_NAMES = {"docker": "Docker", "consul": "Consul", "swarm": "Swarm service reads"}
_HEALTH_TO_CONSUL = {"healthy": "passing", "unhealthy": "critical"}


@dataclass
class Stats:
    """Counters the metrics endpoint and the benchmarks read."""

    events: int = 0
    container_reconciles: int = 0
    full_reconciles: int = 0
    registrations: int = 0
    deregistrations: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_full_seconds: float = 0.0
    last_event_lag: float = 0.0


class KeyedLock:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it.

    Containers come and go by the thousand on a busy host; a plain dict of locks would
    only grow.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


@dataclass
class _CachedInspect:
    state: str
    container: Container


class Reconciler:
    def __init__(
        self,
        docker: DockerClient,
        consul: ConsulClient,
        context: PlanContext,
        deregister_mode: DeregisterMode = DeregisterMode.ALWAYS,
        swarm_manager_id: str = "",
        in_swarm: bool = False,
    ) -> None:
        self.docker = docker
        self.consul = consul
        self.context = context
        self.deregister_mode = deregister_mode
        # The Swarm node id when this engine is a manager (only managers can read services).
        self.swarm_manager_id = swarm_manager_id
        # Whether the engine was in a swarm at startup; only then is its role re-read at every
        # resync (an engine that joins a swarm later is seen when registrator restarts), so a
        # plain Docker host pays one Docker call per full reconcile, not two.
        self.in_swarm = in_swarm or bool(swarm_manager_id)
        self.swarm_leader = False
        # False while the last full reconcile could not read Swarm's state: VIP registrations
        # are then left exactly as they are.
        self._swarm_readable = True
        # Swarm service id → what a manager said of it (None: no such service).
        self._swarm_services: dict[str, SwarmService | None] = {}
        self._swarm_stale: set[str] = set()  # changed since read: read again before use
        self._network_names: dict[str, str] = {}  # non-ingress network id → name
        self._known_networks: set[str] = set()  # every network id, ingress included
        self._image_ports: dict[str, tuple[ContainerPort, ...]] = {}
        self.stats = Stats()
        # container id → service id → what Consul holds for it (as far as we know).
        self.held: dict[str, dict[str, HeldService]] = {}
        # service id → the Service we registered, for check updates and script runners.
        self.registered: dict[str, Service] = {}
        self.synced = False  # the first full reconcile has completed
        self.retry_needed = False  # a transient failure left work undone
        self._locks = KeyedLock()
        self._dirty: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._inspect_cache: dict[str, _CachedInspect] = {}
        self._reported_problems: dict[str, frozenset[str]] = {}
        # service id → (payload hash, Consul's reason) of registrations Consul refused.
        self._rejections: dict[str, tuple[str, str]] = {}
        # check id → (status, output, time.monotonic() when sent) of the last update we sent.
        self._check_status: dict[str, tuple[str, str, float]] = {}
        # service id → (the Service its runner was started for, the runner).
        self._script_tasks: dict[str, tuple[Service, asyncio.Task[None]]] = {}
        self._full_lock = asyncio.Lock()
        # Containers written for since the current full reconcile listed Consul's services.
        self._applied_since_listing: set[str] = set()
        # Backends ("docker", "consul") that failed transiently and have not answered since.
        self._down: set[str] = set()

    # --- triggers -------------------------------------------------------------------------

    def mark(self, container_id: str) -> None:
        """Something happened to this container: reconcile it soon (coalesced, serialised)."""
        self._inspect_cache.pop(container_id, None)
        self._dirty.add(container_id)
        if container_id not in self._workers:
            self._workers[container_id] = asyncio.create_task(self._drain(container_id))

    async def _drain(self, container_id: str) -> None:
        try:
            while container_id in self._dirty:
                self._dirty.discard(container_id)
                await self.reconcile_container(container_id, force_inspect=True)
        finally:
            self._workers.pop(container_id, None)

    async def idle(self) -> None:
        """Wait until every marked container has been reconciled (for shutdown and tests)."""
        while self._workers:
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)

    def forget_inspects(self) -> None:
        """After a Docker reconnect: events may have been missed, so trust nothing cached."""
        self._inspect_cache.clear()

    # --- reconcile ------------------------------------------------------------------------

    async def reconcile_container(self, container_id: str, force_inspect: bool = True) -> None:
        async with self._locks.hold(container_id):
            await self._reconcile_locked(container_id, None, force_inspect)

    async def full_reconcile(self) -> bool:
        """Compare every container with everything this node owns in Consul and fix it.

        Returns False if Docker or Consul could not be read (nothing was changed then).
        """
        async with self._full_lock:
            started = time.monotonic()
            self._applied_since_listing.clear()
            try:
                listed = await self.docker.list_containers()
                entries = await self.consul.services()
            except DockerError as err:
                # Retried by the agent until it works: logged once per outage (transient).
                self._error("docker", f"full reconcile: cannot list containers: {err}", True)
                self.retry_needed = True
                return False
            except ConsulError as err:
                self._error("consul", f"full reconcile: cannot list Consul services: {err}", True)
                self.retry_needed = True
                return False
            self._answered("docker")
            self._answered("consul")
            self.retry_needed = False
            vip_keys = await self._refresh_swarm()

            fresh: dict[str, dict[str, HeldService]] = {}
            for entry in entries.values():
                held = held_from_agent(entry, self.context.node)
                if held is not None:
                    fresh.setdefault(held.container_id, {})[held.id] = held
            states = {str(item["Id"]): str(item.get("State", "")) for item in listed}
            container_ids = set(states) | set(fresh) | set(self.held) | vip_keys
            semaphore = asyncio.Semaphore(FULL_RECONCILE_CONCURRENCY)

            async def one(container_id: str) -> None:
                async with semaphore, self._locks.hold(container_id):
                    # An event-driven reconcile that wrote since the listing knows better than
                    # the listing; replacing its state would redo (and re-log) its writes.
                    if container_id not in self._applied_since_listing:
                        self.held[container_id] = dict(fresh.get(container_id, {}))
                    # A container missing from the list may have been created after it:
                    # inspect to tell "gone" from "new" instead of deregistering it.
                    state = states.get(container_id)
                    await self._reconcile_locked(container_id, state, force_inspect=state is None)

            await asyncio.gather(*(one(cid) for cid in container_ids))
            for container_id in [cid for cid, held in self.held.items() if not held]:
                self.held.pop(container_id, None)
            self.stats.full_reconciles += 1
            self.stats.last_full_seconds = time.monotonic() - started
            self.synced = True
            return not self.retry_needed

    async def _container(
        self, container_id: str, list_state: str | None, force_inspect: bool
    ) -> Container | None:
        cached = self._inspect_cache.get(container_id)
        # Exited/created containers need a look only if they hold services: -deregister
        # on-success needs the exit code, and a list taken just before the container started
        # still says "created" while an event has already registered it. If an inspect made
        # since disagrees with the list, the list is stale, so look instead of deregistering;
        # events drop that cache, so holding services is reason enough to look.
        if (
            list_state is not None
            and list_state not in {"running", "paused", "restarting"}
            and (cached is None or cached.state == list_state)
            and not self.held.get(container_id)
        ):
            self._inspect_cache.pop(container_id, None)
            return None
        # A container with a HEALTHCHECK is looked at again on every full reconcile: its health
        # is not in the list, and not every engine sends health events (Podman 4.3.1 sends one
        # per probe, some versions none), so a resync is what keeps the mirror right there.
        if (
            cached is not None
            and not force_inspect
            and cached.state == list_state
            and cached.container.health is None
        ):
            return cached.container
        document = await self.docker.inspect(container_id)
        if document is None:
            self._inspect_cache.pop(container_id, None)
            return None
        try:
            container = parse_container(document)
        except InspectError as err:
            self._error("docker", f"container {container_id[:12]}: {err}")
            return None
        state = _list_state(container)
        self._inspect_cache[container_id] = _CachedInspect(state, container)
        return container

    # --- Swarm services (managers only) ----------------------------------------------------

    def swarm_service_changed(self, service_id: str) -> None:
        """A service event: read the service again, and replan everything that depends on it."""
        if not self.swarm_manager_id:
            return
        self._swarm_stale.add(service_id)
        for container_id, cached in list(self._inspect_cache.items()):
            if task_service_id(cached.container) == service_id:
                self.mark(container_id)
        if self.context.swarm_vip:
            self.mark(vip_key(service_id))

    async def _refresh_swarm(self) -> set[str]:
        """Full reconcile: whether this engine is (still, or now) a Swarm manager; on a
        manager, one read of every service (fresher and cheaper than one read per task), the
        leadership, and the networks a VIP may be registered on.

        Returns the VIP keys to reconcile. A failed read keeps what was known and freezes the
        VIP registrations as they are: a stale port beats dropping registrations over a
        hiccup (a quorum loss, say), and the next resync reads again.
        """
        if not self.in_swarm:
            return set()
        try:
            manager_id = manager_node_id(await self.docker.info())
            if manager_id != self.swarm_manager_id:
                self._swarm_services.clear()
            self.swarm_manager_id = self._role_changed(
                "a Swarm manager", self.swarm_manager_id, manager_id, "reading Swarm services"
            )
            if not manager_id:
                self.swarm_leader = False
                self._swarm_readable = True
                return self._vip_keys_held()  # a demoted leader removes what it wrote
            services = {}
            for document in await self.docker.services():
                try:
                    service = parse_service(document)
                except InspectError as err:
                    self._error("swarm", f"GET /services: {err}")
                    continue
                services[service.id] = service
            if self.context.swarm_vip:
                status = (await self.docker.node(manager_id)).get("ManagerStatus")
                leader = isinstance(status, dict) and status.get("Leader") is True
                self.swarm_leader = self._role_changed(
                    "the Swarm leader", self.swarm_leader, leader, "writing VIP registrations"
                )
                await self._refresh_networks()
        except DockerError as err:
            self._error("swarm", f"full reconcile: cannot read Swarm state: {err}", True)
            self.retry_needed = True
            self._swarm_readable = False
            return set()
        self._answered("swarm")
        self._swarm_readable = True
        self._swarm_services = dict(services)
        self._swarm_stale.clear()
        if not self.context.swarm_vip:
            return set()
        return {vip_key(service_id) for service_id in services} | self._vip_keys_held()

    @staticmethod
    def _role_changed(role: str, before: T, now: T, duty: str) -> T:
        """Log once when this engine gains or loses `role` (and with it `duty`)."""
        if bool(now) != bool(before):
            log.warning(
                "this engine %s %s: %s %s",
                "is now" if now else "is no longer",
                role,
                "starts" if now else "stops",
                duty,
            )
        return now

    def _vip_keys_held(self) -> set[str]:
        return {key for key in self.held if is_vip_key(key)}

    async def _refresh_networks(self) -> None:
        usable, known = {}, set()
        for network in await self.docker.networks():
            network_id, name = network.get("Id"), network.get("Name")
            if not isinstance(network_id, str) or not isinstance(name, str):
                continue
            known.add(network_id)
            if network.get("Ingress") is not True:
                usable[network_id] = name
        self._network_names, self._known_networks = usable, known

    async def _swarm_service(self, service_id: str) -> SwarmService | None:
        """What a manager says of one service; cached until an event or a resync."""
        known = service_id in self._swarm_services
        if known and service_id not in self._swarm_stale:
            return self._swarm_services[service_id]
        try:
            document = await self.docker.service(service_id)
            service = parse_service(document) if document is not None else None
        except InspectError as err:
            self._error("swarm", f"service {service_id[:12]}: {err}")
            service = None
        except DockerError as err:
            if not known:
                raise
            # Keep the last answer: dropping a task's routing-mesh port over one failed
            # read would deregister it until the next read works.
            self._error("swarm", f"service {service_id[:12]}: {err}", err.transient)
            self.retry_needed = True
            return self._swarm_services[service_id]
        self._answered("swarm")
        self._swarm_services[service_id] = service
        self._swarm_stale.discard(service_id)
        return service

    async def _with_swarm_service(self, container: Container | None) -> Container | None:
        if container is None or not self.swarm_manager_id or not container.running:
            return container
        service_id = task_service_id(container)
        if not service_id:
            return container
        return replace(container, swarm_service=await self._swarm_service(service_id))

    async def _vip_container(self, key: str) -> Container | None:
        """-swarm-vip: the service as one container at its VIPs, if this node should write it.

        Only the Swarm leader's agent writes VIP registrations, so several managers running
        registrator do not each register every service; an agent that is not (or no longer)
        the leader gets None here and so removes any it still holds.
        """
        if not (self.context.swarm_vip and self.swarm_manager_id and self.swarm_leader):
            return None
        service = await self._swarm_service(key.split(":", 1)[1])
        if service is None or service.endpoint_mode != "vip":
            return None
        if not self._known_networks.issuperset(service.virtual_ips):
            await self._refresh_networks()  # a network created since the last listing
        return vip_container(service, self._network_names, await self._image_exposed(service))

    async def _image_exposed(self, service: SwarmService) -> tuple[ContainerPort, ...]:
        """The ports the service's image EXPOSEs, if this engine has the image."""
        if not service.image:
            return ()
        if service.image not in self._image_ports:
            document = await self.docker.image(service.image)
            self._image_ports[service.image] = image_exposed_ports(document)
        return self._image_ports[service.image]

    async def _reconcile_locked(
        self, container_id: str, list_state: str | None, force_inspect: bool
    ) -> None:
        self.stats.container_reconciles += 1
        if is_vip_key(container_id) and not self._swarm_readable:
            return  # frozen until Swarm answers again (see _refresh_swarm)
        try:
            if is_vip_key(container_id):
                container = await self._vip_container(container_id)
            else:
                container = await self._with_swarm_service(
                    await self._container(container_id, list_state, force_inspect)
                )
        except DockerError as err:
            self._error(
                "docker", f"container {container_id[:12]}: cannot read it: {err}", err.transient
            )
            self.retry_needed = True
            return
        held = self.held.get(container_id, {})
        touched = set(held)
        desired: tuple[Service, ...] = ()
        keep = False
        if container is not None:
            keep = keeps_registrations(container, self.deregister_mode)
            if not keep:
                result = desired_services(container, self.context)
                desired, taken = self._without_taken_ids(container_id, result.services)
                self._report_problems(container, [str(p) for p in result.problems] + taken)
        else:
            self._reported_problems.pop(container_id, None)
        plan = plan_changes(desired, held, keep)
        if not plan.empty:
            await self._apply(container_id, container, plan)
        for service in desired:
            if service.id in self.held.get(container_id, {}):
                self.registered[service.id] = service
        if container is not None:
            await self._mirror_health(container, desired)
        self._sync_script_runners(touched | {service.id for service in desired})

    def _without_taken_ids(
        self, container_id: str, services: tuple[Service, ...]
    ) -> tuple[tuple[Service, ...], list[str]]:
        """Drop services whose id another container already holds (first one keeps it).

        Two containers with the same SERVICE_ID would otherwise take the registration from
        each other on every reconcile. The loser registers once the holder lets go.
        """
        kept: list[Service] = []
        problems: list[str] = []
        own = self.held.get(container_id, {})
        for service in services:
            if service.id in own:
                # Already ours (the steady state): no other container can hold it, so the
                # scan over every container below is needed only for ids new to this one.
                kept.append(service)
                continue
            holder = next(
                (
                    other
                    for other, held in self.held.items()
                    if other != container_id and service.id in held
                ),
                None,
            )
            if holder is None:
                kept.append(service)
                continue
            holder_name = self.registered.get(service.id)
            problems.append(
                f"container {service.container_name}: service id {service.id!r}: already "
                f"registered for container "
                f"{holder_name.container_name if holder_name else holder[:12]}; skipped"
            )
        return tuple(kept), problems

    async def _apply(self, container_id: str, container: Container | None, plan: Plan) -> None:
        held_before = dict(self.held.get(container_id, {}))
        held = self.held.setdefault(container_id, {})
        name = container.name if container else container_id[:12]
        for service in plan.register:
            body = registration(service)
            rejected = self._rejections.get(service.id)
            if rejected is not None and rejected[0] == body["Meta"][META_HASH]:
                continue  # Consul refused exactly this before; resending cannot help.
            reason = "changed" if service.id in held else "new"
            try:
                await self.consul.register(body)
            except ConsulError as err:
                if err.transient:
                    self._error("consul", f"register {service.id}: {err}", transient=True)
                    self.retry_needed = True
                else:
                    self._reject(service, err)
                continue
            self._answered("consul")
            self._rejections.pop(service.id, None)
            await self._drop_orphaned_sidecar(self.registered.get(service.id), service)
            held[service.id] = held_from_service(service)
            for check in service.checks:
                self._check_status.pop(check.check_id, None)
            self.stats.registrations += 1
            log.info(
                "registered %s (service %s at %s:%d) for container %s: %s",
                service.id,
                service.name,
                service.address,
                service.port,
                name,
                reason,
                extra={"container": name, "service_id": service.id, "reason": reason},
            )
        for service_id in plan.deregister:
            try:
                await self.consul.deregister(service_id)
            except ConsulError as err:
                self._error("consul", f"deregister {service_id}: {err}", err.transient)
                self.retry_needed = True
                continue
            self._answered("consul")
            held.pop(service_id, None)
            old = self.registered.pop(service_id, None)
            for check in old.checks if old else ():
                self._check_status.pop(check.check_id, None)
            self._rejections.pop(service_id, None)
            self.stats.deregistrations += 1
            why = "container gone" if container is None else _state_word(container)
            log.info(
                "deregistered %s for container %s: %s",
                service_id,
                name,
                why,
                extra={"container": name, "service_id": service_id, "reason": why},
            )
        if not held:
            self.held.pop(container_id, None)
        if held_before != held:
            # A write that finished after a full reconcile listed Consul is not in that
            # listing (checked here, at the end, to cover writes started before the listing).
            self._applied_since_listing.add(container_id)

    async def _drop_orphaned_sidecar(self, old: Service | None, new: Service) -> None:
        """Consul keeps a sidecar when its parent is re-registered without one; remove it."""
        if old is None or not old.connect or "SidecarService" not in old.connect:
            return
        if new.connect and "SidecarService" in new.connect:
            return
        try:
            await self.consul.deregister(sidecar_id(new.id))
        except ConsulError as err:
            self._error("consul", f"deregister sidecar of {new.id}: {err}")

    # --- checks driven by the agent -------------------------------------------------------

    async def _mirror_health(self, container: Container, services: Iterable[Service]) -> None:
        status = _HEALTH_TO_CONSUL.get(container.health or "")
        if status is None:
            return  # "starting": keep the initial status the check was registered with
        for service in services:
            for check in service.checks:
                if check.check_id.endswith(f":{checks_mod.DOCKER_HEALTH_KIND}"):
                    output = container.health_output or f"Docker reports {container.health}"
                    last = self._check_status.get(check.check_id)
                    if last is not None and last[0] == status:
                        # Same health, only a newer probe's output: not worth a write. Podman
                        # sends an event per probe; this keeps it from costing one each.
                        output = last[1]
                    await self.update_check(
                        check.check_id, status, output, refresh_after=_refresh_after(check)
                    )

    async def update_check(
        self, check_id: str, status: str, output: str, refresh_after: float | None = None
    ) -> None:
        """Report a check result, skipping writes that would change nothing.

        Every update also resets the TTL of the check in Consul; a TTL check that hears
        nothing expires to critical. So an unchanged result is sent again once
        `refresh_after` seconds have passed since the last write (never, if None).
        """
        last = self._check_status.get(check_id)
        if (
            last is not None
            and last[:2] == (status, output)
            and (refresh_after is None or time.monotonic() - last[2] < refresh_after)
        ):
            return
        try:
            await self.consul.update_check(check_id, status, output)
        except ConsulError as err:
            self._error("consul", f"update check {check_id}: {err}", err.transient)
            return
        self._answered("consul")
        self._check_status[check_id] = (status, output, time.monotonic())

    def _sync_script_runners(self, service_ids: Iterable[str]) -> None:
        """Start, restart or stop the script runners of the services one reconcile touched.

        Only those: scanning every registered service on each reconcile would make a full
        reconcile quadratic in the number of containers.
        """
        for service_id in service_ids:
            service = self.registered.get(service_id)
            wanted = service if service is not None and service.script else None
            running = self._script_tasks.get(service_id)
            if running is not None and running[0] == wanted:
                continue
            if running is not None:
                self._script_tasks.pop(service_id)[1].cancel()
            if wanted is not None:
                task = asyncio.create_task(self._run_script(wanted))
                self._script_tasks[service_id] = (wanted, task)

    async def _run_script(self, service: Service) -> None:
        check = next(c for c in service.checks if c.check_id.endswith(f":{checks_mod.SCRIPT_KIND}"))
        interval = service.script_interval or checks_mod.duration_seconds(
            checks_mod.DEFAULT_INTERVAL
        )
        refresh_after = _refresh_after(check)
        try:
            command = shlex.split(service.script)
        except ValueError as err:
            await self.update_check(check.check_id, "critical", f"cannot parse script: {err}")
            return
        while True:
            try:
                result = await self.docker.exec_run(
                    service.container_id,
                    command,
                    timeout=service.script_timeout or checks_mod.SCRIPT_TIMEOUT_SECONDS,
                )
                status = {0: "passing", 1: "warning"}.get(result.exit_code, "critical")
                await self.update_check(check.check_id, status, result.output, refresh_after)
            except DockerError as err:
                await self.update_check(
                    check.check_id, "critical", f"exec failed: {err}", refresh_after
                )
            await asyncio.sleep(interval)

    async def heartbeat_ttl(self) -> None:
        """-ttl: keep every service's registrator heartbeat check passing."""
        for service in list(self.registered.values()):
            for check in service.checks:
                if check.check_id.endswith(f":{checks_mod.TTL_HEARTBEAT_KIND}"):
                    self._check_status.pop(check.check_id, None)
                    await self.update_check(check.check_id, "passing", "registrator is running")

    async def close(self) -> None:
        tasks = [task for _, task in self._script_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._script_tasks.clear()

    async def drain(self, container_id: str) -> None:
        """Put the container's services in maintenance: it is about to stop serving."""
        for service_id in sorted(self.held.get(container_id, {})):
            try:
                await self.consul.service_maintenance(
                    service_id, True, "registrator: container is stopping"
                )
                log.info("drained %s: container is stopping", service_id)
            except ConsulError as err:
                self._error("consul", f"maintenance for {service_id}: {err}")

    async def undrain_if_running(self, container_id: str) -> None:
        """The stop signal did not stop the container: take its services out of maintenance."""
        async with self._locks.hold(container_id):
            container = await self._container(container_id, None, force_inspect=True)
            if container is None or not container.running:
                return
            for service_id in sorted(self.held.get(container_id, {})):
                try:
                    await self.consul.service_maintenance(service_id, False, "")
                    log.info("%s: container survived its stop signal; maintenance off", service_id)
                except ConsulError as err:
                    self._error("consul", f"maintenance off for {service_id}: {err}")

    async def deregister_all(self) -> None:
        """Shutdown with -deregister-on-exit: remove every service this node owns."""
        for container_id, held in list(self.held.items()):
            await self._apply(container_id, None, Plan(deregister=tuple(sorted(held))))

    def owned_service_ids(self) -> list[str]:
        return sorted(sid for held in self.held.values() for sid in held)

    # --- reporting ------------------------------------------------------------------------

    def _report_problems(self, container: Container, problems: list[str]) -> None:
        """Log a container's metadata problems once per change, not on every resync."""
        current = frozenset(problems)
        if self._reported_problems.get(container.id) == current:
            return
        self._reported_problems[container.id] = current
        for problem in sorted(current):
            log.warning("%s", problem)

    def _reject(self, service: Service, err: ConsulError) -> None:
        message = str(err)
        self.stats.errors["consul_rejected"] += 1
        previous = self._rejections.get(service.id)
        self._rejections[service.id] = (payload_hash(service), message)
        if previous is None or previous[1] != message:
            log.warning(
                "Consul rejected service %s of container %s; it stays unregistered until "
                "its labels change: %s",
                service.id,
                service.container_name,
                message,
            )

    def _error(self, kind: str, message: str, transient: bool = False) -> None:
        """Count and log a failure; transient ones once per outage, not once per retry."""
        self.stats.errors[kind] += 1
        if not transient:
            log.error("%s", message)
        elif kind in self._down:
            log.debug("%s", message)  # still the same outage: said so already
        else:
            self._down.add(kind)
            log.error(
                "%s; %s looks unreachable: retrying quietly until it answers",
                message,
                _BACKEND_NAMES.get(kind, kind),
            )

    def _answered(self, kind: str) -> None:
        """A call to `kind` worked: end its outage, if there was one, with one line."""
        if kind in self._down:
            self._down.discard(kind)
            log.info("%s reachable again", _BACKEND_NAMES.get(kind, kind))

    @property
    def consul_up(self) -> bool:
        """False from a transient Consul failure until the next call that works."""
        return "consul" not in self._down


def _refresh_after(check: Check) -> float | None:
    """Resend an unchanged result to a TTL check after a third of its TTL."""
    ttl = checks_mod.duration_seconds(str(check.fields.get("TTL", "")))
    return ttl / 3 if ttl > 0 else None


def _state_word(container: Container) -> str:
    if container.paused:
        return "paused"
    if container.restarting:
        return "restarting"
    if container.running:
        return "running"
    return f"exited ({container.exit_code})"


def _list_state(container: Container) -> str:
    """The word `docker ps` shows in State, to compare a cached inspect with a fresh list."""
    if container.paused:
        return "paused"
    if container.restarting:
        return "restarting"
    return "running" if container.running else "exited"
