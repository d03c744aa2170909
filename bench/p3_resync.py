"""P3: a full reconcile with N running containers and nothing changed.

The agent runs in this process (the real Agent, built from the real option parser) so its
own counters can be read: `consul.requests`, `consul.writes`, `reconciler.stats`. Its Docker
calls are counted by the recording proxy in front of the daemon's socket (DOCKER_HOST points
at it), not by patching the agent. The proxy runs on its own thread and event loop, and
shows the agent only this run's containers, so other users of a shared daemon do not add
their churn to the counts.

Rows: the cold start (everything is new: N registrations), then warm full reconciles with
nothing changed (goal: 0 writes, 1 Consul read, 1 Docker list), then one after a service was
edited behind the agent's back (expected: exactly 1 write).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.docker_proxy import ThreadedDockerProxy
from bench.env import RUN_LABEL, AsyncConsul, BenchEnv, BenchError, Goal, Table, ms, quote
from registrator.agent import Agent
from registrator.arguments import parse_args
from registrator.consul import ConsulClient
from registrator.docker import DockerClient

LIST = "GET /containers/json"
INSPECT = "GET /containers/{id}/json"
EVENTS = "GET /events"


@dataclass
class ReconcileCost:
    label: str
    seconds: float
    cpu_seconds: float  # of the agent's thread (the proxy runs on another thread)
    consul_requests: int
    consul_writes: int
    docker: Counter[str]
    container_reconciles: int
    events_seen: int
    inspected: list[str] = field(default_factory=list)  # names (or ids) of inspected containers

    @property
    def docker_other(self) -> int:
        return sum(v for k, v in self.docker.items() if k not in {LIST, INSPECT, EVENTS})


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"P3: {what} within {timeout} s")
        await asyncio.sleep(0.05)


async def run(
    env: BenchEnv, scale: int, repeats: int, profile_dir: Path | None
) -> tuple[list[ReconcileCost], int, Path | None]:
    """Returns the costs, the number of running containers on the daemon, and the
    pyinstrument report (when profiling)."""
    consul_agent = env.consul("p3")
    # Scoped to this run's containers: on a daemon shared with other users, their churn would
    # otherwise add event-driven writes and inspects to the reconciles being counted.
    proxy = ThreadedDockerProxy(
        env.work / "p3-docker.sock", env.docker_socket, label_scope=f"{RUN_LABEL}={env.run_id}"
    )
    proxy.start()
    node = env.node_name("p3")
    settings = parse_args(
        [
            "-node",
            node,
            "-internal",
            "-explicit",
            "-resync",
            "0",
            f"consul://{consul_agent.http_addr}",
        ],
        {"DOCKER_HOST": proxy.docker_host},
    ).settings
    docker = DockerClient(settings.docker_host)
    consul = ConsulClient(settings.consul)
    agent = Agent(settings, docker, consul)
    stop = asyncio.Event()
    costs: list[ReconcileCost] = []
    probe = AsyncConsul(consul_agent.http_addr)
    profile_path: Path | None = None
    task: asyncio.Task[None] | None = None
    # The in-process agent logs like the real one (INFO, one line per registration), to a file.
    agent_logger = logging.getLogger("registrator")
    handler = logging.FileHandler(env.work / "agent-p3.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = (agent_logger.level, agent_logger.propagate)
    agent_logger.addHandler(handler)
    agent_logger.setLevel(logging.INFO)
    agent_logger.propagate = False
    ours = f":rb-{env.run_id}-bg-"

    def owned_bench() -> int:
        assert agent.reconciler is not None
        return sum(1 for sid in agent.reconciler.owned_service_ids() if ours in sid)

    try:
        started = time.perf_counter()
        cpu_started = time.thread_time()
        await agent.start()
        reconciler = agent.reconciler
        assert reconciler is not None
        task = asyncio.create_task(agent.run(stop))
        await _wait(lambda: reconciler.stats.full_reconciles >= 1, 300, "no first full reconcile")
        await _wait(lambda: owned_bench() >= scale, 120, "not all registered")
        await reconciler.idle()
        costs.append(
            ReconcileCost(
                "cold start (all new)",
                reconciler.stats.last_full_seconds,
                time.thread_time() - cpu_started,
                consul.requests,
                consul.writes,
                proxy.counts(),
                reconciler.stats.container_reconciles,
                reconciler.stats.events,
            )
        )
        print(f"  P3: agent up and {scale} registered in {time.perf_counter() - started:.1f} s")
        await asyncio.sleep(0.5)

        async def measured(label: str) -> None:
            mark = proxy.mark()
            requests, writes = consul.requests, consul.writes
            reconciles, events = reconciler.stats.container_reconciles, reconciler.stats.events
            begun = time.perf_counter()
            cpu_begun = time.thread_time()
            if not await reconciler.full_reconcile():
                raise BenchError(f"P3: a full reconcile failed; see {handler.baseFilename}")
            inspected = [
                item.path.split("/containers/", 1)[1].split("/", 1)[0]
                for item in proxy.requests_since(mark)
                if item.endpoint == INSPECT
            ]
            costs.append(
                ReconcileCost(
                    label,
                    time.perf_counter() - begun,
                    time.thread_time() - cpu_begun,
                    consul.requests - requests,
                    consul.writes - writes,
                    proxy.counts(since=mark),
                    reconciler.stats.container_reconciles - reconciles,
                    reconciler.stats.events - events,
                    [await asyncio.to_thread(env.container_name, cid) for cid in inspected],
                )
            )

        for index in range(repeats):
            await measured(f"warm #{index + 1}, nothing changed")

        if profile_dir is not None:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005, async_mode="enabled")
            with profiler:
                for _ in range(3):
                    await reconciler.full_reconcile()
            profile_path = profile_dir / "p3-full-reconcile.pyinstrument.txt"
            profile_path.write_text(
                profiler.output_text(unicode=False, color=False, show_all=False)
            )

        # One service edited behind the agent's back: the next reconcile must put it back.
        victim = next(sid for sid in reconciler.owned_service_ids() if ours in sid)
        status, entry = await probe.call("GET", f"/v1/agent/service/{quote(victim)}")
        if status != 200 or not isinstance(entry, dict):
            raise BenchError(f"P3: cannot read {victim}")
        edited = {
            "ID": entry["ID"],
            "Name": entry["Service"],
            "Address": entry["Address"],
            "Port": int(entry["Port"]) + 1000,
            "Tags": entry.get("Tags") or [],
            "Meta": entry.get("Meta") or {},
        }
        await probe.call("PUT", "/v1/agent/service/register", body=edited)
        await measured("after 1 service was edited out of band")
        return costs, env.running_containers(), profile_path
    finally:
        stop.set()
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
        await docker.close()
        await consul.close()
        await probe.close()
        proxy.stop()
        env.stop_consul(consul_agent)
        agent_logger.removeHandler(handler)
        handler.close()
        agent_logger.setLevel(saved[0])
        agent_logger.propagate = saved[1]


def report(costs: list[ReconcileCost], scale: int, running: int) -> tuple[Table, list[Goal]]:
    table = Table(
        f"P3 full reconcile with {scale} bench containers running "
        f"({running} running on the daemon in all)",
        [
            "reconcile",
            "wall ms",
            "CPU ms",
            "Consul requests",
            "Consul writes",
            "Docker list",
            "Docker inspect",
            "Docker other",
            "containers reconciled",
        ],
    )
    for cost in costs:
        table.add(
            cost.label,
            ms(cost.seconds),
            ms(cost.cpu_seconds),
            cost.consul_requests,
            cost.consul_writes,
            cost.docker.get(LIST, 0),
            cost.docker.get(INSPECT, 0),
            cost.docker_other + cost.docker.get(EVENTS, 0),
            cost.container_reconciles,
        )
    table.notes.append(
        "cold start counts everything from startup: /version, /info, the event stream, "
        "agent/self; Docker calls counted by bench/docker_proxy.py in front of the socket"
    )
    table.notes.append(
        "the agent sees only this run's containers (bench/docker_proxy.py label_scope), as on "
        "a host of its own; a Docker event during a warm reconcile would show as an inspect"
    )
    for cost in costs[1:]:
        if cost.inspected:
            table.notes.append(f"{cost.label} inspected: {', '.join(cost.inspected)}")
    warm = [c for c in costs if c.label.startswith("warm")]
    edited = [c for c in costs if c.label.startswith("after")]
    goals = [
        Goal(
            "P3",
            "0 Consul writes per full reconcile when nothing changed",
            f"max {max(c.consul_writes for c in warm)} over {len(warm)} reconciles",
            all(c.consul_writes == 0 for c in warm),
        ),
        Goal(
            "P3",
            "1 Consul call per full reconcile (one list of the agent's services)",
            f"max {max(c.consul_requests for c in warm)}",
            all(c.consul_requests == 1 for c in warm),
        ),
        Goal(
            "P3",
            "1 Docker call per full reconcile (one list, no inspect of unchanged containers)",
            "lists "
            + ",".join(str(c.docker.get(LIST, 0)) for c in warm)
            + "; inspects "
            + ",".join(str(c.docker.get(INSPECT, 0)) for c in warm)
            + "; events meanwhile "
            + ",".join(str(c.events_seen) for c in warm),
            all(
                c.docker.get(LIST, 0) == 1
                and c.docker.get(INSPECT, 0) <= c.events_seen
                and c.docker_other == 0
                for c in warm
            ),
        ),
    ]
    if edited:
        goals.append(
            Goal(
                "P3",
                "a service edited out of band is rewritten: exactly 1 write",
                f"{edited[0].consul_writes} writes",
                edited[0].consul_writes == 1,
            )
        )
    return table, goals
