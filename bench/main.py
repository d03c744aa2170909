"""Runs the benchmarks (P1 latency, P2 burst, P3 resync, P4 footprint) and records them.

    bench/run --n 50            # quick: 50 samples, 50 background containers, ~3 minutes
    bench/run                   # full: 200 samples / burst of 200, 500 background containers
    bench/run --profile         # also py-spy / pyinstrument profiles of the agent
    bench/run --phases p1,p3    # a subset

Prints one table per benchmark and a goal summary, and replaces this mode's section of
docs/performance.md (machine, date, tables) unless --no-docs is given. Exit status: 0 when
every selected benchmark ran (goals may still be missed: see the summary; --strict makes a
missed goal exit 1), 1 when a benchmark could not be carried out, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors

from bench import p1_latency, p2_burst, p3_resync, p4_footprint
from bench.docker_proxy import ThreadedDockerProxy
from bench.env import (
    REPO,
    RUN_LABEL,
    AgentProcess,
    AsyncConsul,
    BenchEnv,
    BenchError,
    Footprint,
    Goal,
    ProcSampler,
    StartEvents,
    Table,
)
from bench.profiling import PySpy, summarize_collapsed

DEFAULT_CONSUL_BIN = "/root/.cache/registrator-tests/consul-1.14.0/consul"
DOCS = REPO / "docs" / "performance.md"
PHASES = ("p1", "p2", "p3", "p4")


@dataclass
class Options:
    n: int
    scale: int
    phases: set[str]
    profile: bool
    idle_seconds: float
    repeats: int
    time_limit: float
    docs: Path | None
    strict: bool


@dataclass
class Collected:
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    profiles: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def show(self, *tables: Table) -> None:
        for table in tables:
            self.tables.append(table)
            print("\n" + table.text() + "\n", flush=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def run_all(env: BenchEnv, opts: Options, out: Collected) -> None:
    docker = env.async_docker()
    events = StartEvents(docker, env.run_id)
    await events.start()
    profile_dir = env.work / "profiles" if opts.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    p1_runs: list[p1_latency.LatencySamples] = []
    idles: list[p4_footprint.IdleResult] = []
    snapshots: list[p4_footprint.Snapshot] = []
    burst_footprint: tuple[int, Footprint] | None = None
    consuls: list[AsyncConsul] = []
    others = env.running_containers()
    if others:
        out.notes.append(
            f"{others} containers of other users were running on this dockerd when the run "
            "started (not registered: the agents run with -explicit; still listed and inspected)"
        )
    try:
        if "p1" in opts.phases or "p4" in opts.phases:
            log(f"P1: {opts.n} samples with 0 other bench containers")
            consul = env.consul("p1idle")
            aconsul = AsyncConsul(consul.http_addr)
            consuls.append(aconsul)
            agent = env.agent(consul, "p1idle")
            await agent.wait_ready()
            await asyncio.sleep(1)
            snap = p4_footprint.snapshot(agent, "started, nothing registered", 0)
            if snap:
                snapshots.append(snap)
            containers = await env.create("p1idle", opts.n + p1_latency.WARMUP)
            await p1_latency.wait_idle(agent)
            if "p1" in opts.phases:
                p1_runs.append(
                    await p1_latency.measure("idle", 0, agent, aconsul, docker, events, containers)
                )
            agent.stop()
            env.stop_consul(consul)
            await env.remove(containers)

        if "p2" in opts.phases:
            log(f"P2: burst of {opts.n}")
            consul = env.consul("p2")
            aconsul = AsyncConsul(consul.http_addr)
            consuls.append(aconsul)
            agent = env.agent(consul, "p2")
            await agent.wait_ready()
            containers = await env.create("burst", opts.n)
            await p1_latency.wait_idle(agent)
            spy = None
            if profile_dir is not None:
                spy = PySpy(agent.pid, profile_dir / "p2-burst.txt")
                spy.start()
            sampler = ProcSampler(agent.pid, interval=0.1)
            sampler.start()
            try:
                times = await p2_burst.burst(
                    agent,
                    aconsul,
                    docker,
                    events,
                    containers,
                    p2_burst.cpu_breakdown(agent, consul.process.pid),
                )
            finally:
                footprint = await sampler.stop()
                if spy is not None:
                    spy.stop()
            burst_footprint = (opts.n, footprint)
            log(f"P2: burst done in {times.total_seconds:.2f} s; bare loops")
            agent.stop()  # the bare loops get the Consul agent to themselves
            bare = await p2_burst.bare_loops(aconsul, opts.n)
            tables, goal = p2_burst.report(times, bare, footprint)
            out.show(*tables)
            out.goals.append(goal)
            if spy is not None:
                out.profiles.append(
                    summarize_collapsed(
                        spy.output, f"py-spy: agent during the P2 burst of {opts.n}"
                    )
                )
            env.stop_consul(consul)
            await env.remove(containers)

        if {"p1", "p3", "p4"} & opts.phases:
            log(f"starting {opts.scale} background containers")
            started = time.perf_counter()
            await env.create("bg", opts.scale, start=True)
            log(f"  {opts.scale} running after {time.perf_counter() - started:.1f} s")

        if "p3" in opts.phases:
            log(f"P3: full reconciles with {opts.scale} containers (in-process agent)")
            costs, running, pyinstrument_path = await p3_resync.run(
                env, opts.scale, opts.repeats, profile_dir
            )
            table, goals = p3_resync.report(costs, opts.scale, running)
            out.show(table)
            out.goals += goals
            if pyinstrument_path is not None:
                out.notes.append(
                    f"pyinstrument profile of 3 warm full reconciles: {pyinstrument_path}"
                )

        if "p4" in opts.phases:
            log(f"P4: idle for {opts.idle_seconds:.0f} s, only this run's containers in view")
            proxy = ThreadedDockerProxy(
                env.work / "p4-docker.sock",
                env.docker_socket,
                label_scope=f"{RUN_LABEL}={env.run_id}",
            )
            proxy.start()
            consul = env.consul("p4scoped")
            aconsul = AsyncConsul(consul.http_addr)
            consuls.append(aconsul)
            try:
                agent = env.agent(consul, "p4scoped", docker_host=proxy.docker_host)
                await agent.wait_ready(timeout=300)
                await aconsul.wait_count(
                    agent.node, opts.scale, timeout=300, name_prefix="bench-bg-"
                )
                await p1_latency.wait_idle(agent)
                idles.append(
                    await idle_window(
                        agent, opts, profile_dir, "this run's containers only", True, out
                    )
                )
                agent.stop()
            finally:
                proxy.stop()
                env.stop_consul(consul)

        if "p1" in opts.phases or "p4" in opts.phases:
            log(f"P4/P1: agent with {opts.scale} other containers")
            consul = env.consul("p1load")
            aconsul = AsyncConsul(consul.http_addr)
            consuls.append(aconsul)
            agent = env.agent(consul, "p1load")
            started = time.perf_counter()
            await agent.wait_ready(timeout=300)
            await aconsul.wait_count(agent.node, opts.scale, timeout=300, name_prefix="bench-bg-")
            took = time.perf_counter() - started
            log(f"  agent ready, {opts.scale} registered after {took:.1f} s")
            await p1_latency.wait_idle(agent)
            snap = p4_footprint.snapshot(agent, f"after registering {opts.scale}", opts.scale)
            if snap:
                snapshots.append(snap)
            if "p4" in opts.phases:
                log(f"P4: idle for {opts.idle_seconds:.0f} s, whole daemon")
                idles.append(
                    await idle_window(
                        agent, opts, profile_dir, "whole shared daemon", scoped=False, out=out
                    )
                )
            if "p1" in opts.phases:
                log(f"P1: {opts.n} samples with {opts.scale} other containers")
                containers = await env.create("p1load", opts.n + p1_latency.WARMUP)
                await p1_latency.wait_idle(agent)
                p1_runs.append(
                    await p1_latency.measure(
                        "loaded", opts.scale, agent, aconsul, docker, events, containers
                    )
                )
                await env.remove(containers)
            snap = p4_footprint.snapshot(agent, "end of run", opts.scale)
            if snap:
                snapshots.append(snap)
            agent.stop()
            env.stop_consul(consul)

        if p1_runs:
            table, goals = p1_latency.report(p1_runs)
            out.show(table)
            out.goals += goals
        if "p4" in opts.phases:
            table, goals = p4_footprint.report(idles, burst_footprint, snapshots)
            out.show(table)
            out.goals += goals
    finally:
        await events.stop()
        await docker.close()
        for client in consuls:
            await client.close()


async def idle_window(
    agent: AgentProcess,
    opts: Options,
    profile_dir: Path | None,
    view: str,
    scoped: bool,
    out: Collected,
) -> p4_footprint.IdleResult:
    spy = None
    if profile_dir is not None:
        spy = PySpy(agent.pid, profile_dir / f"p4-idle-{'scoped' if scoped else 'shared'}.txt")
        spy.start()
    try:
        result = await p4_footprint.idle(agent, opts.scale, opts.idle_seconds, view, scoped)
    finally:
        if spy is not None:
            spy.stop()
    if spy is not None:
        out.profiles.append(
            summarize_collapsed(
                spy.output, f"py-spy: agent idle with {opts.scale} containers, {view}"
            )
        )
    return result


# --------------------------------------------------------------------------------------------
# The machine and the docs


def _command(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"? ({err})"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0]
        if (done.stdout or done.stderr)
        else "?"
    )


def machine(env: BenchEnv) -> list[tuple[str, str]]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    version = env.client.version()
    consul_bin = os.environ.get("CONSUL_BIN", "consul")
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return [
        ("date (UTC)", _command(["date", "-u"])),
        ("cpus (nproc)", f"{os.cpu_count()} ({cpu_model})"),
        ("memory", f"{mem_kb / 1024 / 1024:.1f} GiB"),
        ("kernel", platform.release()),
        ("docker", f"{version.get('Version')} (API {version.get('ApiVersion')})"),
        ("consul", _command([consul_bin, "version"]) + " (-dev agent, in-memory Raft)"),
        ("python", sys.version.split()[0]),
    ]


def mode_key(opts: Options) -> tuple[str, str]:
    if (opts.n, opts.scale) == (50, 50):
        return "quick", "Quick run"
    if (opts.n, opts.scale) == (200, 500):
        return "full", "Full run"
    return f"n{opts.n}-m{opts.scale}", "Custom run"


def render_section(env: BenchEnv, opts: Options, out: Collected, argv: list[str]) -> str:
    key, title = mode_key(opts)
    lines = [
        f"<!-- bench:{key}:begin -->",
        f"### {title}: N={opts.n}, {opts.scale} containers",
        "",
        "`" + " ".join(["bench/run", *argv]) + "`",
        "",
        "| machine | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in machine(env)]
    lines += ["", "#### Goals", "", "| bench | goal | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {g.benchmark} | {g.goal} | {g.measured} | **{g.verdict}** |" for g in out.goals]
    for table in out.tables + out.profiles:
        lines += ["", table.markdown()]
    if out.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in out.notes]
    lines.append(f"<!-- bench:{key}:end -->")
    return "\n".join(lines)


DOCS_SKELETON = """# Performance

Measured with `bench/run` (see bench/main.py): the real agent against a real `consul agent
-dev` and the real Docker daemon. The sections between `bench:` markers are rewritten by each
run of their mode; the rest of this file is written by hand.

## Results

<!-- bench:insert -->
"""


def update_docs(path: Path, key: str, section: str) -> None:
    text = path.read_text() if path.exists() else DOCS_SKELETON
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    elif "<!-- bench:insert -->" in text:
        text = text.replace("<!-- bench:insert -->", section + "\n\n<!-- bench:insert -->", 1)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


# --------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__.split("\n\n", 1)[0] if __doc__ else None
    )
    parser.add_argument(
        "--n", type=int, default=200, help="P1 samples per scenario and P2 burst size (default 200)"
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=None,
        help="background containers for P1 (loaded), P3 and P4 (default: 500, or N when N < 200)",
    )
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset")
    parser.add_argument("--profile", action="store_true", help="py-spy / pyinstrument profiles")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="P4 idle window")
    parser.add_argument("--repeats", type=int, default=5, help="P3 warm full reconciles")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=1200.0,
        help="abort (and clean up) after this many seconds (default 1200)",
    )
    parser.add_argument("--docs", type=Path, default=DOCS, help="file to update")
    parser.add_argument("--no-docs", action="store_true", help="do not touch the docs")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    phases = {p.strip().lower() for p in args.phases.split(",") if p.strip()}
    unknown = phases - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.n < 5:
        parser.error("--n must be at least 5")
    scale = args.scale if args.scale is not None else (500 if args.n >= 200 else args.n)
    return Options(
        n=args.n,
        scale=scale,
        phases=phases,
        profile=args.profile,
        idle_seconds=args.idle_seconds,
        repeats=max(1, args.repeats),
        time_limit=args.time_limit,
        docs=None if args.no_docs else args.docs,
        strict=args.strict,
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = parse(args)
    if not os.environ.get("CONSUL_BIN") and Path(DEFAULT_CONSUL_BIN).exists():
        os.environ["CONSUL_BIN"] = DEFAULT_CONSUL_BIN
    began = time.monotonic()
    try:
        env = BenchEnv()
        env.__enter__()  # on failure it has cleaned up after itself
    except (BenchError, docker.errors.DockerException) as err:
        log(f"cannot set up: {err}")
        return 1
    try:
        status = run(env, opts, args)
    finally:
        env.__exit__()
    log(f"done in {time.monotonic() - began:.0f} s")
    return status


def run(env: BenchEnv, opts: Options, args: list[str]) -> int:
    """Run the benchmarks in `env`, print and record the results; the exit status."""
    out = Collected()
    status = 0
    log(
        f"bench run {env.run_id}: N={opts.n}, {opts.scale} containers, phases "
        f"{','.join(sorted(opts.phases))}; logs in {os.path.relpath(env.work)}"
    )

    async def limited() -> None:
        async with asyncio.timeout(opts.time_limit):
            await run_all(env, opts, out)

    try:
        asyncio.run(limited())
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        status = 130
    except TimeoutError:
        log(f"time limit of {opts.time_limit:.0f} s reached; cleaning up")
        status = 1
    except BenchError as err:
        log(f"benchmark failed: {err}")
        status = 1
    except Exception:
        traceback.print_exc()
        status = 1
    if out.goals:
        summary = Table("Goals", ["bench", "goal", "measured", "verdict"])
        for goal in out.goals:
            summary.add(goal.benchmark, goal.goal, goal.measured, goal.verdict)
        print("\n" + summary.text() + "\n")
    for table in out.profiles:
        print("\n" + table.text() + "\n")
    for note in out.notes:
        print(f"note: {note}")
    if status == 0 and opts.docs is not None:
        key, _ = mode_key(opts)
        update_docs(opts.docs, key, render_section(env, opts, out, args))
        log(f"updated {os.path.relpath(opts.docs)} (section '{key}')")
    elif opts.docs is not None:
        log("docs not updated: the run did not complete")
    if status == 0 and opts.strict and not all(goal.passed for goal in out.goals):
        return 1
    return status
