"""Two decisions the planner owns, end to end against real dockerd and Consul (issue 12):
a kept service of a dead container is never passing, and a released id changes hands at once.
Their tables are in tests/unit/test_plan.py."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest
from docker.models.containers import Container

from registrator.model import META_CONTAINER
from tests.helpers import ConsulAgent, ContainerFactory, async_wait_until
from tests.integration.conftest import StartAgent

# busybox sh as PID 1: SIGUSR1 makes it exit with the given code, SIGTERM with 0 (fast stop).
EXIT_ON_USR1 = "trap 'exit {code}' USR1; trap 'exit 0' TERM INT; sleep 86400 & wait"
HEALTHY = {"test": ["CMD", "true"], "interval": 500_000_000, "start_period": 0}


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def run(containers: ContainerFactory, suffix: str, **kwargs: Any) -> Container:
    return await asyncio.to_thread(containers.run, suffix, **kwargs)


async def test_kept_service_of_a_dead_container_is_critical_and_stays_so(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    running = await start_agent(
        "-deregister", "on-success", "-ttl", "4", "-ttl-refresh", "1", "-resync", "1"
    )
    app = await run(
        containers,
        "crashy",
        command=["sh", "-c", EXIT_ON_USR1.format(code=3)],
        labels={"SERVICE_NAME": unique("crashy")},
        ports={"80/tcp": None},
        healthcheck=HEALTHY,
    )
    service_id = running.service_id(app.name, 80)
    heartbeat = f"service:{service_id}:registrator-ttl"
    mirror = f"service:{service_id}:docker-health"
    await running.wait_registered(service_id)

    def statuses() -> tuple[str, str]:
        checks = consul.checks()
        return checks[heartbeat]["Status"], checks[mirror]["Status"]

    await async_wait_until(
        lambda: statuses() == ("passing", "passing"),
        timeout=15,
        message="heartbeat and mirrored HEALTHCHECK never passing while the container ran",
    )

    await asyncio.to_thread(app.kill, signal="SIGUSR1")
    assert (await asyncio.to_thread(app.wait, timeout=10))["StatusCode"] == 3
    await async_wait_until(
        lambda: statuses() == ("critical", "critical"),
        timeout=10,
        message="checks of the kept service did not turn critical after the exit",
    )
    outputs = {consul.checks()[c]["Output"] for c in (heartbeat, mirror)}
    assert len(outputs) == 1 and outputs.pop().startswith("container exited with code 3 at ")

    # Several heartbeat periods and resyncs later: still kept, still never passing.
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert statuses() == ("critical", "critical")
        assert service_id in consul.services(), "kept under -deregister on-success"
        await asyncio.sleep(0.25)


@pytest.mark.parametrize("restart", [False, True], ids=["same agent", "agent restarted"])
async def test_kept_service_without_checks_of_ours_is_critical_until_it_runs_again(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent, restart: bool
) -> None:
    # No -ttl, no script, no HEALTHCHECK: only the node alias check, passing while the node
    # lives. Docker may give the dead container's address to another container.
    flags = ("-ip", "127.0.0.1", "-deregister", "on-success", "-resync", "1")
    running = await start_agent(*flags)
    name = unique("crashy")
    app = await run(
        containers,
        "crashy",
        command=["sh", "-c", EXIT_ON_USR1.format(code=3)],
        labels={"SERVICE_NAME": name},
        ports={"80/tcp": None},
    )
    service_id = running.service_id(app.name, 80)
    exited = f"service:{service_id}:exited"
    await running.wait_registered(service_id)

    def passing() -> bool:
        entries = consul.get(f"/v1/health/service/{name}?passing")
        return any(entry["Service"]["ID"] == service_id for entry in entries)

    await async_wait_until(passing, timeout=15, message="never passing while it ran")

    await asyncio.to_thread(app.kill, signal="SIGUSR1")
    assert (await asyncio.to_thread(app.wait, timeout=10))["StatusCode"] == 3
    await async_wait_until(
        lambda: not passing(), timeout=10, message="still passing after the container exited"
    )
    check = consul.checks()[exited]
    assert check["Status"] == "critical"
    assert check["Notes"].startswith("container exited with code 3 at ")
    # Several resyncs later: still kept, still not passing.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert service_id in consul.services(), "kept under -deregister on-success"
        assert not passing()
        await asyncio.sleep(0.25)
    if restart:
        # A new agent, on the same node, that never registered the service itself.
        await running.kill()
        running = await start_agent(*flags, node=running.node)
        await running.full_reconcile()
        assert consul.checks()[exited]["Status"] == "critical"
        assert service_id in consul.services() and not passing()

    await asyncio.to_thread(app.start)
    await async_wait_until(passing, timeout=15, message="not passing again once it ran again")
    assert exited not in consul.checks(), "the exited check outlived the exit"


async def test_released_id_changes_hands_at_once_without_a_resync(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    running = await start_agent("-resync", "0")
    service_id = unique("bluegreen")
    labels = {"SERVICE_NAME": service_id, "SERVICE_ID": service_id}
    command = ["sh", "-c", EXIT_ON_USR1.format(code=0)]
    blue = await run(containers, "blue", command=command, labels=labels, ports={"80/tcp": None})
    await running.wait_registered(service_id)
    green = await run(containers, "green", command=command, labels=labels, ports={"80/tcp": None})
    assert running.agent.reconciler is not None
    reconciler = running.agent.reconciler
    await async_wait_until(
        lambda: green.id in reconciler.ledger.waiting,
        timeout=10,
        message="green never noted as waiting for the id blue holds",
    )
    assert consul.services()[service_id]["Meta"][META_CONTAINER] == blue.id

    await asyncio.to_thread(blue.kill, signal="SIGUSR1")
    await asyncio.to_thread(blue.wait, timeout=10)
    died = time.monotonic()
    # With -resync 0 nothing but the hand-over can register green; the issue asks for 1 s,
    # the margin is for a loaded test machine.
    await async_wait_until(
        lambda: (
            consul.services().get(service_id, {}).get("Meta", {}).get(META_CONTAINER) == green.id
        ),
        timeout=3,
        interval=0.05,
        message="green did not take the id when blue died",
    )
    assert time.monotonic() - died < 3
