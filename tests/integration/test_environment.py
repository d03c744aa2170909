"""Proves the test environment itself works: a real Consul agent, the Docker engine, the test
image, and the helpers the integration and e2e tests build on. When these fail, fix the
environment (scripts/test, tests/conftest.py, tests/helpers.py) before looking at the package.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import (
    HTTPD_COMMAND,
    HTTPD_INDEX_MARKER,
    LABEL,
    NETWORK_POOL,
    OWNER_LABEL,
    TEST_LABEL,
    ConsulAgent,
    ConsulHTTPError,
    ContainerFactory,
    NetworkFactory,
    async_wait_until,
    dig,
    free_port,
    free_ports,
    host_port,
    http_get_text,
    wait_until,
)


def _service(service_id: str, name: str, address: str, port: int) -> dict[str, Any]:
    return {"ID": service_id, "Name": name, "Address": address, "Port": port, "Tags": ["t1"]}


# -- helpers ----------------------------------------------------------------------------------


def test_wait_until_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", "ready"])
    assert wait_until(lambda: next(values), timeout=2, interval=0.01) == "ready"


def test_wait_until_reports_message_and_last_value() -> None:
    with pytest.raises(AssertionError, match=r"never ready .*last value: \[\]"):
        wait_until(list, timeout=0.05, interval=0.01, message="never ready")


def test_wait_until_ignores_listed_exceptions() -> None:
    def failing() -> bool:
        raise ConnectionRefusedError("nope")

    with pytest.raises(AssertionError, match="ConnectionRefusedError"):
        wait_until(failing, timeout=0.05, interval=0.01, ignore=(OSError,))
    with pytest.raises(ConnectionRefusedError):
        wait_until(failing, timeout=0.05, interval=0.01)


async def test_async_wait_until_accepts_sync_and_async_predicates() -> None:
    start = time.monotonic()

    async def later() -> bool:
        return time.monotonic() - start > 0.05

    assert await async_wait_until(later, timeout=2, interval=0.01) is True
    assert await async_wait_until(lambda: 7, timeout=1) == 7
    with pytest.raises(AssertionError, match="still false"):
        await async_wait_until(lambda: False, timeout=0.05, interval=0.01, message="still false")


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert 0 < free_port() < 65536


# -- consul -----------------------------------------------------------------------------------


def test_consul_agent_answers_with_a_leader(consul: ConsulAgent) -> None:
    assert consul.leader().startswith("127.0.0.1:")
    assert consul.http_addr == f"127.0.0.1:{consul.http_port}"
    assert consul.get("/v1/agent/self")["Config"]["NodeName"] == consul.node_name
    assert consul.services() == {}
    assert consul.checks() == {}


def test_service_registered_by_hand_shows_up_and_goes_away(consul: ConsulAgent) -> None:
    consul.put("/v1/agent/service/register", _service("web-1", "web", "198.18.64.10", 8080))

    assert consul.services()["web-1"]["Port"] == 8080
    entries = wait_until(lambda: consul.catalog_service("web"), message="web not in catalog")
    assert [(e["ServiceID"], e["ServiceAddress"]) for e in entries] == [("web-1", "198.18.64.10")]

    consul.put("/v1/agent/service/deregister/web-1")

    assert "web-1" not in consul.services()
    wait_until(lambda: not consul.catalog_service("web"), message="web still in catalog")


def test_reset_empties_the_agent(consul: ConsulAgent) -> None:
    consul.put("/v1/agent/service/register", _service("db-1", "db", "198.18.64.11", 5432))
    consul.put("/v1/agent/check/register", {"ID": "standalone", "Name": "x", "TTL": "30s"})
    consul.put("/v1/catalog/register", {"Node": "ext", "Address": "198.18.64.12"})
    consul.put("/v1/kv/some/key", "value")

    consul.reset()

    assert consul.services() == {}
    assert consul.checks() == {}
    assert [n["Node"] for n in consul.get("/v1/catalog/nodes")] == [consul.node_name]
    assert consul.get("/v1/kv/?keys=true") is None or consul.get("/v1/kv/?keys=true") == []


def test_consul_dns_answers(consul: ConsulAgent) -> None:
    consul.put("/v1/agent/service/register", _service("dns-1", "dnsweb", "198.18.64.20", 80))

    assert dig(consul, "consul.service.consul") == ["127.0.0.1"]
    assert wait_until(lambda: dig(consul, "dnsweb.service.consul")) == ["198.18.64.20"]


# -- docker -----------------------------------------------------------------------------------


def test_container_serves_http_on_a_published_port(containers: ContainerFactory) -> None:
    container = containers.run(
        "httpd", command=HTTPD_COMMAND, ports={"80/tcp": ("127.0.0.1", None)}
    )
    port = host_port(container, "80/tcp")

    body = wait_until(
        lambda: http_get_text(f"http://127.0.0.1:{port}/index.html"),
        timeout=10,
        ignore=(OSError,),
        message="httpd in the test container did not answer",
    )
    assert HTTPD_INDEX_MARKER in body


def test_containers_are_labelled_named_and_stop_promptly(
    containers: ContainerFactory, request: pytest.FixtureRequest
) -> None:
    container = containers.run(
        "idle", labels={"SERVICE_NAME": "idle"}, environment={"SERVICE_TAGS": "a,b"}
    )

    assert container.status == "running"
    assert container.name.startswith("rt-test_containers_are_labelled")
    assert container.labels[LABEL] == "1"
    assert container.labels[TEST_LABEL] == request.node.nodeid
    assert OWNER_LABEL in container.labels
    assert container.labels["SERVICE_NAME"] == "idle"
    assert "SERVICE_TAGS=a,b" in container.attrs["Config"]["Env"]

    # The default command traps SIGTERM; without that `stop` would wait out its whole timeout.
    started = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - started < 5


def test_container_on_a_test_network_gets_an_address_from_the_pool(
    containers: ContainerFactory, docker_network: NetworkFactory
) -> None:
    first = docker_network.create("a")
    second = docker_network.create("b")
    subnets = [
        ipaddress.ip_network(n.attrs["IPAM"]["Config"][0]["Subnet"]) for n in (first, second)
    ]
    assert subnets[0] != subnets[1]
    assert all(subnet.subnet_of(NETWORK_POOL) for subnet in subnets)  # type: ignore[arg-type]

    container = containers.run("net", network=first)

    address = container.attrs["NetworkSettings"]["Networks"][first.name]["IPAddress"]
    assert ipaddress.ip_address(address) in subnets[0]


def test_consul_factory_starts_an_agent_with_acls(
    consul_factory: Callable[..., ConsulAgent],
) -> None:
    config = {
        "acl": {
            "enabled": True,
            "default_policy": "deny",
            "tokens": {"initial_management": "root-token"},
        }
    }
    # With the token given, the factory waits until Consul knows it (not only for a leader).
    secured = consul_factory(config=config, token="root-token")
    anonymous = secured.with_token(None)

    with pytest.raises(ConsulHTTPError) as denied:
        anonymous.put("/v1/agent/service/register", _service("s-1", "s", "198.18.64.30", 1))
    assert denied.value.status == 403

    admin = secured
    admin.put("/v1/agent/service/register", _service("s-1", "s", "198.18.64.30", 1))
    assert set(admin.services()) == {"s-1"}
    admin.reset()
    assert admin.services() == {}
