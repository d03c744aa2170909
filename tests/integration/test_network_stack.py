"""Issue 13 (2): a container sharing another's network stack (`--network container:app`) is
registered where that container is reached, against the real dockerd and Consul agent.

Docker gives a restarted container a new stack and leaves the containers that shared the old
one in it (only loopback left), so the sidecar is deregistered when its owner stops or
restarts, and registered again when it is restarted itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from docker.models.containers import Container

from tests.helpers import ConsulAgent, ContainerFactory, host_port
from tests.integration.conftest import RunningAgent, StartAgent
from tests.integration.test_agent import run, unique

IDLE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def address_of(container: Container) -> str:
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


async def owner_and_sidecar(
    running: RunningAgent, containers: ContainerFactory, **owner: Any
) -> tuple[Container, Container, str]:
    """`app` (not registered itself) and `metrics` on its stack, registered: (app, metrics,
    the service id of metrics)."""
    app = await run(containers, "app", command=IDLE, labels={"SERVICE_IGNORE": "true"}, **owner)
    metrics = await run(
        containers,
        "metrics",
        command=IDLE,
        labels={"SERVICE_NAME": unique("metrics"), "SERVICE_PORT": "9100"},
        network_mode=f"container:{app.id}",
    )
    service_id = running.service_id(metrics.name, 9100)
    await running.wait_registered(service_id)
    return app, metrics, service_id


async def test_sidecar_is_registered_at_its_owners_address_with_internal(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    running = await start_agent("-internal")
    app, metrics, service_id = await owner_and_sidecar(running, containers)
    entry = (await asyncio.to_thread(consul.services))[service_id]
    assert (entry["Address"], entry["Port"]) == (address_of(app), 9100)

    # The owner restarts: the sidecar is left in the old stack, so it is deregistered ...
    await asyncio.to_thread(app.restart, timeout=1)
    await running.wait_deregistered(service_id)
    # ... until it is restarted too, and joins the owner's stack again.
    await asyncio.to_thread(metrics.restart, timeout=1)
    await running.wait_registered(service_id)
    entry = (await asyncio.to_thread(consul.services))[service_id]
    assert (entry["Address"], entry["Port"]) == (address_of(app), 9100)

    # The owner gone: nothing to reach it at.
    await asyncio.to_thread(app.remove, force=True)
    await running.wait_deregistered(service_id)


async def test_sidecar_is_registered_at_the_port_its_owner_publishes(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    running = await start_agent()
    app, _, service_id = await owner_and_sidecar(
        running, containers, ports={"9100/tcp": ("127.0.0.1", None)}
    )
    entry = (await asyncio.to_thread(consul.services))[service_id]
    assert (entry["Address"], entry["Port"]) == ("127.0.0.1", host_port(app, "9100/tcp"))
