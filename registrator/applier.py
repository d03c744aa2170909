"""Writes one container's Outcome to Consul: registrations, deregistrations, orphaned sidecars,
check statuses; records in the ledger what landed, and what Consul refused.

Every decision is the planner's (plan.py); this module only performs it, one service at a time,
so that one failing write never stops the others. A write that did not land marks the container
unfinished (retries.py retries it).
"""

from __future__ import annotations

import logging

from registrator.backends import ConsulAPI
from registrator.check_runner import CheckRunner
from registrator.consul import ConsulError
from registrator.drains import Drains
from registrator.ledger import Ledger
from registrator.model import META_HASH, Container, HeldService, Plan, Service
from registrator.payload import foreign_holder, held_from_service, registration
from registrator.plan import Outcome, keep_maintenance
from registrator.reports import Reports
from registrator.retries import Retries
from registrator.status import Status

# The reconciler's logger, as before the split: operators filter registration changes on it
# (docs/operations.md).
log = logging.getLogger("registrator.reconciler")


class Applier:
    def __init__(
        self,
        consul: ConsulAPI,
        ledger: Ledger,
        status: Status,
        checks: CheckRunner,
        drains: Drains,
        reports: Reports,
        retries: Retries,
    ) -> None:
        self.consul = consul
        self.ledger = ledger
        self.status = status
        self.checks = checks
        self.drains = drains
        self.reports = reports
        self.retries = retries

    async def look_up_holders(self, container_id: str, outcome: Outcome, node: str) -> bool:
        """GET each id this outcome writes for the first time, or leaves to a foreign holder;
        record who holds it (an entry not owned by this `node`'s registrator). True if that
        changes what the planner knew. Raises ConsulError.

        An id this container already holds is not looked up: an unchanged container costs
        no call, and a changed one only its new ids.
        """
        own = self.ledger.held.get(container_id, {})
        ids = [s.id for s in outcome.plan.register if s.id not in own] + list(outcome.foreign)
        changed = False
        for service_id in ids:
            entry = await self.consul.service(service_id)
            self.status.answered("consul")
            holder = None if entry is None else foreign_holder(entry, node)
            if self.ledger.foreign.get(service_id) != holder:
                changed = True
                if holder is None:
                    self.ledger.foreign.pop(service_id, None)
                else:
                    self.ledger.foreign[service_id] = holder
        return changed

    async def apply(
        self,
        container_id: str,
        container: Container | None,
        outcome: Outcome,
        touched: set[str],
    ) -> None:
        """Perform `outcome` for the container (None: gone) and settle its notes in the
        ledger and its checks. `touched`: the service ids it had any entry for before."""
        self.ledger.note(container_id, outcome.contested, outcome.kept)
        if not outcome.plan.empty:
            await self.write(container_id, container, outcome.plan)
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

    async def write(self, container_id: str, container: Container | None, plan: Plan) -> None:
        """Register and deregister what `plan` says, one service at a time."""
        held_before = dict(self.ledger.held.get(container_id, {}))
        held = self.ledger.held.setdefault(container_id, {})
        name = container.name if container else container_id[:12]
        reasons = await self.drains.reasons([s.id for s in plan.register if s.id in held])
        for service in plan.register:
            if await self._register(container_id, service, held):
                sidecar = plan.drop_sidecars.get(service.id)
                if sidecar:
                    await self._deregister_sidecar(service.id, sidecar)
                held[service.id] = held_from_service(service)
                for maintenance in keep_maintenance([service.id], reasons):
                    await self.drains.write(maintenance)
        for service_id in plan.deregister:
            try:
                await self.consul.deregister(service_id)
            except ConsulError as err:
                self.retries.unfinished(container_id)
                if err.forbidden:
                    # Retried after this container's backoff, logged once per reason: not a
                    # full reconcile every few seconds with an ERROR line each time.
                    self.reports.refused(container_id, service_id, name, "deregistration", err)
                    continue
                self.status.error("consul", f"deregister {service_id}: {err}", err.transient)
                self.status.retry_needed = True
                continue
            self.status.answered("consul")
            held.pop(service_id, None)
            self.checks.forget(self.ledger.release(container_id, service_id))
            self.status.stats.deregistrations += 1
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
                self.retries.unfinished(container_id)
                self.status.error("consul", f"register {service.id}: {err}", transient=True)
                self.status.retry_needed = True
            elif err.forbidden:
                self.retries.unfinished(container_id)
                name = service.container_name
                self.reports.refused(container_id, service.id, name, "registration", err)
            else:
                self.reports.rejected(container_id, service, err)
            return False
        self.status.answered("consul")
        if self.ledger.refused.pop(service.id, None) is not None:
            log.info("Consul accepts service %s now (ACL policy or token changed)", service.id)
        self.ledger.rejections.pop(service.id, None)
        self.checks.forget(service)
        self.status.stats.registrations += 1
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


def _state_word(container: Container) -> str:
    if container.paused:
        return "paused"
    if container.restarting:
        return "restarting"
    if container.running:
        return "running"
    return f"exited ({container.exit_code})"
