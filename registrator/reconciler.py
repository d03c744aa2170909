"""Applies Plans: reads the truth from Docker, asks the planner, writes what it says to Consul.

Level-triggered: callers only say "this container may have changed" (`mark`) or "check
everything" (`full_reconcile`). Work on one container is serialised (scheduler.py); different
containers proceed concurrently. One service failing never stops the others. Every decision is
plan.py's; this module only reads (inspects.py, swarm_view.py), calls it and hands the result to
applier.py; retries.py marks containers again by themselves, drains.py owns maintenance mode,
reports.py says each problem once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from registrator.applier import Applier
from registrator.backends import ConsulAPI, DockerAPI
from registrator.check_runner import CheckRunner
from registrator.consul import ConsulError
from registrator.docker import DockerError
from registrator.drains import Drains
from registrator.inspects import Inspects
from registrator.ledger import Ledger
from registrator.model import Container, HeldService, Service
from registrator.payload import foreign_holder, held_from_agent
from registrator.plan import plan_container, plan_shutdown
from registrator.planner import PlanContext
from registrator.reports import Reports
from registrator.retries import Retries
from registrator.scheduler import Scheduler
from registrator.status import Stats, Status
from registrator.swarm import is_vip_key, vip_key
from registrator.swarm_view import SwarmView
from registrator.timing import Timing

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
        swarm: SwarmView | None = None,
        status: Status | None = None,
        timing: Timing | None = None,
    ) -> None:
        """`swarm`: this engine's Swarm view, built by the agent from what Docker said at
        startup (default: not in a swarm); it reports to the same `status`."""
        self.consul = consul
        self.context = context
        self.status = status or Status()
        self.swarm = swarm or SwarmView(docker, self.status, context.settings.swarm_vip)
        timing = timing or Timing()
        self.work = _scheduler(self)
        self.inspects = Inspects(docker, self.status)
        self.ledger = Ledger()
        self._full_lock = asyncio.Lock()
        self.reports = Reports(self.ledger, self.status.stats)
        # Containers whose writes did not all land, and mirrored HEALTHCHECKs, are marked
        # again by themselves, so -resync 0 still converges.
        self.retries = Retries(self.mark, timing)
        checks = CheckRunner(docker, consul, self.status, timing)
        checks.on_unknown_check = self.reports.unknown_check
        checks.on_container_gone = self.mark
        self.drains = Drains(consul, self.inspects, self.ledger, self.status, self.work.locks)
        self.applier = Applier(
            consul, self.ledger, self.status, checks, self.drains, self.reports, self.retries
        )

    # --- what others read -----------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        return self.status.stats

    @property
    def synced(self) -> bool:
        """The first full reconcile has completed."""
        return self.stats.full_reconciles > 0

    @property
    def checks(self) -> CheckRunner:
        """The checks registrator runs itself (the applier sends their statuses)."""
        return self.applier.checks

    @property
    def on_consul_state_lost(self) -> Callable[[], None]:
        """Called when Consul turns out to have lost this node's registrations (the agent
        asks for a full reconcile, which re-registers them); set by the Agent."""
        return self.reports.on_consul_state_lost

    @on_consul_state_lost.setter
    def on_consul_state_lost(self, callback: Callable[[], None]) -> None:
        self.reports.on_consul_state_lost = callback

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
        for dependent in self.inspects.stack_dependents(container_id):
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
                states = await self.inspects.list_states()
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
            self.reports.consul_listed()
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
            self.reports.keep_only(container_ids)
            if not self.synced:
                running = {cid for cid, state in states.items() if state == "running"}
                await self.drains.lift_stale(running)
            self.stats.last_full_seconds = asyncio.get_running_loop().time() - started
            self.stats.full_reconciles += 1  # synced from here on
            return not self.status.retry_needed

    async def _read(self, key: str, list_state: str | None, force: bool) -> Container | None:
        """The container (or VIP service) to plan for; raises DockerError."""
        if is_vip_key(key):
            return await self.swarm.vip_container(key)
        holds = bool(self.ledger.held.get(key))
        container = await self.swarm.attach(await self.inspects.read(key, list_state, force, holds))
        return await self.inspects.with_network_owner(key, container)

    async def _reconcile_locked(
        self, container_id: str, list_state: str | None, force_inspect: bool, listed: bool = False
    ) -> None:
        """`listed`: part of a full reconcile, whose listing of Consul's services is fresh."""
        self.stats.container_reconciles += 1
        if is_vip_key(container_id) and not self.swarm.readable:
            return  # frozen until Swarm answers again (see SwarmView.refresh)
        self.retries.started(container_id)
        try:
            container = await self._read(container_id, list_state, force_inspect)
        except DockerError as err:
            self.status.error(
                "docker", f"container {container_id[:12]}: cannot read it: {err}", err.transient
            )
            self.status.retry_needed = True
            self.retries.unfinished(container_id)
            self.retries.done(container_id)
            return
        try:
            await self._plan_and_apply(container_id, container, list_state, listed)
        finally:
            self.retries.done(container_id)

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
                if await self.applier.look_up_holders(container_id, outcome, self.context.node):
                    outcome = plan_container(
                        container_id, container, self.ledger.holdings(), self.context
                    )
            except ConsulError as err:
                self.status.error("consul", f"look up service ids: {err}", err.transient)
                self.status.retry_needed = True
                # Nothing was written, so it is retried like a write that failed.
                self.retries.unfinished(container_id)
                return
        # Gone for sure only when Docker said so; a listing taken before the container
        # started gives None too, and forgetting its problems then would log them again.
        gone = container is None and not list_state
        self.reports.problems(container_id, outcome.problems, gone)
        await self.applier.apply(container_id, container, outcome, touched)
        for contender in outcome.hand_over:
            self.mark(contender)
        # A mirrored HEALTHCHECK is sent again before its TTL runs out, even when Docker
        # says nothing (it sends health_status only on a change).
        delays = [u.refresh_after for u in outcome.check_updates if u.refresh_after]
        self.retries.refresh(container_id, delays if container is not None else [])

    # --- maintenance and shutdown ---------------------------------------------------------

    async def drain(self, container_id: str, signal: str) -> float | None:
        """See Drains.drain: maintenance at the stop signal; the seconds to wait, or None."""
        return await self.drains.drain(container_id, signal)

    async def undrain_if_running(self, container_id: str) -> None:
        """The stop signal did not stop the container: take its services out of maintenance."""
        await self.drains.undrain_if_running(container_id)

    async def deregister_all(self) -> None:
        """Shutdown with -deregister-on-exit: remove every service this node owns."""
        for container_id, plan in plan_shutdown(self.ledger.held).items():
            await self.applier.write(container_id, None, plan)

    async def heartbeat_ttl(self) -> None:
        """-ttl: keep every service's registrator heartbeat check passing."""
        await self.checks.heartbeat(self.ledger.registered.values(), self.ledger.stopped)

    async def close(self) -> None:
        await self.retries.close()
        await self.checks.close()


def _scheduler(reconciler: Reconciler) -> Scheduler:
    async def work(container_id: str) -> None:
        await reconciler.reconcile_container(container_id, force_inspect=True)

    return Scheduler(work)
