"""Swarm services read from a manager, on this engine as a real single-node swarm.

Routing-mesh (ingress) publishing: a task is registered at the node address and the published
port, which only a manager can read from the service. -swarm-vip: one registration per service
at its virtual IP, written by the leader's agent (this engine leads its one-node swarm), tasks
of dnsrr services registered one by one.

This kernel has no IPVS, so the routing mesh and VIPs do not forward traffic here: the tests
check what registrator writes (the catalog), not that the addresses answer. Each test creates
its own services, named uniquely, on an overlay of its own, and removes them.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from registrator.addresses import is_loopback
from tests.e2e.support import docker_json, free_overlay_subnet, run, swarm_manager
from tests.helpers import ConsulAgent, async_wait_until, free_ports, routed_source_address
from tests.integration.conftest import EVENT_TIMEOUT, StartAgent

pytestmark = [
    pytest.mark.docker,
    pytest.mark.engines("docker20", "docker29", reason="Podman has no Swarm mode"),
]

# The test image EXPOSEs nothing: published targets and SERVICE_PORT are what name port 80.
HTTPD = ["sh", "-c", "trap 'exit 0' TERM INT; httpd -f -p 80 -h /www & wait"]
# Task scheduling plus a network attachment can take several seconds on a loaded engine.
CONVERGE = 60.0


@pytest.fixture(scope="module")
def overlay() -> Iterator[str]:
    """A swarm, and an attachable overlay of this module's own on it."""
    with swarm_manager():
        name = f"it-swarm-{secrets.token_hex(3)}"
        run(
            ["docker", "network", "create", "--driver", "overlay", "--attachable",
             "--subnet", str(free_overlay_subnet()), "--label", "registrator-test=1", name]
        )  # fmt: skip
        try:
            yield name
        finally:
            # Tasks detach from the network a moment after their service is removed.
            for _ in range(30):
                done = subprocess.run(
                    ["docker", "network", "rm", name], capture_output=True, check=False
                )
                if done.returncode == 0:
                    break
                subprocess.run(["sleep", "1"], check=False)


@contextlib.contextmanager
def swarm_service(image: str, *args: str) -> Iterator[str]:
    """`docker service create -d ARGS IMAGE httpd`, removed at the end; yields its name."""
    name = f"it-svc-{secrets.token_hex(4)}"
    run(["docker", "service", "create", "-d", "--name", name, *args, image, *HTTPD])
    try:
        yield name
    finally:
        subprocess.run(["docker", "service", "rm", name], capture_output=True, check=False)


def node_address() -> str:
    """Where the routing mesh is registered: the Swarm node address, unless it is loopback
    (the test swarm advertises 127.0.0.1), then the host's own (never sent to here)."""
    address = run(["docker", "info", "--format", "{{.Swarm.NodeAddr}}"]).strip()
    return routed_source_address() if is_loopback(address) else address


def catalog(consul: ConsulAgent, name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = consul.catalog_service(name)
    return entries


async def wait_catalog(
    consul: ConsulAgent, name: str, expected: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    """Waits until `name`'s catalog entries are exactly the `expected` (address, port) pairs,
    one entry per pair."""

    def matches() -> list[dict[str, Any]] | None:
        entries = catalog(consul, name)
        found = [(e["ServiceAddress"], e["ServicePort"]) for e in entries]
        return entries if sorted(found) == sorted(expected) else None

    entries = await async_wait_until(
        matches,
        timeout=CONVERGE,
        message=f"{name}: catalog never held exactly {sorted(expected)}; "
        f"it has {[(e['ServiceAddress'], e['ServicePort']) for e in catalog(consul, name)]}",
    )
    assert entries is not None
    return entries


def task_addresses(service: str, network: str) -> set[str]:
    ids = run(
        ["docker", "ps", "-q", "--no-trunc", "--filter",
         f"label=com.docker.swarm.service.name={service}"]
    ).split()  # fmt: skip
    if not ids:
        return set()
    return {
        c["NetworkSettings"]["Networks"][network]["IPAddress"]
        for c in docker_json("inspect", *ids)
        if c["State"]["Running"] and network in c["NetworkSettings"]["Networks"]
    }


def virtual_ip(service: str, network: str) -> str:
    network_id = run(["docker", "network", "inspect", "--format", "{{.Id}}", network]).strip()
    (inspected,) = docker_json("service", "inspect", service)
    for vip in inspected["Endpoint"]["VirtualIPs"]:
        if vip["NetworkID"] == network_id:
            address: str = vip["Addr"].split("/")[0]
            return address
    raise AssertionError(f"{service} has no VIP on {network}: {inspected['Endpoint']}")


async def test_ingress_published_port_is_registered_at_the_node_address(
    start_agent: StartAgent, consul: ConsulAgent, overlay: str, test_image: str
) -> None:
    agent = await start_agent()
    first, second = free_ports(2)
    name = f"ingress-{secrets.token_hex(3)}"
    with swarm_service(
        test_image, "--network", overlay, "--replicas", "2", "--env", f"SERVICE_NAME={name}",
        "--publish", f"published={first},target=80",
    ) as service:  # fmt: skip
        # One registration per task (ids apart), both at this node's address and the
        # published port: the routing mesh answers there for every task.
        entries = await wait_catalog(consul, name, [(node_address(), first)] * 2)
        assert all(e["ServiceID"].startswith(f"{agent.node}:{service}.") for e in entries)

        # A new published port reaches the registrations through the service event.
        run(["docker", "service", "update", "-d", "--publish-rm", "80",
             "--publish-add", f"published={second},target=80", service])  # fmt: skip
        await wait_catalog(consul, name, [(node_address(), second)] * 2)
    await async_wait_until(
        lambda: not catalog(consul, name),
        timeout=EVENT_TIMEOUT,
        message=f"{name} remains after docker service rm: {catalog(consul, name)}",
    )


async def test_internal_mode_registers_task_overlay_addresses_not_ingress(
    start_agent: StartAgent, consul: ConsulAgent, overlay: str, test_image: str
) -> None:
    await start_agent("-internal")
    (published,) = free_ports(1)
    name = f"internal-{secrets.token_hex(3)}"
    with swarm_service(
        test_image, "--network", overlay, "--replicas", "2", "--env", f"SERVICE_NAME={name}",
        "--publish", f"published={published},target=80",
    ) as service:  # fmt: skip
        await async_wait_until(
            lambda: len(task_addresses(service, overlay)) == 2,
            timeout=CONVERGE,
            message=f"{service} did not start 2 tasks",
        )
        await wait_catalog(consul, name, [(ip, 80) for ip in task_addresses(service, overlay)])


async def test_swarm_vip_registers_each_service_once_at_its_virtual_ip(
    start_agent: StartAgent, consul: ConsulAgent, overlay: str, test_image: str
) -> None:
    agent = await start_agent("-swarm-vip", "-internal")
    vip_name = f"vip-{secrets.token_hex(3)}"
    rr_name = f"dnsrr-{secrets.token_hex(3)}"
    with (
        swarm_service(
            test_image, "--network", overlay, "--replicas", "3",
            "--env", f"SERVICE_NAME={vip_name}", "--env", "SERVICE_PORT=80",
            "--label", "SERVICE_TAGS=deploy-label",
        ) as vip_service,
        swarm_service(
            test_image, "--network", overlay, "--replicas", "2", "--endpoint-mode", "dnsrr",
            "--env", f"SERVICE_NAME={rr_name}", "--env", "SERVICE_PORT=80",
        ) as rr_service,
    ):  # fmt: skip
        address = virtual_ip(vip_service, overlay)
        (entry,) = await wait_catalog(consul, vip_name, [(address, 80)])
        assert entry["ServiceID"] == f"swarm:{vip_service}:80"
        assert entry["ServiceMeta"]["registrator-node"] == agent.node
        # Compose `deploy.labels` (service labels) count for a VIP registration.
        assert entry["ServiceTags"] == ["deploy-label"]
        # dnsrr has no VIP: its tasks are registered one by one, at their overlay addresses.
        await async_wait_until(
            lambda: len(task_addresses(rr_service, overlay)) == 2,
            timeout=CONVERGE,
            message=f"{rr_service} did not start 2 tasks",
        )
        await wait_catalog(
            consul, rr_name, [(ip, 80) for ip in task_addresses(rr_service, overlay)]
        )

        # Scaling changes tasks, not the VIP: still exactly one entry.
        run(["docker", "service", "scale", "-d", f"{vip_service}=1"])
        await async_wait_until(
            lambda: len(task_addresses(vip_service, overlay)) == 1,
            timeout=CONVERGE,
            message=f"{vip_service} did not scale to 1",
        )
        await agent.full_reconcile()
        assert [(e["ServiceAddress"], e["ServicePort"]) for e in catalog(consul, vip_name)] == [
            (address, 80)
        ]
    # `docker service rm` (the event) removes the VIP registration.
    await agent.wait_deregistered(f"swarm:{vip_service}:80")
    assert not catalog(consul, vip_name)
