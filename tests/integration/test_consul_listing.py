"""ConsulClient.services against the real Consul agent: the fields its callers read of each
entry (ID, Service, Address, Port, Kind, Meta), nothing else kept (the rest is dropped while
decoding, to keep the agent's peak memory low), and Meta whole whatever its keys are called."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from registrator.consul import ConsulClient
from registrator.settings import parse_consul_uri
from tests.helpers import ConsulAgent


@pytest.fixture
async def client(consul: ConsulAgent) -> AsyncIterator[ConsulClient]:
    async with ConsulClient(parse_consul_uri(f"consul://{consul.http_addr}")) as made:
        yield made


async def test_services_keep_the_read_fields_and_all_of_meta(client: ConsulClient) -> None:
    suffix = secrets.token_hex(3)
    plain, proxy = f"listing-{suffix}", f"listing-{suffix}-proxy"
    # Meta keys named like entry fields, with string values as Consul requires.
    meta = {"ID": "not-an-id", "Tags": "t", "Meta": "m", "registrator-node": "n"}
    await client.register(
        {
            "ID": plain,
            "Name": "listing",
            "Address": "198.18.3.4",
            "Port": 80,
            "Tags": ["a", "b"],
            "Meta": meta,
            "Weights": {"Passing": 3, "Warning": 1},
            "TaggedAddresses": {"lan": {"Address": "198.18.3.5", "Port": 81}},
        }
    )
    await client.register(
        {
            "ID": proxy,
            "Kind": "connect-proxy",
            "Name": "listing-proxy",
            "Port": 21000,
            "Meta": {"k": "v"},
            # Free-form proxy config shaped like an entry: dropped with its entry.
            "Proxy": {
                "DestinationServiceName": "listing",
                "Config": {"ID": "inner", "Meta": {"x": "y"}, "Tags": ["c"]},
            },
        }
    )
    try:
        services = await client.services()
    finally:
        await client.deregister(proxy)
        await client.deregister(plain)
    assert services[plain] == {
        "ID": plain,
        "Service": "listing",
        "Address": "198.18.3.4",
        "Port": 80,
        "Meta": meta,
    }
    assert services[proxy] == {
        "ID": proxy,
        "Kind": "connect-proxy",
        "Service": "listing-proxy",
        "Address": "",
        "Port": 21000,
        "Meta": {"k": "v"},
    }
    assert all(
        set(entry) <= {"ID", "Service", "Address", "Port", "Kind", "Meta"}
        for entry in services.values()
    )
