"""Maintenance mode of this node's services: on when a container is sent its stop signal
(-drain), off when it survives the signal or a previous run of the agent left it on, and kept
across re-registrations.

What goes into maintenance, and when, is plan.py's (plan_drain, plan_undrain,
plan_stale_drains, keep_maintenance); this module reads what those need and writes the result.
"""

from __future__ import annotations

import logging

from registrator.backends import ConsulAPI
from registrator.consul import ConsulError
from registrator.docker import DockerError
from registrator.inspects import Inspects
from registrator.ledger import Ledger
from registrator.plan import (
    Maintenance,
    drain_window,
    drains_on,
    maintenance_reasons,
    plan_drain,
    plan_stale_drains,
    plan_undrain,
)
from registrator.scheduler import KeyedLock
from registrator.status import Status

# The reconciler's logger, as before the split: operators filter on it (docs/operations.md).
log = logging.getLogger("registrator.reconciler")


class Drains:
    def __init__(
        self,
        consul: ConsulAPI,
        inspects: Inspects,
        ledger: Ledger,
        status: Status,
        locks: KeyedLock,
    ) -> None:
        """`locks`: the reconciler's per-container locks (an undrain is work on a container)."""
        self._consul = consul
        self._inspects = inspects
        self._ledger = ledger
        self._status = status
        self._locks = locks

    async def drain(self, container_id: str, signal: str) -> float | None:
        """A `kill` event sent `signal`: if it is the container's stop signal, put its services
        in maintenance (it is about to stop serving) and return how many seconds to wait
        before taking a survivor out again (plan.drain_window); else None."""
        try:
            container = await self._inspects.read(container_id, None, True, True)
        except DockerError as err:
            self._status.error("docker", f"container {container_id[:12]}: {err}", True)
            return None
        if container is None or not drains_on(signal, container):
            return None
        await self.write(plan_drain(self._ledger.held.get(container_id, {})))
        return drain_window(container)

    async def undrain_if_running(self, container_id: str) -> None:
        """The stop signal did not stop the container: take its services out of maintenance."""
        async with self._locks.hold(container_id):
            try:
                container = await self._inspects.read(container_id, None, True, True)
            except DockerError as err:
                self._status.error("docker", f"container {container_id[:12]}: {err}", True)
                return
            held = self._ledger.held.get(container_id, {})
            maintenance = plan_undrain(container, held)
            if maintenance is not None:
                await self.write(maintenance)

    async def lift_stale(self, running: set[str]) -> None:
        """First full reconcile: lift drains a previous run of the agent left on services of
        the `running` containers (plan_stale_drains)."""
        try:
            checks = await self._consul.checks()
        except ConsulError as err:
            self._status.error("consul", f"read checks: {err}", err.transient)
            return
        stale = plan_stale_drains(maintenance_reasons(checks), self._ledger.held, running)
        if stale is not None:
            await self.write(stale)

    async def reasons(self, reregistered: list[str]) -> dict[str, str]:
        """Which of the services about to be re-registered are in maintenance, and why (one
        read, and only when an existing registration changes: rare)."""
        if not reregistered:
            return {}
        try:
            checks = await self._consul.checks()
        except ConsulError as err:
            self._status.error("consul", f"read checks before re-registering: {err}", err.transient)
            return {}
        reasons = maintenance_reasons(checks)
        return {sid: reasons[sid] for sid in reregistered if sid in reasons}

    async def write(self, maintenance: Maintenance) -> None:
        """Turn maintenance on or off for each service; a failure is logged, not raised."""
        for service_id in maintenance.service_ids:
            try:
                await self._consul.service_maintenance(
                    service_id, maintenance.enable, maintenance.reason
                )
            except ConsulError as err:
                what = "maintenance" if maintenance.enable else "maintenance off"
                self._status.error("consul", f"{what} for {service_id}: {err}")
                continue
            if maintenance.enable:
                log.info("maintenance on for %s: %s", service_id, maintenance.reason)
            else:
                log.info("maintenance off for %s: its container runs", service_id)
