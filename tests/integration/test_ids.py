"""Issue 12, rule 5: every id the agent writes can be read back and deleted, and no two
registrations of one container share an id.

Against the real Consul agent: the ids of tests/unit/test_ids.py that Consul's paths can
address make the whole round trip through registrator's own client (register, check update,
maintenance, deregister); the ones they cannot are shown to be stuck, which is why the planner
refuses them; and the agent keeps every port of a container under an id of its own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable

import pytest

from registrator.consul import ConsulClient, ConsulError
from registrator.option_values import parse_consul_uri
from tests.helpers import ConsulAgent, ContainerFactory, NetworkFactory
from tests.integration.conftest import StartAgent

# Each makes the round trip; a random suffix keeps sessions apart (stripped ids never end in
# a space, so it is appended, not prepended, where the id starts with one).
ROUND_TRIP = [
    "plain",
    "a/b",
    "trail/",
    "a?b",
    "a#b",
    "a%b",
    "a%2Fb",
    "a b",
    "a+b;c",
    "a\\b",
    "a&b=c",
    "ünï",
    "日本",
    "\U0001f600",
    "x" * 5000,
]
# Register answers 200 for each, then no path can name it: 301 (a redirect to the cleaned
# path, i.e. to another id, given here) or 400.
STUCK = [
    ("a/../b", "b"),
    ("/lead", "lead"),
    ("a//b", "a/b"),
    (".", ""),
    ("a\tb", ""),
    ("a\u00a0b", ""),
]


@pytest.fixture
async def client(consul: ConsulAgent) -> AsyncIterator[ConsulClient]:
    async with ConsulClient(parse_consul_uri(f"consul://{consul.http_addr}")) as made:
        yield made


def body(service_id: str) -> dict[str, object]:
    return {
        "ID": service_id,
        "Name": "ids-probe",
        "Port": 1,
        "Checks": [{"CheckID": f"service:{service_id}:ttl", "Name": "ttl", "TTL": "60s"}],
    }


@pytest.mark.parametrize("base", ROUND_TRIP, ids=lambda v: repr(v[:12]))
async def test_addressable_ids_round_trip_through_the_client(
    client: ConsulClient, consul: ConsulAgent, base: str
) -> None:
    service_id = f"{base}-{secrets.token_hex(3)}"
    neighbour = f"ids-neighbour-{secrets.token_hex(3)}"
    await client.register(body(neighbour))
    await client.register(body(service_id))
    assert service_id in await client.services()

    await client.update_check(f"service:{service_id}:ttl", "passing", "round trip")
    await client.service_maintenance(service_id, True, "round trip")
    checks = consul.checks()
    assert checks[f"service:{service_id}:ttl"]["Status"] == "passing"
    assert checks[f"_service_maintenance:{service_id}"]["Status"] == "critical"
    await client.service_maintenance(service_id, False, "")
    assert f"_service_maintenance:{service_id}" not in consul.checks()

    await client.deregister(service_id)
    services = await client.services()
    assert service_id not in services
    assert neighbour in services, "deregistering one id must never touch another"
    await client.deregister(neighbour)


@pytest.mark.parametrize(("stuck", "redirect"), STUCK, ids=[repr(s) for s, _ in STUCK])
async def test_ids_the_paths_cannot_name_stay_stuck_and_never_hit_another_service(
    consul_factory: Callable[..., ConsulAgent], stuck: str, redirect: str
) -> None:
    # A Consul of its own: what this test registers can never be removed again.
    consul = consul_factory()
    async with ConsulClient(parse_consul_uri(f"consul://{consul.http_addr}")) as client:
        if redirect:
            await client.register(body(redirect))  # the id Consul's router redirects to
        await client.register(body(stuck))  # accepted...
        with pytest.raises(ConsulError) as refused:
            await client.deregister(stuck)  # ...and never removable
        assert refused.value.status == (301 if redirect or stuck == "." else 400)
        services = await client.services()
        assert stuck in services
        if redirect:
            assert redirect in services, "a redirect must not be followed to another id"


async def test_agent_keeps_every_port_under_its_own_id_and_refuses_stuck_ids(
    start_agent: StartAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="registrator")
    running = await start_agent("-internal")
    network = docker_network.create()
    tag = secrets.token_hex(3)

    # The kind: one id key that applies to two registrations (53/tcp and 53/udp).
    dns = await asyncio.to_thread(
        containers.run,
        "dns",
        labels={"SERVICE_NAME": f"dns-{tag}", "SERVICE_53_ID": f"dns-{tag}"},
        ports={"53/tcp": None, "53/udp": None},
        network=network,
    )
    # One more of the kind: two port-scoped ids with the same value, and an id with characters
    # that need encoding in every path.
    odd = f"web/{tag} ü?#%"
    web = await asyncio.to_thread(
        containers.run,
        "web",
        labels={"SERVICE_NAME": f"web-{tag}", "SERVICE_80_ID": odd, "SERVICE_81_ID": odd},
        ports={"80/tcp": None, "81/tcp": None},
        network=network,
    )
    # And an id no path could name: refused up front, with the container and key named.
    stuck = await asyncio.to_thread(
        containers.run,
        "stuck",
        labels={"SERVICE_NAME": f"stuck-{tag}", "SERVICE_ID": f"stuck/../{tag}"},
        ports={"80/tcp": None},
        network=network,
    )
    wanted = [f"dns-{tag}:53", f"dns-{tag}:53:udp", f"{odd}:80", f"{odd}:81"]
    entries = await running.wait_registered(*wanted)
    assert {(e["ID"], e["Port"]) for e in entries.values()} == {
        (f"dns-{tag}:53", 53),
        (f"dns-{tag}:53:udp", 53),
        (f"{odd}:80", 80),
        (f"{odd}:81", 81),
    }
    await running.full_reconcile()
    assert running.of_containers(stuck.id) == {}
    refused = [
        r.getMessage()
        for r in caplog.records
        if stuck.name in r.getMessage() and "label SERVICE_ID" in r.getMessage()
    ]
    assert refused and "not registered" in refused[0], refused
    clash = [r.getMessage() for r in caplog.records if "wanted by several ports" in r.getMessage()]
    assert any(dns.name in m for m in clash) and any(web.name in m for m in clash), clash

    # Every id written can be deleted: removing the containers removes all four.
    for container in (dns, web):
        await asyncio.to_thread(container.remove, force=True)
    await running.wait_deregistered(*wanted)
    assert running.of_containers(dns.id, web.id) == {}
