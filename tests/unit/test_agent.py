"""The Agent against in-memory fakes of our Docker and Consul clients (tests/unit/fakes.py),
with every delay shrunk through Timing: events, reconnects, outages, drain and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from registrator.agent import Agent, StartupError
from registrator.settings import Settings
from registrator.timing import Timing
from tests.unit.fakes import A, B, FakeConsul, FakeDocker, sid, until

FAST = Timing(
    event_backoff=(0.01, 0.05),
    reconcile_backoff=(0.01, 0.05),
    drain_scale=0.005,
    shutdown_idle=0.2,
    shutdown_deregister=0.2,
)


Running = tuple[Agent, asyncio.Event, "asyncio.Task[None]"]


@pytest.fixture
async def start(
    docker: FakeDocker, consul: FakeConsul
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Running] = []

    async def start(**options: object) -> Running:
        settings = Settings(**{"resync": 0, "retry_interval": 1, "node_ttl": 0, **options})  # type: ignore[arg-type]
        agent = Agent(settings, docker, consul, FAST)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await until(lambda: agent.ready or task.done(), "the agent to be ready")
        started.append((agent, stop, task))
        return agent, stop, task

    yield start
    for _, stop, task in started:
        stop.set()
        await asyncio.wait_for(task, 2)


async def test_registers_what_runs_at_startup_and_on_events(
    start: Callable[..., Awaitable[Running]], docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    agent, _, _ = await start()
    assert list(consul.entries) == [sid("web")]
    docker.run(B, "api")
    docker.emit("start", B)
    await until(lambda: sid("api") in consul.entries, "api registered on its event")
    docker.remove(B)
    docker.emit("destroy", B)
    await until(lambda: sid("api") not in consul.entries, "api removed on its event")
    assert agent.reconciler is not None and agent.reconciler.stats.events == 2


async def test_event_stream_breaks_then_resumes_and_catches_up(
    start: Callable[..., Awaitable[Running]], docker: FakeDocker, consul: FakeConsul
) -> None:
    agent, _, _ = await start()
    docker.down = True
    docker.break_stream()
    await until(lambda: not agent.docker_ok, "Docker reported down")
    assert not agent.ready
    docker.run(A, "web")  # started while the stream was down: no event will say so
    docker.down = False
    await until(lambda: sid("web") in consul.entries, "the reconnect's full reconcile")
    await until(lambda: agent.ready, "ready again")
    assert docker.calls["events"] >= 2


async def test_consul_outage_is_retried_with_backoff_until_it_answers(
    start: Callable[..., Awaitable[Running]], docker: FakeDocker, consul: FakeConsul
) -> None:
    agent, _, _ = await start()
    consul.down = True
    docker.run(A, "web")
    docker.emit("start", A)
    await until(lambda: not agent.consul_ok, "Consul reported down")
    assert agent.reconciler is not None
    agent.request_full_reconcile()
    await asyncio.sleep(0.05)
    consul.down = False
    # No new event and no resync timer: the backoff retry alone must catch up.
    await until(lambda: sid("web") in consul.entries, "registered after the outage")
    await until(lambda: agent.ready, "ready again")


async def test_startup_gives_up_after_retry_attempts(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.down = True
    agent = Agent(Settings(retry_attempts=2, retry_interval=1), docker, consul, FAST)
    with pytest.raises(StartupError, match="Docker at"):
        await agent.start()
    assert docker.calls["negotiate"] == 3


async def test_drain_on_stop_signal_and_undrain_when_it_survives(
    start: Callable[..., Awaitable[Running]], docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    await start(drain=True)
    docker.emit("kill", A, signal="15")
    await until(lambda: len(consul.maintenance) == 2, "drained, then back after the recheck")
    assert consul.maintenance == [(sid("web"), True), (sid("web"), False)]


async def test_shutdown_with_work_pending_ends_within_its_budget(
    start: Callable[..., Awaitable[Running]],
    docker: FakeDocker,
    consul: FakeConsul,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, stop, task = await start()
    docker.run(A, "web")
    docker.gates.close("inspect")
    docker.emit("start", A)
    await docker.gates.entered["inspect"].wait()
    with caplog.at_level(logging.WARNING):
        stop.set()
        await asyncio.wait_for(task, 1.0)
    assert "shutdown: in-flight work did not finish in time; exiting anyway" in caplog.messages
    docker.gates.open("inspect")


async def test_shutdown_deregisters_on_exit(
    start: Callable[..., Awaitable[Running]], docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    docker.run(B, "api")
    _, stop, task = await start(deregister_on_exit=True)
    assert len(consul.entries) == 2
    stop.set()
    await asyncio.wait_for(task, 1.0)
    assert consul.entries == {}


async def test_ttl_heartbeats_every_ttl_refresh(docker: FakeDocker, consul: FakeConsul) -> None:
    docker.run(A, "web")

    async def hundredfold(seconds: float) -> None:
        await asyncio.sleep(seconds / 100)

    # -ttl-refresh 5 s, every wait a hundred times shorter: 50 ms between heartbeats.
    timing = replace(FAST, sleep=hundredfold)
    agent = Agent(Settings(resync=0, ttl=10, ttl_refresh=5, node_ttl=0), docker, consul, timing)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    heartbeat = f"service:{sid('web')}:registrator-ttl"
    await until(
        lambda: [u[0] for u in consul.check_updates].count(heartbeat) >= 2, "two heartbeats"
    )
    assert {u[1:] for u in consul.check_updates} == {("passing", "registrator is running")}
    stop.set()
    await asyncio.wait_for(task, 1.0)
