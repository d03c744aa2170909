"""Issue 13 (9): the -drain lifecycle against the real dockerd and Consul agent.

Maintenance is entered for the container's own stop signal only, and a container that traps it
and keeps running stays in maintenance for its whole stop timeout (`--stop-timeout`), not a
fixed 30 s, then comes out of it.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from docker.models.containers import Container

from tests.helpers import ConsulAgent, ContainerFactory, async_wait_until
from tests.integration.conftest import StartAgent
from tests.integration.test_agent import run, unique

# Traps TERM (and HUP, QUIT) and keeps running, like an application finishing its requests.
TRAPS = (
    "trap 'echo draining' TERM; trap 'echo reload' HUP; trap 'echo dump' QUIT; "
    "while true; do sleep 1; done"
)


def with_stop_timeout(
    containers: ContainerFactory, labels: dict[str, str], stop_timeout: int
) -> Container:
    """`docker run --stop-timeout N -p 127.0.0.1::80 IMAGE sh -c TRAPS` (the SDK's `run` has
    no stop_timeout; the API's create has). Removed with the factory's containers."""
    api = containers.client.api
    name = f"drain-{secrets.token_hex(4)}"
    api.create_container(
        containers.image,
        ["sh", "-c", TRAPS],
        name=name,
        labels=labels,
        ports=[80],
        stop_timeout=stop_timeout,
        host_config=api.create_host_config(port_bindings={80: ("127.0.0.1", None)}),
    )
    container = containers.client.containers.get(name)
    containers.created.append(container)
    container.start()
    container.reload()
    return container


async def maintenance(consul: ConsulAgent, service_id: str) -> bool:
    checks = await asyncio.to_thread(consul.checks)
    return f"_service_maintenance:{service_id}" in checks


@pytest.mark.parametrize(
    ("stop_timeout", "held_for"),
    [
        # The example: longer than the 30 s the agent used to give every container.
        pytest.param(40, 34.0, id="--stop-timeout 40"),
        pytest.param(3, 2.0, id="--stop-timeout 3"),
    ],
)
async def test_maintenance_lasts_the_stop_timeout(
    start_agent: StartAgent,
    containers: ContainerFactory,
    consul: ConsulAgent,
    stop_timeout: int,
    held_for: float,
) -> None:
    running = await start_agent("-drain")
    app = await asyncio.to_thread(
        with_stop_timeout, containers, {"SERVICE_NAME": unique("drain")}, stop_timeout
    )
    service_id = running.service_id(app.name, 80)
    await running.wait_registered(service_id)

    # What `docker stop` sends first; the container traps it and keeps running.
    await asyncio.to_thread(app.kill, "SIGTERM")
    sent = time.monotonic()
    await async_wait_until(
        lambda: maintenance(consul, service_id), timeout=10, message="no maintenance after TERM"
    )
    while time.monotonic() - sent < held_for:
        assert await maintenance(consul, service_id), (
            f"maintenance ended {time.monotonic() - sent:.1f} s after TERM, before the "
            f"container's {stop_timeout} s stop timeout"
        )
        await asyncio.sleep(1.0)
    # Still running past its stop timeout (and the 5 s grace): it serves again.
    await async_wait_until(
        lambda: out_of_maintenance(consul, service_id),
        timeout=stop_timeout + 15 - held_for,
        message="a container that survived its stop timeout stayed in maintenance",
    )
    assert service_id in running.of_containers(app.id)


async def out_of_maintenance(consul: ConsulAgent, service_id: str) -> bool:
    return not await maintenance(consul, service_id)


@pytest.mark.parametrize("signal", ["SIGHUP", "SIGQUIT"])
async def test_other_signals_enter_no_maintenance(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent, signal: str
) -> None:
    running = await start_agent("-drain")
    app = await run(
        containers,
        "reload",
        command=["sh", "-c", TRAPS],
        labels={"SERVICE_NAME": unique("reload")},
        ports={"80/tcp": ("127.0.0.1", None)},
    )
    service_id = running.service_id(app.name, 80)
    await running.wait_registered(service_id)
    assert running.agent.reconciler is not None
    stats = running.agent.reconciler.stats
    events = stats.events
    await asyncio.to_thread(app.kill, signal)
    await async_wait_until(
        lambda: stats.events > events, timeout=10, message=f"no event for the {signal}"
    )
    await asyncio.sleep(2.0)  # the drain inspects the container first; give it time to act
    assert not await maintenance(consul, service_id), f"{signal} put the service in maintenance"
    # The same container's stop signal does (so the agent was listening all along).
    await asyncio.to_thread(app.kill, "SIGTERM")
    await async_wait_until(
        lambda: maintenance(consul, service_id), timeout=10, message="no maintenance after TERM"
    )


async def test_reregistration_keeps_an_operators_maintenance(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    """Consul 1.14 drops `_service_maintenance:<id>` when a service is re-registered with
    ?replace-existing-checks (measured); the agent puts it back with its reason."""
    running = await start_agent("-drain")
    app = await run(
        containers,
        "edited",
        command=["sh", "-c", TRAPS],
        labels={"SERVICE_NAME": unique("edited")},
        ports={"80/tcp": ("127.0.0.1", None)},
    )
    service_id = running.service_id(app.name, 80)
    await running.wait_registered(service_id)
    entry = (await asyncio.to_thread(consul.services))[service_id]
    # Someone edits the registration by hand; the next full reconcile re-registers it.
    edited = {k: entry[k] for k in ("ID", "Address", "Meta", "Tags")} | {"Name": entry["Service"]}
    await asyncio.to_thread(
        consul.put, "/v1/agent/service/register", {**edited, "Port": entry["Port"] + 1}
    )
    await asyncio.to_thread(
        consul.put,
        f"/v1/agent/service/maintenance/{service_id}?enable=true&reason=operator:%20disk%20swap",
    )
    await running.full_reconcile()
    assert (await asyncio.to_thread(consul.services))[service_id]["Port"] == entry["Port"]
    check = (await asyncio.to_thread(consul.checks)).get(f"_service_maintenance:{service_id}")
    assert check is not None, "the re-registration dropped the operator's maintenance"
    assert check["Notes"] == "operator: disk swap"


async def test_agent_restarted_while_draining_lifts_its_maintenance(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    first = await start_agent("-drain")
    app = await asyncio.to_thread(
        with_stop_timeout, containers, {"SERVICE_NAME": unique("restart")}, 60
    )
    service_id = first.service_id(app.name, 80)
    await first.wait_registered(service_id)
    await asyncio.to_thread(app.kill, "SIGTERM")
    await async_wait_until(
        lambda: maintenance(consul, service_id), timeout=10, message="no maintenance after TERM"
    )
    await first.stop()  # inside the container's 60 s window: it would lift nothing now
    assert await maintenance(consul, service_id)
    await start_agent("-drain", node=first.node)
    await async_wait_until(
        lambda: out_of_maintenance(consul, service_id),
        timeout=10,
        message="the restarted agent left its predecessor's maintenance on",
    )
