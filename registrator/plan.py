"""Pure: every decision the reconciler applies, as data.

`plan_container` is the one entry for a container (or a Swarm service at its VIP): from what
Docker says of it, what this node holds in Consul and the PlanContext, it returns the whole
Outcome: what to register and deregister, which contested ids it must wait for, what a failed
container keeps, which Connect sidecar to remove, and the statuses registrator reports for its
own checks. The node-level decisions (maintenance on a stop signal, clean-up at exit, the
-ttl heartbeat) are the small functions after it. The shell reads, calls these, and writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any

from registrator import checks as checks_mod
from registrator import payload
from registrator.connect import sidecar_id
from registrator.events import signal_number
from registrator.model import (
    Check,
    CheckKind,
    CheckUpdate,
    Container,
    HeldService,
    Plan,
    Service,
)
from registrator.planner import PlanContext, desired_services, keeps_registrations, plan_changes

_HEALTH_TO_CONSUL = {"healthy": "passing", "unhealthy": "critical"}
_SCRIPT_EXIT_TO_CONSUL = {0: "passing", 1: "warning"}  # Consul's own rule for script checks


@dataclass(frozen=True)
class Holdings:
    """What this node's agent holds in Consul, as far as it knows (read-only views).

    held: container id (or VIP key) → service id → what Consul holds for it.
    registered: service id → the Service last registered under it (checks, sidecar, script).
    waiting: container id → the contested ids it waits for (see Outcome.contested).
    stopped: containers whose services are kept while they do not run (Outcome.kept).
    foreign: service id → who else holds it in Consul (by hand, another tool, another node's
        registrator), in words: payload.foreign_holder of the agent's entry.
    """

    held: Mapping[str, Mapping[str, HeldService]]
    registered: Mapping[str, Service]
    waiting: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    stopped: AbstractSet[str] = frozenset()
    foreign: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """Everything one reconcile of one container should do.

    services: the desired services; once Consul holds them, they are what was registered.
    problems: lines to log (once per change); None when the container is gone.
    contested: ids this container wants that another container holds; it waits for them.
    check_updates: statuses registrator reports for the checks it runs itself.
    kept: a failed container keeps its services (-deregister on-success), each with a
        critical `exited` check; the checks registrator controls are then critical, and it
        runs none of them (no script, no heartbeat, no health mirror) until the container
        runs again.
    hand_over: containers waiting for an id this plan releases; reconcile them right after.
    foreign: ids this container wants that someone else holds in Consul; the holder wins.
    """

    plan: Plan
    services: tuple[Service, ...] = ()
    problems: tuple[str, ...] | None = None
    contested: tuple[str, ...] = ()
    check_updates: tuple[CheckUpdate, ...] = ()
    kept: bool = False
    hand_over: tuple[str, ...] = ()
    foreign: tuple[str, ...] = ()


def plan_container(
    key: str, container: Container | None, holdings: Holdings, ctx: PlanContext
) -> Outcome:
    """The Outcome for container `key` (None: no such container, or not ours to write)."""
    held = holdings.held.get(key, {})
    if container is None:
        plan = plan_changes((), held)
        return Outcome(plan, hand_over=contenders(plan, key, holdings))
    if keeps_registrations(container, ctx.settings.deregister):
        return plan_kept(container, held, holdings, ctx)
    result = desired_services(container, ctx)
    services, foreign, not_ours = without_foreign_ids(key, result.services, holdings, ctx.node)
    services, contested, taken = without_contested_ids(key, services, holdings)
    plan = plan_changes(services, held)
    drops = {
        service.id: sidecar_id(service.id)
        for service in plan.register
        if orphans_sidecar(holdings.registered.get(service.id), service)
    }
    if drops:
        plan = Plan(plan.register, plan.deregister, drops)
    return Outcome(
        plan,
        services,
        tuple(str(problem) for problem in result.problems) + not_ours + taken,
        contested,
        mirror_health(container, services) + misconfigured(services),
        hand_over=contenders(plan, key, holdings),
        foreign=foreign,
    )


def contenders(plan: Plan, key: str, holdings: Holdings) -> tuple[str, ...]:
    """The containers waiting for an id `plan` deregisters: the id is theirs at once, not at
    the next resync (a blue/green deploy must not lose its service in between)."""
    released = set(plan.deregister)
    if not released:
        return ()
    return tuple(
        sorted(
            other
            for other, ids in holdings.waiting.items()
            if other != key and released.intersection(ids)
        )
    )


def plan_kept(
    container: Container, held: Mapping[str, HeldService], holdings: Holdings, ctx: PlanContext
) -> Outcome:
    """A kept service of a container that exited: re-registered with a critical `exited`
    check saying why (checks.with_exited_check), and every check registrator controls
    critical too. When the container runs again, its plain registration differs from the
    held one, so it is registered again without that check."""
    reason = f"container exited with code {container.exit_code}"
    if container.finished_at:
        reason += f" at {container.finished_at}"
    marked = tuple(
        checks_mod.with_exited_check(service, reason)
        for service in kept_services(container, held, holdings, ctx)
    )
    # Only the services found: one that cannot be rebuilt stays as Consul holds it.
    plan = plan_changes(marked, {service.id: held[service.id] for service in marked})
    updates = tuple(
        CheckUpdate(check.check_id, "critical", reason, refresh_after(check))
        for service in marked
        for check in service.checks
        if check.kind.reported_by_agent
    )
    return Outcome(plan, check_updates=updates, kept=True)


def kept_services(
    container: Container, held: Mapping[str, HeldService], holdings: Holdings, ctx: PlanContext
) -> list[Service]:
    """The held services of a container that exited, as registered when it ran."""
    services = [holdings.registered[sid] for sid in held if sid in holdings.registered]
    if len(services) < len(held):
        # Not registered by this run of the agent (it restarted since): the services the
        # container would have if it ran, where Consul holds them. Labels do not change while
        # it is stopped, but a stopped container has no published ports, so this finds fewer
        # than it had; the others keep what Consul holds (their `exited` check included, if
        # an earlier run added it).
        as_running = desired_services(replace(container, running=True), ctx).services
        services += [
            replace(s, address=held[s.id].address or s.address, port=held[s.id].port or s.port)
            for s in as_running
            if s.id in held and s.id not in holdings.registered
        ]
    return services


def without_foreign_ids(
    key: str, services: tuple[Service, ...], holdings: Holdings, node: str
) -> tuple[tuple[Service, ...], tuple[str, ...], tuple[str, ...]]:
    """Drop services whose id someone other than this node's registrator holds in Consul.

    The foreign holder wins: registering would overwrite its entry, and deregistering ours
    later would delete it. An id this container already holds stays ours (we wrote it after
    the listing that called it foreign). Returns (kept services, foreign ids, problems).
    """
    kept: list[Service] = []
    foreign: list[str] = []
    problems: list[str] = []
    own = holdings.held.get(key, {})
    for service in services:
        holder = holdings.foreign.get(service.id)
        if holder is None or service.id in own:
            kept.append(service)
            continue
        foreign.append(service.id)
        problems.append(
            f"container {service.container_name}: service id {service.id!r}: Consul already "
            f"holds it for {holder}, not for registrator on node {node!r}; not taken over, "
            "registered once that entry is gone"
        )
    return tuple(kept), tuple(foreign), tuple(problems)


def foreign_holders(entries: Mapping[str, Mapping[str, Any] | None], node: str) -> dict[str, str]:
    """service id → who holds it in Consul, for the ids someone other than this node's
    registrator holds; `entries`: service id → the agent's entry for it (`GET
    /v1/agent/service/:id`), None when it has none. The Holdings.foreign of those ids."""
    holders = {
        service_id: payload.foreign_holder(entry, node) if entry is not None else None
        for service_id, entry in entries.items()
    }
    return {service_id: holder for service_id, holder in holders.items() if holder is not None}


def without_contested_ids(
    key: str, services: tuple[Service, ...], holdings: Holdings
) -> tuple[tuple[Service, ...], tuple[str, ...], tuple[str, ...]]:
    """Drop services whose id another container already holds (the holder keeps it).

    Two containers with the same SERVICE_ID would otherwise take the registration from
    each other on every reconcile. Returns (kept services, contested ids, problems).
    """
    kept: list[Service] = []
    contested: list[str] = []
    problems: list[str] = []
    own = holdings.held.get(key, {})
    for service in services:
        if service.id in own:
            # Already ours (the steady state): no other container can hold it, so the scan
            # over every container below is needed only for ids new to this one.
            kept.append(service)
            continue
        holder = next(
            (other for other, held in holdings.held.items() if other != key and service.id in held),
            None,
        )
        if holder is None:
            kept.append(service)
            continue
        contested.append(service.id)
        registered = holdings.registered.get(service.id)
        problems.append(
            f"container {service.container_name}: service id {service.id!r}: already "
            f"registered for container "
            f"{registered.container_name if registered else holder[:12]}; skipped"
        )
    return tuple(kept), tuple(contested), tuple(problems)


def orphans_sidecar(old: Service | None, new: Service) -> bool:
    """Re-registering `new` without the sidecar `old` had: Consul would keep the sidecar."""
    had = old is not None and bool(old.connect) and "SidecarService" in (old.connect or {})
    return had and not (new.connect and "SidecarService" in new.connect)


def refresh_after(check: Check) -> float | None:
    """Resend an unchanged result to a TTL check after a third of its TTL."""
    ttl = checks_mod.duration_seconds(str(check.fields.get("TTL", "")))
    return ttl / 3 if ttl > 0 else None


def mirror_health(container: Container, services: Iterable[Service]) -> tuple[CheckUpdate, ...]:
    """The Docker HEALTHCHECK status for each docker-health check (none while "starting":
    the check keeps the initial status it was registered with)."""
    status = _HEALTH_TO_CONSUL.get(container.health or "")
    if status is None:
        return ()
    output = container.health_output or f"Docker reports {container.health}"
    return tuple(
        CheckUpdate(check.check_id, status, output, refresh_after(check), status_only=True)
        for service in services
        for check in service.checks
        if check.kind is CheckKind.DOCKER_HEALTH
    )


def misconfigured(services: Iterable[Service]) -> tuple[CheckUpdate, ...]:
    """Each misconfigured check in the status it was registered with (critical for a
    malformed check key, else warning: checks.build_checks), its output naming the malformed
    keys (the same text as its Notes: Consul's register call takes no Output)."""
    return tuple(
        CheckUpdate(
            check.check_id,
            str(check.fields.get("Status", "critical")),
            str(check.fields["Notes"]),
            refresh_after(check),
        )
        for service in services
        for check in service.checks
        if check.kind is CheckKind.MISCONFIGURED
    )


def script_check(service: Service) -> Check | None:
    """The TTL check a service's script results are reported to, if it has a script."""
    if not service.script:
        return None
    return next((c for c in service.checks if c.kind is CheckKind.SCRIPT), None)


def script_update(check: Check, exit_code: int | None, output: str) -> CheckUpdate:
    """A script run's result (exit_code None: it could not be run; `output` says why)."""
    status = "critical" if exit_code is None else _SCRIPT_EXIT_TO_CONSUL.get(exit_code, "critical")
    return CheckUpdate(check.check_id, status, output, refresh_after(check))


# A probe runs as `timeout -s KILL N COMMAND`: the Docker API has no way to kill an exec, so
# the kill is left to a process inside the container. busybox and coreutils both have it and
# both take whole seconds; a killed probe exits 128 + 9.
_KILL_WRAPPER = "timeout"
_KILLED = 137


def probe_command(command: Sequence[str], timeout: float, killable: bool) -> list[str]:
    """The argv to exec for one script probe; `timeout` in seconds (rounded up: busybox's
    `timeout` takes whole seconds); `killable` False: the container has no `timeout`."""
    if not killable:
        return list(command)
    return [_KILL_WRAPPER, "-s", "KILL", str(max(1, math.ceil(timeout))), *command]


def lacks_kill_wrapper(exit_code: int, output: str) -> bool:
    """The exec failed because the container has no `timeout` on its PATH (Docker answers
    126 "executable file not found", 127 from a shell)."""
    return (
        exit_code in {126, 127}
        and f'"{_KILL_WRAPPER}"' in output
        and ("not found" in output or "no such file" in output.lower())
    )


def probe_update(
    check: Check,
    exit_code: int,
    output: str,
    timeout: float,
    killable: bool,
    timed_out: bool = False,
) -> CheckUpdate:
    """A probe's result. Killed by its `timeout` wrapper (exit 137 under it), or still running
    when Docker's answer was due (`timed_out`: it could not be killed, and the next probe
    waited for it to end): critical, saying so."""
    if killable and exit_code == _KILLED:
        return script_update(check, 2, f"timed out after {timeout:g} s; killed")
    if timed_out:
        return script_update(
            check,
            2,
            f"timed out after {timeout:g} s; not killed: the container has no `timeout` "
            "command, so the next probe waited for this one to end",
        )
    return script_update(check, exit_code, output)


def heartbeat_updates(
    registered: Iterable[Service], stopped: AbstractSet[str] = frozenset()
) -> tuple[CheckUpdate, ...]:
    """-ttl: every registrator heartbeat check passing, sent every time (refresh_after 0),
    except those of containers in `stopped` (kept, not running: never passing)."""
    return tuple(
        CheckUpdate(check.check_id, "passing", "registrator is running", 0.0)
        for service in registered
        if service.container_id not in stopped
        for check in service.checks
        if check.kind is CheckKind.HEARTBEAT
    )


@dataclass(frozen=True)
class Maintenance:
    """Maintenance mode to set on services (PUT /v1/agent/service/maintenance/:id)."""

    service_ids: tuple[str, ...]
    enable: bool
    reason: str = ""


# What `docker stop` waits for a container without Config.StopTimeout before SIGKILL.
DEFAULT_STOP_TIMEOUT = 10
# Past the stop timeout, how long a container may still take to die (dockerd sends SIGKILL
# then, and the `die` event follows) before it counts as having survived its stop signal.
DRAIN_GRACE = 5.0


DRAIN_REASON = "registrator: container is stopping"
# Consul's id for a service's maintenance check (PUT /v1/agent/service/maintenance/:id); its
# Notes hold the reason given.
MAINTENANCE_CHECK_PREFIX = "_service_maintenance:"


def plan_drain(held: Iterable[str]) -> Maintenance:
    """-drain, on a stop signal: the container is about to stop serving."""
    return Maintenance(tuple(sorted(held)), True, DRAIN_REASON)


def maintenance_reasons(checks: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """`GET /v1/agent/checks` → service id → the reason of its maintenance, for services in
    maintenance (set by registrator's -drain or by an operator)."""
    return {
        check_id.removeprefix(MAINTENANCE_CHECK_PREFIX): str(check.get("Notes") or "")
        for check_id, check in checks.items()
        if check_id.startswith(MAINTENANCE_CHECK_PREFIX)
    }


def keep_maintenance(
    registered: Iterable[str], reasons: Mapping[str, str]
) -> tuple[Maintenance, ...]:
    """Re-registering a service with ?replace-existing-checks removes its maintenance check
    (measured on Consul 1.14): put back each one it had, with its reason, ours or not."""
    return tuple(
        Maintenance((service_id,), True, reasons[service_id])
        for service_id in sorted(set(registered))
        if service_id in reasons
    )


def plan_stale_drains(
    reasons: Mapping[str, str],
    held: Mapping[str, Mapping[str, HeldService]],
    running: AbstractSet[str],
) -> Maintenance | None:
    """At the agent's first full reconcile: maintenance registrator set (DRAIN_REASON) on
    services of containers that run. A drain is lifted by the agent that set it, after the
    container's stop window; an agent restarted in that window would otherwise leave it on
    forever. A container still inside its stop window then loses its maintenance early (the
    restarted agent cannot tell a stop in progress from a survivor); one set by an operator
    (any other reason) is left alone."""
    stale = sorted(
        service_id
        for key, services in held.items()
        if key in running
        for service_id in services
        if reasons.get(service_id) == DRAIN_REASON
    )
    return Maintenance(tuple(stale), False) if stale else None


def drains_on(signal: str | None, container: Container | None) -> bool:
    """-drain: a `kill` event with `signal` is the container's own stop signal
    (Config.StopSignal, SIGTERM when unset), sent by `docker stop` or an orchestrator.

    Any other signal (SIGHUP reloads, SIGQUIT thread dumps, SIGUSR1 log rotation, SIGKILL,
    after which `die` follows at once) puts nothing in maintenance. A container already
    gone (None) has nothing to drain.
    """
    if signal is None or container is None or not container.running:
        return False
    return signal_number(signal) == signal_number(container.stop_signal or "SIGTERM")


def drain_window(container: Container) -> float:
    """Seconds after its stop signal until a container still running counts as having
    survived it: its stop timeout (Config.StopTimeout, else docker stop's 10 s), plus
    DRAIN_GRACE. A `docker stop -t N` overriding it is not visible in the event or inspect."""
    timeout = container.stop_timeout
    if timeout is None or timeout < 0:
        timeout = DEFAULT_STOP_TIMEOUT
    return timeout + DRAIN_GRACE


def plan_undrain(container: Container | None, held: Iterable[str]) -> Maintenance | None:
    """After the drain delay: a container that survived its stop signal serves again."""
    if container is None or not container.running:
        return None
    return Maintenance(tuple(sorted(held)), False)


def plan_shutdown(held: Mapping[str, Mapping[str, HeldService]]) -> dict[str, Plan]:
    """-deregister-on-exit: every service this node owns, per container."""
    return {key: Plan(deregister=tuple(sorted(services))) for key, services in held.items()}
