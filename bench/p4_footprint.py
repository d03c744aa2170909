"""P4: the agent's memory and CPU, idle with N containers and during the P2 burst.

Read from /proc/<pid>/stat (utime + stime) and /proc/<pid>/status (VmRSS, VmHWM) of the
agent subprocess. Idle means: everything registered, nothing changing, the default -resync
(30 s) left on, so a 30 s window holds about one full reconcile, as it would in production.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.env import AgentProcess, Footprint, Goal, ProcSampler, Table, proc_stat

RSS_GOAL_MB = 60.0
IDLE_CPU_GOAL_PERCENT = 1.0


@dataclass
class IdleResult:
    view: str  # what the agent saw: the whole shared daemon, or only this run's containers
    scoped: bool
    containers: int
    footprint: Footprint
    full_reconciles: int
    last_full_seconds: float
    events: int  # Docker events the agent handled in the window (other users' containers)


async def idle(
    agent: AgentProcess, containers: int, seconds: float, view: str, scoped: bool
) -> IdleResult:
    import asyncio

    before = await asyncio.to_thread(agent.metrics)
    sampler = ProcSampler(agent.pid, interval=0.5)
    sampler.start()
    await asyncio.sleep(seconds)
    footprint = await sampler.stop()
    after = await asyncio.to_thread(agent.metrics)
    key = 'registrator_reconciles_total{scope="full"}'
    return IdleResult(
        view=view,
        scoped=scoped,
        containers=containers,
        footprint=footprint,
        full_reconciles=int(after.get(key, 0) - before.get(key, 0)),
        last_full_seconds=after.get("registrator_full_reconcile_seconds", 0.0),
        events=int(
            after.get("registrator_events_total", 0) - before.get("registrator_events_total", 0)
        ),
    )


@dataclass
class Snapshot:
    label: str
    containers: int
    rss_mb: float
    hwm_mb: float


def snapshot(agent: AgentProcess, label: str, containers: int) -> Snapshot | None:
    stat = proc_stat(agent.pid)
    if stat is None:
        return None
    return Snapshot(label, containers, stat.rss_mb, stat.hwm_mb)


def report(
    idles: list[IdleResult],
    burst: tuple[int, Footprint] | None,
    snapshots: list[Snapshot],
) -> tuple[Table, list[Goal]]:
    table = Table(
        "P4 footprint of the agent process",
        ["phase", "containers", "window s", "CPU % of a core", "CPU s", "RSS MB", "peak RSS MB"],
    )
    for snap in snapshots:
        table.add(
            snap.label, snap.containers, "", "", "", f"{snap.rss_mb:.1f}", f"{snap.hwm_mb:.1f}"
        )
    peaks = [snap.hwm_mb for snap in snapshots]
    for result in idles:
        fp = result.footprint
        table.add(
            f"idle, {result.view}: {result.full_reconciles} resync(s), "
            f"{result.events} Docker events",
            result.containers,
            f"{fp.seconds:.0f}",
            f"{fp.cpu_percent:.2f}",
            f"{fp.cpu_seconds:.2f}",
            f"{fp.rss_end_mb:.1f}",
            f"{fp.hwm_mb:.1f}",
        )
        peaks.append(fp.hwm_mb)
        table.notes.append(
            f"idle with {result.containers}: last full reconcile took "
            f"{result.last_full_seconds * 1000:.0f} ms (agent's own gauge)"
        )
    if burst is not None:
        n, fp = burst
        table.add(
            f"P2 burst of {n}",
            n,
            f"{fp.seconds:.1f}",
            f"{fp.cpu_percent:.1f}",
            f"{fp.cpu_seconds:.2f}",
            f"{fp.rss_max_mb:.1f}",
            f"{fp.hwm_mb:.1f}",
        )
        peaks.append(fp.hwm_mb)
    peak = max(peaks) if peaks else float("nan")
    goals = [Goal("P4", f"RSS <= {RSS_GOAL_MB:.0f} MB", f"peak {peak:.1f} MB", peak <= RSS_GOAL_MB)]
    for result in idles:
        cpu = result.footprint.cpu_percent
        if not result.scoped and result.events > 0:
            table.notes.append(
                f"idle CPU goal not judged for the {result.view} view: other users' containers "
                f"made {result.events} Docker events in the window, so the agent was not idle"
            )
            continue
        goals.append(
            Goal(
                "P4",
                f"idle CPU < {IDLE_CPU_GOAL_PERCENT:.0f} % of a core with {result.containers}, "
                f"{result.view}",
                f"{cpu:.2f} % ({result.events} Docker events in {result.footprint.seconds:.0f} s)",
                cpu < IDLE_CPU_GOAL_PERCENT,
            )
        )
    scoped = [r for r in idles if r.scoped]
    shared = [r for r in idles if not r.scoped]
    if scoped and shared and shared[0].events > scoped[0].events:
        extra = shared[0].footprint.cpu_percent - scoped[0].footprint.cpu_percent
        events_per_second = (shared[0].events - scoped[0].events) / shared[0].footprint.seconds
        per_event = 10 * extra / events_per_second if events_per_second > 0 else 0.0
        table.notes.append(
            f"other users' churn: {events_per_second:.1f} events/s cost the agent "
            f"{extra:.2f} % of a core, about {per_event:.2f} ms CPU per event"
        )
    table.notes.append(
        "the label-scoped view runs the agent behind bench/docker_proxy.py with "
        "label_scope: it lists and follows only this run's containers, as on a host of its own"
    )
    return table, goals
