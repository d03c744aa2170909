"""P2: N containers started at once; how long until all N are registered.

N containers are created beforehand; then all are started, 8 at a time, as fast as dockerd
takes them. dockerd's own time is its first `start` event to its last; the agent's is the first
`start` event to the moment every service is visible in the local Consul agent. Against it: a
bare loop that PUTs N registrations of the same shape to the same Consul agent, sequentially and
concurrently, and, for the server's side, N `PUT /v1/catalog/register` (each one a Raft write).

Visibility is checked one service at a time in start order (`GET /v1/agent/service/<id>`,
retried every 10 ms while absent), which costs Consul one small request per service instead of
re-listing hundreds of services many times a second.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass

from bench.env import (
    AgentProcess,
    AsyncConsul,
    AsyncDocker,
    BenchContainer,
    BenchError,
    CpuBreakdown,
    Footprint,
    Goal,
    StartEvents,
    Table,
    ms,
    percentile,
    pids_named,
    registered_times,
    registration_like,
)

START_CONCURRENCY = 8
BARE_ROUNDS = 3  # each bare loop runs this often; the median rate is reported
GOAL_FRACTION = 0.8


@dataclass
class BurstTimes:
    n: int
    per_container: list[float]  # start event -> the agent logged "registered", seconds
    docker_seconds: float  # first start event -> last start event
    total_seconds: float  # first start event -> all visible
    cpu_wall: float
    cpu_busy: float
    cpu: dict[str, float]


async def burst(
    agent: AgentProcess,
    consul: AsyncConsul,
    docker: AsyncDocker,
    events: StartEvents,
    containers: list[BenchContainer],
    cpu: CpuBreakdown,
    timeout: float = 300.0,  # noqa: ASYNC109
) -> BurstTimes:
    semaphore = asyncio.Semaphore(START_CONCURRENCY)

    async def start(container: BenchContainer) -> None:
        async with semaphore:
            await docker.start(container.id)

    async def all_visible() -> float:
        deadline = time.monotonic() + timeout
        last = 0.0
        for container in containers:
            service_id = container.service_id(agent.node)
            while not await consul.has_service(service_id):
                if time.monotonic() > deadline:
                    raise BenchError(f"burst: {service_id} not registered within {timeout} s")
                await asyncio.sleep(0.01)
            last = time.time()
        return last

    cpu.start()
    watcher = asyncio.create_task(all_visible())
    await asyncio.gather(*(start(c) for c in containers))
    done = await watcher
    wall, busy, per_process = cpu.stop()
    starts = [await events.wait_for(c.id) for c in containers]
    first, last = min(starts) / 1e9, max(starts) / 1e9
    logged = registered_times(agent.log_path)
    per_container = [
        logged[c.service_id(agent.node)] - start / 1e9
        for c, start in zip(containers, starts, strict=True)
        if c.service_id(agent.node) in logged
    ]
    return BurstTimes(
        n=len(containers),
        per_container=per_container,
        docker_seconds=last - first,
        total_seconds=done - first,
        cpu_wall=wall,
        cpu_busy=busy,
        cpu=per_process,
    )


def cpu_breakdown(agent: AgentProcess, consul_pid: int) -> CpuBreakdown:
    return CpuBreakdown(
        {
            "registrator agent": [agent.pid],
            "consul (dev server)": [consul_pid],
            "dockerd": pids_named("dockerd"),
            "containerd": pids_named("containerd"),
            "bench (this process)": [os.getpid()],
        }
    )


@dataclass
class BareRates:
    agent_sequential: float
    agent_concurrent: dict[int, float]
    catalog_sequential: float
    catalog_concurrent: float
    catalog_caught_up: float  # sequential agent loop done -> catalog holds all N


async def bare_loops(consul: AsyncConsul, n: int) -> BareRates:
    """The same N registrations without the agent, to the same Consul agent."""

    def bodies(tag: str) -> list[dict[str, object]]:
        return [
            registration_like(f"bench-bare-{tag}-{i}", f"bench-bare-{tag}-{i}", "198.18.16.9")
            for i in range(n)
        ]

    async def cleanup(items: list[dict[str, object]]) -> None:
        semaphore = asyncio.Semaphore(16)

        async def one(service_id: str) -> None:
            async with semaphore:
                await consul.deregister(service_id)

        await asyncio.gather(*(one(str(b["ID"])) for b in items))

    async def loop(tag: str, width: int) -> float:
        """One pass over N fresh registrations, `width` in flight; its rate. The Consul
        agent is left as it was (the N are deregistered, off the clock)."""
        items = bodies(tag)
        started = time.perf_counter()
        if width == 1:
            for body in items:
                await consul.timed_register(body)
        else:
            semaphore = asyncio.Semaphore(width)

            async def one(body: dict[str, object]) -> None:
                async with semaphore:
                    await consul.timed_register(body)

            await asyncio.gather(*(one(b) for b in items))
        rate = n / (time.perf_counter() - started)
        if tag == "seq0":
            loop_done = time.perf_counter()
            lag.append(await _catalog_holds(consul, "bench-bare-seq0-", n) - loop_done)
        await cleanup(items)
        return rate

    lag: list[float] = []
    sequential = statistics.median([await loop(f"seq{r}", 1) for r in range(BARE_ROUNDS)])
    concurrent = {
        width: statistics.median([await loop(f"c{width}r{r}", width) for r in range(BARE_ROUNDS)])
        for width in (START_CONCURRENCY, 32)
    }
    catalog_seq = statistics.median(
        [await _catalog_writes(consul, n, 1) for _ in range(BARE_ROUNDS)]
    )
    catalog_conc = statistics.median(
        [await _catalog_writes(consul, n, START_CONCURRENCY) for _ in range(BARE_ROUNDS)]
    )
    return BareRates(
        agent_sequential=sequential,
        agent_concurrent=concurrent,
        catalog_sequential=catalog_seq,
        catalog_concurrent=catalog_conc,
        catalog_caught_up=lag[0],
    )


async def _catalog_holds(consul: AsyncConsul, prefix: str, n: int, timeout: float = 60) -> float:  # noqa: ASYNC109
    """perf_counter() when the catalog (the server's state) lists all n services."""
    deadline = time.monotonic() + timeout
    while True:
        _, names = await consul.call("GET", "/v1/catalog/services")
        if isinstance(names, dict) and sum(1 for k in names if k.startswith(prefix)) >= n:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise BenchError(f"catalog did not list {n} {prefix}* services within {timeout} s")
        await asyncio.sleep(0.01)


async def _catalog_writes(consul: AsyncConsul, n: int, width: int) -> float:
    """N `PUT /v1/catalog/register` of one service each on a fake node: the server's Raft
    write rate (a -dev server keeps Raft in memory: an upper bound for a real one)."""
    node = f"bench-fake-node-{width}"
    semaphore = asyncio.Semaphore(width)

    async def one(index: int) -> None:
        service = registration_like(f"bench-cat-{index}", "bench-cat", "198.18.16.250")
        service["Service"] = service.pop("Name")  # the catalog API spells it so
        body = {"Node": node, "Address": "198.18.16.250", "Service": service}
        async with semaphore:
            status, text = await consul.call("PUT", "/v1/catalog/register", body=body)
        if status != 200:
            raise BenchError(f"catalog register: HTTP {status}: {text}")

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    rate = n / (time.perf_counter() - started)
    await consul.call("PUT", "/v1/catalog/deregister", body={"Node": node})
    return rate


def report(times: BurstTimes, bare: BareRates, footprint: Footprint) -> tuple[list[Table], Goal]:
    n = times.n
    tail = times.total_seconds - times.docker_seconds
    adjusted = n / tail if tail > 0 else float("inf")
    table = Table(
        f"P2 burst: {n} containers started, {START_CONCURRENCY} at a time",
        ["what", "seconds", "rate /s"],
    )
    table.add(
        "dockerd: first -> last start event",
        f"{times.docker_seconds:.2f}",
        f"{n / times.docker_seconds:.0f}",
    )
    table.add(
        "agent: first start event -> all N visible",
        f"{times.total_seconds:.2f}",
        f"{n / times.total_seconds:.0f}",
    )
    table.add("agent beyond dockerd (tail after last start)", f"{tail:.3f}", f"{adjusted:.0f}")
    table.add(
        "bare PUT loop, sequential",
        f"{n / bare.agent_sequential:.2f}",
        f"{bare.agent_sequential:.0f}",
    )
    for width, rate in bare.agent_concurrent.items():
        table.add(f"bare PUT loop, {width} concurrent", f"{n / rate:.2f}", f"{rate:.0f}")
    table.add(
        "catalog (server) register, sequential",
        f"{n / bare.catalog_sequential:.2f}",
        f"{bare.catalog_sequential:.0f}",
    )
    table.add(
        f"catalog (server) register, {START_CONCURRENCY} concurrent",
        f"{n / bare.catalog_concurrent:.2f}",
        f"{bare.catalog_concurrent:.0f}",
    )
    table.add(
        "anti-entropy: sequential loop done -> catalog has all", f"{bare.catalog_caught_up:.3f}", ""
    )
    table.notes.append(
        "rate of 'agent beyond dockerd' = N / (agent time - dockerd time), the agent's rate "
        "once dockerd's own time is subtracted; the goal compares it with the sequential loop"
    )
    table.notes.append(
        f"bare loops: median rate of {BARE_ROUNDS} passes; the Consul agent here is a -dev "
        "server: Raft and the catalog are in memory"
    )
    if times.per_container:
        values = times.per_container
        table.add(
            f"per container: start event -> agent logged 'registered' (p50/p95/p99/max ms, "
            f"{len(values)} of {n})",
            "/".join(ms(percentile(values, q)) for q in (50, 95, 99)) + f"/{ms(max(values))}",
            "",
        )

    cpu = Table(
        f"P2 burst: CPU while {n} containers start and register "
        f"({times.cpu_wall:.2f} s window, 2 cores = 200 %)",
        ["process", "CPU s", "% of one core"],
    )
    for name, seconds in sorted(times.cpu.items(), key=lambda kv: -kv[1]):
        cpu.add(name, f"{seconds:.2f}", f"{100 * seconds / times.cpu_wall:.0f}")
    others = times.cpu_busy - sum(times.cpu.values())
    cpu.add(
        "everything else (runc, shims, kernel, other sessions)",
        f"{others:.2f}",
        f"{100 * others / times.cpu_wall:.0f}",
    )
    cpu.add(
        "machine total busy",
        f"{times.cpu_busy:.2f}",
        f"{100 * times.cpu_busy / times.cpu_wall:.0f}",
    )
    agent_cpu = times.cpu.get("registrator agent", 0.0)
    cpu.notes.append(
        f"agent CPU per registration: {ms(agent_cpu / n)} ms; agent RSS during the burst: "
        f"{footprint.rss_start_mb:.1f} -> max {footprint.rss_max_mb:.1f} MB"
    )
    goal = Goal(
        "P2",
        f"rate beyond dockerd >= {GOAL_FRACTION} x bare sequential PUT rate",
        f"{adjusted:.0f}/s vs {GOAL_FRACTION} x {bare.agent_sequential:.0f}/s",
        adjusted >= GOAL_FRACTION * bare.agent_sequential,
    )
    return [table, cpu], goal
