"""Applies Plans: reads the truth from Docker, asks the planner, writes what it says to Consul.

Level-triggered: callers only say "this container may have changed" (`mark`) or "check
everything" (`full_reconcile`). Work on one container is serialised (scheduler.py); different
containers proceed concurrently. One service failing never stops the others. Every decision is
plan.py's; this module only reads, calls it and applies the result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from registrator.backends import ConsulAPI, DockerAPI
from registrator.check_runner import CheckRunner
from registrator.consul import ConsulError
from registrator.docker import DockerError
from registrator.inspects import Inspects
from registrator.ledger import Ledger
from registrator.model import META_HASH, Container, HeldService, Plan, Service
from registrator.payload import (
    foreign_holder,
    held_from_agent,
    held_from_service,
    payload_hash,
    registration,
)
from registrator.plan import (
    Maintenance,
    Outcome,
    drain_window,
    drains_on,
    keep_maintenance,
    maintenance_reasons,
    plan_container,
    plan_drain,
    plan_shutdown,
    plan_stale_drains,
    plan_undrain,
)
from registrator.planner import PlanContext
from registrator.scheduler import Scheduler
from registrator.status import Stats, Status
from registrator.swarm import is_vip_key, vip_key
from registrator.swarm_view import SwarmView
from registrator.timing import Backoff, Timing

log = logging.getLogger(__name__)

# 4, not 16: each container in flight holds its inspect document and requests, and at 500
# containers the cold start's RSS (and its peak) was 0.6-0.9 MB lower with 4 (the transients of
# 16 scattered the kept objects over more memory); docs/performance.md, "Memory, second pass".
FULL_RECONCILE_CONCURRENCY = 4


class Reconciler:
    def __init__(
        self,
        docker: DockerAPI,
        consul: ConsulAPI,
        context: PlanContext,
        swarm_manager_id: str = "",
        in_swarm: bool = False,
        status: Status | None = None,
        timing: Timing | None = None,
    ) -> None:
        self.docker = docker
        self.consul = consul
        self.context = context
        self.status = status or Status()
        self.swarm = SwarmView(
            docker,
            self.status,
            context.settings.swarm_vip,
            swarm_manager_id,
            in_swarm,
            # The leader's agent reaps lost nodes (-swarm-reap-after), so it needs leadership.
            watch_leader=context.settings.swarm_reap_after > 0,
        )
        self.timing = timing or Timing()
        self.checks = CheckRunner(docker, consul, self.status, self.timing)
        self.checks.on_unknown_check = self._consul_forgot
        self.checks.on_container_gone = self.mark
        self.work = _scheduler(self)
        self.inspects = Inspects(docker, self.status)
        self.ledger = Ledger()
        self.synced = False  # the first full reconcile has completed
        self._reported_problems: dict[str, frozenset[str]] = {}
        self._full_lock = asyncio.Lock()
        # Called when Consul turns out to have lost this node's registrations (the agent
        # asks for a full reconcile, which re-registers them); set by the Agent.
        self.on_consul_state_lost: Callable[[], None] = lambda: None
        self._state_lost_said = False  # until the next full reconcile lists Consul
        # Containers whose reconcile left a write undone (Consul down, an ACL refusal): each
        # is marked again after its own backoff, so -resync 0 still converges.
        self._unfinished: set[str] = set()
        self._retries: dict[str, tuple[Backoff, asyncio.Task[None]]] = {}
        # Containers with a mirrored HEALTHCHECK: marked again before its TTL runs out.
        self._refreshes: dict[str, asyncio.Task[None]] = {}
        # `--network container:X`: X's id → the containers sharing its stack.
        self._stack_dependents: dict[str, set[str]] = {}
        self._stack_owner: dict[str, str] = {}  # the reverse: container → X's id

    # --- what others read -----------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        return self.status.stats

    @property
    def held(self) -> dict[str, dict[str, HeldService]]:
        return self.ledger.held

    @property
    def registered(self) -> dict[str, Service]:
        return self.ledger.registered

    @property
    def retry_needed(self) -> bool:
        """A transient failure left work undone."""
        return self.status.retry_needed

    @property
    def consul_up(self) -> bool:
        """False from a transient Consul failure until the next call that works."""
        return self.status.up("consul")

    def owned_service_ids(self) -> list[str]:
        return self.ledger.owned_service_ids()

    # --- triggers -------------------------------------------------------------------------

    def mark(self, container_id: str) -> None:
        """Something happened to this container: reconcile it soon (coalesced, serialised),
        and the containers sharing its network stack (they are reached at its address)."""
        self.inspects.forget(container_id)
        self.work.mark(container_id)
        for dependent in sorted(self._stack_dependents.get(container_id, ())):
            self.work.mark(dependent)

    async def idle(self) -> None:
        """Wait until every marked container has been reconciled (for shutdown and tests)."""
        await self.work.idle()

    def forget_inspects(self) -> None:
        """After a Docker reconnect: events may have been missed, so trust nothing cached."""
        self.inspects.clear()

    def swarm_service_changed(self, service_id: str) -> None:
        """A service event: read the service again, and replan everything that depends on it."""
        if not self.swarm.changed(service_id):
            return
        for container_id in self.inspects.tasks_of(service_id):
            self.mark(container_id)
        if self.context.settings.swarm_vip:
            self.mark(vip_key(service_id))

    # --- reconcile ------------------------------------------------------------------------

    async def reconcile_container(self, container_id: str, force_inspect: bool = True) -> None:
        async with self.work.locks.hold(container_id):
            await self._reconcile_locked(container_id, None, force_inspect)

    async def full_reconcile(self) -> bool:
        """Compare every container with everything this node owns in Consul and fix it.

        Returns False if Docker or Consul could not be read (nothing was changed then).
        """
        async with self._full_lock:
            started = asyncio.get_running_loop().time()
            self.ledger.applied_since_listing.clear()
            try:
                listed = await self.docker.list_containers()
                entries = await self.consul.services()
            except DockerError as err:
                # Retried by the agent until it works: logged once per outage (transient).
                self.status.error("docker", f"full reconcile: cannot list containers: {err}", True)
                self.status.retry_needed = True
                return False
            except ConsulError as err:
                message = f"full reconcile: cannot list Consul services: {err}"
                if err.forbidden:
                    # Consul answers: not an outage, and no "unreachable" line.
                    self.status.forbidden("consul", message)
                else:
                    self.status.error("consul", message, True)
                self.status.retry_needed = True
                return False
            self.status.answered("docker")
            self.status.answered("consul")
            self.status.allowed("consul")
            self._state_lost_said = False
            self.status.retry_needed = False
            vip_keys = await self.swarm.refresh(self.ledger.held)

            fresh: dict[str, dict[str, HeldService]] = {}
            foreign: dict[str, str] = {}
            for service_id, entry in entries.items():
                held = held_from_agent(entry, self.context.node)
                if held is not None:
                    fresh.setdefault(held.container_id, {})[held.id] = held
                holder = foreign_holder(entry, self.context.node)
                if holder is not None:
                    foreign[str(entry.get("ID", service_id))] = holder
            # What the listing says replaces what was known: an entry gone from it is free.
            self.ledger.foreign = foreign
            states = {str(item["Id"]): str(item.get("State", "")) for item in listed}
            # by_container: a container removed while Consul was down, whose entries Consul
            # has since lost, holds nothing but still has notes (a script runner) to release.
            container_ids = (
                set(states)
                | set(fresh)
                | set(self.ledger.held)
                | set(self.ledger.by_container)
                | vip_keys
            )

            async def one(container_id: str) -> None:
                async with self.work.locks.hold(container_id):
                    # An event-driven reconcile that wrote since the listing knows better than
                    # the listing; replacing its state would redo (and re-log) its writes.
                    if container_id not in self.ledger.applied_since_listing:
                        self.ledger.held[container_id] = dict(fresh.get(container_id, {}))
                    # A container missing from the list may have been created after it:
                    # inspect to tell "gone" from "new" instead of deregistering it.
                    state = states.get(container_id)
                    await self._reconcile_locked(
                        container_id, state, force_inspect=state is None, listed=True
                    )

            # A few workers share one iterator rather than one task per container behind a
            # semaphore: 500 waiting tasks and their frames were ~1.5 MB of the peak RSS.
            pending = iter(container_ids)

            async def worker() -> None:
                for container_id in pending:
                    await one(container_id)

            await asyncio.gather(*(worker() for _ in range(FULL_RECONCILE_CONCURRENCY)))
            self.ledger.drop_empty(container_ids)
            for key in [key for key in self._reported_problems if key not in container_ids]:
                self._reported_problems.pop(key, None)
            if not self.synced:
                running = {cid for cid, state in states.items() if state == "running"}
                await self._lift_stale_drains(running)
            self.stats.full_reconciles += 1
            self.stats.last_full_seconds = asyncio.get_running_loop().time() - started
            self.synced = True
            return not self.status.retry_needed

    async def _read(self, key: str, list_state: str | None, force: bool) -> Container | None:
        """The container (or VIP service) to plan for; raises DockerError."""
        if is_vip_key(key):
            return await self.swarm.vip_container(key)
        holds = bool(self.ledger.held.get(key))
        container = await self.swarm.attach(await self.inspects.read(key, list_state, force, holds))
        previous = self._stack_owner.pop(key, None)
        if previous is not None:
            dependents = self._stack_dependents.get(previous, set())
            dependents.discard(key)
            if not dependents:
                self._stack_dependents.pop(previous, None)
        if container is None or not container.network_owner_ref:
            return container
        owner = await self.inspects.read(container.network_owner_ref, None, True, True)
        if owner is not None:
            self._stack_owner[key] = owner.id
            self._stack_dependents.setdefault(owner.id, set()).add(key)
        return replace(container, network_owner=owner)

    async def _reconcile_locked(
        self, container_id: str, list_state: str | None, force_inspect: bool, listed: bool = False
    ) -> None:
        """`listed`: part of a full reconcile, whose listing of Consul's services is fresh."""
        self.stats.container_reconciles += 1
        if is_vip_key(container_id) and not self.swarm.readable:
            return  # frozen until Swarm answers again (see SwarmView.refresh)
        self._unfinished.discard(container_id)
        try:
            container = await self._read(container_id, list_state, force_inspect)
        except DockerError as err:
            self.status.error(
                "docker", f"container {container_id[:12]}: cannot read it: {err}", err.transient
            )
            self.status.retry_needed = True
            self._unfinished.add(container_id)
            self._after(container_id)
            return
        try:
            await self._plan_and_apply(container_id, container, list_state, listed)
        finally:
            self._after(container_id)

    async def _plan_and_apply(
        self,
        container_id: str,
        container: Container | None,
        list_state: str | None,
        listed: bool,
    ) -> None:
        """`list_state` and `listed` as for `_reconcile_locked`."""
        touched = set(self.ledger.held.get(container_id, {})) | self.ledger.services_of(
            container_id
        )
        outcome = plan_container(container_id, container, self.ledger.holdings(), self.context)
        if not listed:
            # Between listings someone may have registered an id we are about to take, or
            # removed one we left to them: ask Consul before the first write of such an id.
            try:
                if await self._look_up_holders(container_id, outcome):
                    outcome = plan_container(
                        container_id, container, self.ledger.holdings(), self.context
                    )
            except ConsulError as err:
                self.status.error("consul", f"look up service ids: {err}", err.transient)
                self.status.retry_needed = True
                # Nothing was written, so it is retried like a write that failed.
                self._unfinished.add(container_id)
                return
        # Gone for sure only when Docker said so; a listing taken before the container
        # started gives None too, and forgetting its problems then would log them again.
        self._report_problems(container_id, outcome, gone=container is None and not list_state)
        self.ledger.note(container_id, outcome.contested, outcome.kept)
        if not outcome.plan.empty:
            await self._apply(container_id, container, outcome.plan)
        for contender in outcome.hand_over:
            self.mark(contender)
        held = self.ledger.held.get(container_id, {})
        for service in outcome.services:
            if service.id in held:
                self.ledger.remember(container_id, service)
        desired = {service.id for service in outcome.services}
        # Whatever this container no longer holds in Consul and no longer wants (it went,
        # or Consul lost it meanwhile): its script runner, check memos and refusals go too.
        for service_id in self.ledger.services_of(container_id) - set(held) - desired:
            self.checks.forget(self.ledger.release(container_id, service_id))
        if container is None:
            # Gone, whether or not Consul has let go of its entries yet (a deregistration
            # waiting for Consul to answer): nothing to exec into, no heartbeat to send.
            for service_id in self.ledger.services_of(container_id):
                self.checks.forget(self.ledger.registered.pop(service_id, None))
        await self.checks.report_all(outcome.check_updates)
        # A kept container runs no scripts: its checks stay at the critical the plan set.
        scripts = {} if outcome.kept or container is None else self.ledger.registered
        self.checks.sync_scripts(scripts, touched | desired)
        self._schedule_refresh(container_id, container, outcome)

    def _after(self, container_id: str) -> None:
        """Retry a container whose writes did not all land, after its own backoff."""
        if container_id not in self._unfinished:
            entry = self._retries.pop(container_id, None)
            if entry is not None and not entry[1].done():
                entry[1].cancel()
            return
        entry = self._retries.get(container_id)
        if entry is not None and not entry[1].done():
            return  # one retry pending already
        backoff = entry[0] if entry else self.timing.backoff(self.timing.write_retry)
        task = asyncio.create_task(self._mark_later(container_id, backoff.next()))
        self._retries[container_id] = (backoff, task)

    def _schedule_refresh(
        self, container_id: str, container: Container | None, outcome: Outcome
    ) -> None:
        """A mirrored HEALTHCHECK is sent again before its TTL runs out, even when Docker
        says nothing (it sends health_status only on a change): the container is read and
        planned again once the shortest `refresh_after` has passed."""
        previous = self._refreshes.pop(container_id, None)
        if previous is not None and not previous.done():
            previous.cancel()
        delays = [u.refresh_after for u in outcome.check_updates if u.refresh_after]
        if container is None or not delays:
            return
        # A little after the refresh time, so that the check runner finds it has passed.
        delay = min(delays) * 1.05
        self._refreshes[container_id] = asyncio.create_task(self._mark_later(container_id, delay))

    async def _mark_later(self, container_id: str, delay: float) -> None:
        await self.timing.sleep(delay)
        self.mark(container_id)

    async def _look_up_holders(self, container_id: str, outcome: Outcome) -> bool:
        """GET each id this outcome writes for the first time, or leaves to a foreign holder;
        record who holds it. True if that changes what the planner knew. Raises ConsulError.

        An id this container already holds is not looked up: an unchanged container costs
        no call, and a changed one only its new ids.
        """
        own = self.ledger.held.get(container_id, {})
        ids = [s.id for s in outcome.plan.register if s.id not in own] + list(outcome.foreign)
        changed = False
        for service_id in ids:
            entry = await self.consul.service(service_id)
            self.status.answered("consul")
            holder = None if entry is None else foreign_holder(entry, self.context.node)
            if self.ledger.foreign.get(service_id) != holder:
                changed = True
                if holder is None:
                    self.ledger.foreign.pop(service_id, None)
                else:
                    self.ledger.foreign[service_id] = holder
        return changed

    async def _apply(self, container_id: str, container: Container | None, plan: Plan) -> None:
        held_before = dict(self.ledger.held.get(container_id, {}))
        held = self.ledger.held.setdefault(container_id, {})
        name = container.name if container else container_id[:12]
        reasons = await self._maintenance_reasons([s.id for s in plan.register if s.id in held])
        for service in plan.register:
            if await self._register(container_id, service, held):
                sidecar = plan.drop_sidecars.get(service.id)
                if sidecar:
                    await self._deregister_sidecar(service.id, sidecar)
                held[service.id] = held_from_service(service)
                for maintenance in keep_maintenance([service.id], reasons):
                    await self._maintenance(maintenance)
        for service_id in plan.deregister:
            try:
                await self.consul.deregister(service_id)
            except ConsulError as err:
                self._unfinished.add(container_id)
                if err.forbidden:
                    # Retried after this container's backoff, logged once per reason: not a
                    # full reconcile every few seconds with an ERROR line each time.
                    self._refuse(container_id, service_id, name, "deregistration", err)
                    continue
                self.status.error("consul", f"deregister {service_id}: {err}", err.transient)
                self.status.retry_needed = True
                continue
            self.status.answered("consul")
            held.pop(service_id, None)
            self.checks.forget(self.ledger.release(container_id, service_id))
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
            self.ledger.held.pop(container_id, None)
        if held_before != held:
            # A write that finished after a full reconcile listed Consul is not in that
            # listing (checked here, at the end, to cover writes started before the listing).
            self.ledger.applied_since_listing.add(container_id)

    async def _maintenance_reasons(self, reregistered: list[str]) -> dict[str, str]:
        """Which of the services about to be re-registered are in maintenance (one read, and
        only when an existing registration changes: rare)."""
        if not reregistered:
            return {}
        try:
            checks = await self.consul.checks()
        except ConsulError as err:
            self.status.error("consul", f"read checks before re-registering: {err}", err.transient)
            return {}
        reasons = maintenance_reasons(checks)
        return {sid: reasons[sid] for sid in reregistered if sid in reasons}

    async def _register(
        self, container_id: str, service: Service, held: dict[str, HeldService]
    ) -> bool:
        """PUT one registration; True if Consul took it."""
        body = registration(service)
        rejected = self.ledger.rejections.get(service.id)
        if rejected is not None and rejected[0] == body["Meta"][META_HASH]:
            return False  # Consul refused exactly this before; resending cannot help.
        reason = "changed" if service.id in held else "new"
        try:
            await self.consul.register(body)
        except ConsulError as err:
            if err.transient:
                self._unfinished.add(container_id)
                self.status.error("consul", f"register {service.id}: {err}", transient=True)
                self.status.retry_needed = True
            elif err.forbidden:
                self._unfinished.add(container_id)
                self._refuse(container_id, service.id, service.container_name, "registration", err)
            else:
                self._reject(container_id, service, err)
            return False
        self.status.answered("consul")
        if self.ledger.refused.pop(service.id, None) is not None:
            log.info("Consul accepts service %s now (ACL policy or token changed)", service.id)
        self.ledger.rejections.pop(service.id, None)
        self.checks.forget(service)
        self.stats.registrations += 1
        name = service.container_name
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
        return True

    async def _deregister_sidecar(self, service_id: str, sidecar: str) -> None:
        try:
            await self.consul.deregister(sidecar)
        except ConsulError as err:
            self.status.error("consul", f"deregister sidecar of {service_id}: {err}")

    # --- maintenance and shutdown ---------------------------------------------------------

    async def drain(self, container_id: str, signal: str) -> float | None:
        """A `kill` event sent `signal`: if it is the container's stop signal, put its services
        in maintenance (it is about to stop serving) and return how many seconds to wait
        before taking a survivor out again (plan.drain_window); else None."""
        try:
            container = await self.inspects.read(container_id, None, True, True)
        except DockerError as err:
            self.status.error("docker", f"container {container_id[:12]}: {err}", True)
            return None
        if container is None or not drains_on(signal, container):
            return None
        await self._maintenance(plan_drain(self.ledger.held.get(container_id, {})))
        return drain_window(container)

    async def undrain_if_running(self, container_id: str) -> None:
        """The stop signal did not stop the container: take its services out of maintenance."""
        async with self.work.locks.hold(container_id):
            try:
                container = await self.inspects.read(container_id, None, True, True)
            except DockerError as err:
                self.status.error("docker", f"container {container_id[:12]}: {err}", True)
                return
            held = self.ledger.held.get(container_id, {})
            maintenance = plan_undrain(container, held)
            if maintenance is not None:
                await self._maintenance(maintenance)

    async def _lift_stale_drains(self, running: set[str]) -> None:
        """First full reconcile: lift drains a previous run of the agent left on services of
        running containers (plan_stale_drains)."""
        try:
            checks = await self.consul.checks()
        except ConsulError as err:
            self.status.error("consul", f"read checks: {err}", err.transient)
            return
        stale = plan_stale_drains(maintenance_reasons(checks), self.ledger.held, running)
        if stale is not None:
            await self._maintenance(stale)

    async def _maintenance(self, maintenance: Maintenance) -> None:
        for service_id in maintenance.service_ids:
            try:
                await self.consul.service_maintenance(
                    service_id, maintenance.enable, maintenance.reason
                )
            except ConsulError as err:
                what = "maintenance" if maintenance.enable else "maintenance off"
                self.status.error("consul", f"{what} for {service_id}: {err}")
                continue
            if maintenance.enable:
                log.info("maintenance on for %s: %s", service_id, maintenance.reason)
            else:
                log.info("maintenance off for %s: its container runs", service_id)

    async def deregister_all(self) -> None:
        """Shutdown with -deregister-on-exit: remove every service this node owns."""
        for container_id, plan in plan_shutdown(self.ledger.held).items():
            await self._apply(container_id, None, plan)

    async def heartbeat_ttl(self) -> None:
        """-ttl: keep every service's registrator heartbeat check passing."""
        await self.checks.heartbeat(self.ledger.registered.values(), self.ledger.stopped)

    async def close(self) -> None:
        tasks = [task for _, task in self._retries.values()] + list(self._refreshes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.checks.close()

    def _consul_forgot(self, check_id: str) -> None:
        """A TTL update answered "unknown check": Consul lost its state (restarted without
        data). A full reconcile lists what it holds now and registers what is missing."""
        if not any(
            check.check_id == check_id
            for service in self.ledger.registered.values()
            for check in service.checks
        ):
            return  # a late update of a service just deregistered: nothing was lost
        if not self._state_lost_said:
            self._state_lost_said = True
            log.warning(
                "Consul does not know check %s: it lost its state (restarted without data?); "
                "re-registering this node's services",
                check_id,
            )
        self.on_consul_state_lost()

    # --- reporting ------------------------------------------------------------------------

    def _report_problems(self, container_id: str, outcome: Outcome, gone: bool) -> None:
        """Log each metadata problem of a container once, not on every resync: a new problem
        is logged, the ones already logged are not repeated."""
        if outcome.problems is None:
            if gone:
                self._reported_problems.pop(container_id, None)
            return
        current = frozenset(outcome.problems)
        previous = self._reported_problems.get(container_id, frozenset())
        if previous == current:
            return
        # Only containers with problems are remembered: an empty set for each of hundreds of
        # healthy containers was ~0.2 KB apiece.
        if current:
            self._reported_problems[container_id] = current
        else:
            self._reported_problems.pop(container_id, None)
        for problem in sorted(current - previous):
            log.warning("%s", problem)

    def _refuse(
        self, container_id: str, service_id: str, name: str, what: str, err: ConsulError
    ) -> None:
        """An ACL refusal (HTTP 401/403): retried with backoff, logged once per reason."""
        self.stats.errors["consul_forbidden"] += 1
        message = str(err)
        if self.ledger.refuse(container_id, service_id, message) != message:
            log.error(
                "Consul refused the %s of service %s of container %s (ACL token lacks "
                "permission); retrying until the policy or the token changes: %s",
                what,
                service_id,
                name,
                message,
            )

    def _reject(self, container_id: str, service: Service, err: ConsulError) -> None:
        message = str(err)
        self.stats.errors["consul_rejected"] += 1
        previous = self.ledger.rejections.get(service.id)
        self.ledger.reject(container_id, service.id, (payload_hash(service), message))
        if previous is None or previous[1] != message:
            log.warning(
                "Consul rejected service %s of container %s; it stays unregistered until "
                "its labels change: %s",
                service.id,
                service.container_name,
                message,
            )


def _scheduler(reconciler: Reconciler) -> Scheduler:
    async def work(container_id: str) -> None:
        await reconciler.reconcile_container(container_id, force_inspect=True)

    return Scheduler(work)


def _state_word(container: Container) -> str:
    if container.paused:
        return "paused"
    if container.restarting:
        return "restarting"
    if container.running:
        return "running"
    return f"exited ({container.exit_code})"
