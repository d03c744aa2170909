"""The checks registrator runs itself: it sends their status to Consul's TTL checks.

What each status is comes from the planner (plan.py: Docker health mirror, script results,
-ttl heartbeats); this module sends them, skips writes that would change nothing, and runs
one script loop per service with a SERVICE_CHECK_SCRIPT (docker exec in the container).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet

from registrator import checks as checks_mod
from registrator.backends import ConsulAPI, DockerAPI
from registrator.consul import ConsulError
from registrator.docker import DockerError
from registrator.model import CheckKind, CheckUpdate, Service
from registrator.plan import (
    heartbeat_updates,
    lacks_kill_wrapper,
    probe_command,
    probe_update,
    script_check,
    script_update,
)
from registrator.status import Status
from registrator.timing import Timing

log = logging.getLogger(__name__)

# How long past its own `timeout` wrapper a probe's exec is waited for before it counts as not
# killed: the wrapper's kill and Docker's answer are not instantaneous on a loaded host.
_EXEC_GRACE = 5.0


class CheckRunner:
    def __init__(
        self, docker: DockerAPI, consul: ConsulAPI, status: Status, timing: Timing
    ) -> None:
        self.docker = docker
        self.consul = consul
        self.status = status
        self.timing = timing
        # check id → (status, output, clock() when sent) of the last update we sent.
        self._sent: dict[str, tuple[str, str, float]] = {}
        # service id → (the Service its runner was started for, the runner).
        self._scripts: dict[str, tuple[Service, asyncio.Task[None]]] = {}
        # Set by the reconciler: Consul answered that it has no such check (it lost its
        # state); a script's container is gone (exec answered 404): reconcile it, which
        # releases the runner, instead of exec'ing into nothing every interval.
        self.on_unknown_check: Callable[[str], None] = lambda check_id: None
        self.on_container_gone: Callable[[str], None] = lambda container_id: None
        # check id → the ACL refusal last logged for its updates.
        self._refused: dict[str, str] = {}
        # Containers without a `timeout` command: their probes run unwrapped (not killable).
        self._unkillable: set[str] = set()

    async def report(self, update: CheckUpdate) -> None:
        """Send a check result (PUT /v1/agent/check/update/:id), skipping writes that would
        change nothing.

        Every update also resets the TTL of the check in Consul; a TTL check that hears
        nothing expires to critical. So an unchanged result is sent again once
        `update.refresh_after` seconds have passed since the last write (never, if None).
        """
        last = self._sent.get(update.check_id)
        if (
            last is not None
            and last[0] == update.status
            and (update.status_only or last[1] == update.output)
            and (
                update.refresh_after is None or self.timing.clock() - last[2] < update.refresh_after
            )
        ):
            return
        try:
            await self.consul.update_check(update.check_id, update.status, update.output)
        except ConsulError as err:
            if err.unknown_check:
                self._sent.pop(update.check_id, None)
                self.on_unknown_check(update.check_id)
                return
            if err.forbidden:
                # The policy was narrowed under a registered service: said once per check
                # and reason, not at every heartbeat; the update is sent again next time.
                if self._refused.get(update.check_id) != str(err):
                    self._refused[update.check_id] = str(err)
                    self.status.error("consul", f"update check {update.check_id}: {err}")
                return
            self.status.error("consul", f"update check {update.check_id}: {err}", err.transient)
            return
        self._refused.pop(update.check_id, None)
        self.status.answered("consul")
        self._sent[update.check_id] = (update.status, update.output, self.timing.clock())

    async def report_all(self, updates: Iterable[CheckUpdate]) -> None:
        for update in updates:
            await self.report(update)

    def forget(self, service: Service | None) -> None:
        """The service was (re-)registered or removed: its checks start from scratch.

        The `exited` check a kept service carried is dropped too: the service that replaces
        it (running again, or None when removed) no longer lists it.
        """
        if service is None:
            return
        for check_id in {check.check_id for check in service.checks} | {
            checks_mod.check_id(service.id, CheckKind.EXITED)
        }:
            self._sent.pop(check_id, None)
            self._refused.pop(check_id, None)

    def sync_scripts(self, registered: Mapping[str, Service], service_ids: Iterable[str]) -> None:
        """Start, restart or stop the script runners of the services one reconcile touched.

        Only those: scanning every registered service on each reconcile would make a full
        reconcile quadratic in the number of containers.
        """
        for service_id in service_ids:
            service = registered.get(service_id)
            wanted = service if service is not None and script_check(service) else None
            running = self._scripts.get(service_id)
            if running is not None and running[0] == wanted:
                continue
            if running is not None:
                self._scripts.pop(service_id)[1].cancel()
            if wanted is not None:
                task = asyncio.create_task(self._run_script(wanted))
                self._scripts[service_id] = (wanted, task)

    def scripts_running(self) -> set[str]:
        """The services whose script runner is running (for tests and diagnostics)."""
        return set(self._scripts)

    async def _run_script(self, service: Service) -> None:
        check = script_check(service)
        assert check is not None
        interval = service.script_interval or checks_mod.duration_seconds(
            checks_mod.DEFAULT_INTERVAL
        )
        try:
            command = checks_mod.script_command(service.script)
        except ValueError as err:
            await self.report(script_update(check, None, f"cannot parse script: {err}"))
            return
        timeout = service.script_timeout or checks_mod.SCRIPT_TIMEOUT_SECONDS
        while True:
            killable = service.container_id not in self._unkillable
            try:
                # One probe at a time: the next starts only after this one ended (killed by
                # its `timeout` wrapper, or waited for by exec_run where it cannot be).
                result = await self.docker.exec_run(
                    service.container_id,
                    probe_command(command, timeout, killable),
                    timeout=timeout + _EXEC_GRACE if killable else timeout,
                )
                if killable and lacks_kill_wrapper(result.exit_code, result.output):
                    self._unkillable.add(service.container_id)
                    log.warning(
                        "container %s: SERVICE_CHECK_SCRIPT of %s: the container has no "
                        "`timeout` command, so a probe that overruns SERVICE_CHECK_TIMEOUT "
                        "cannot be killed; the next probe waits for it to end",
                        service.container_name,
                        service.id,
                    )
                    continue
                await self.report(
                    probe_update(
                        check, result.exit_code, result.output, timeout, killable, result.timed_out
                    )
                )
            except DockerError as err:
                if _container_gone(err):
                    self._scripts.pop(service.id, None)
                    self._unkillable.discard(service.container_id)
                    self.on_container_gone(service.container_id)
                    return
                await self.report(script_update(check, None, f"exec failed: {err}"))
            await self.timing.sleep(interval)

    async def heartbeat(self, registered: Iterable[Service], stopped: AbstractSet[str]) -> None:
        """-ttl: keep the registrator heartbeat check of every running container's services
        passing (`stopped`: containers kept while not running)."""
        await self.report_all(heartbeat_updates(list(registered), stopped))

    async def close(self) -> None:
        tasks = [task for _, task in self._scripts.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._scripts.clear()


def _container_gone(err: DockerError) -> bool:
    """Docker answers 404 for an exec in a removed container (Podman: 500 "no such
    container")."""
    return err.status == 404 or "no such container" in str(err).lower()
