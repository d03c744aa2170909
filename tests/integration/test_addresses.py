"""Issue 12, rule 3: never a loopback address unless asked.

The session's Consul agent is what the README quickstart runs, `consul agent -dev -bind
127.0.0.1`, so its advertised address is loopback. The agent under test runs in-process, in
this host's network namespace, so the default address must be the host's own primary address.

Test safety: that address is this machine's LAN address. The tests only compare it with what was
registered; nothing here (no check, no probe) sends it traffic. The services carry no probing
check, and where a test needs an answer it asks the published port on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable

import pytest

from registrator.addresses import is_loopback
from tests.conftest import StartProcess
from tests.helpers import (
    HTTPD_COMMAND,
    HTTPD_INDEX_MARKER,
    ConsulAgent,
    ContainerFactory,
    NetworkFactory,
    async_wait_until,
    free_port,
    host_port,
    http_get_text,
    routed_source_address,
    wait_until,
    warnings_about,
)
from tests.helpers_cli import run_cli
from tests.integration.conftest import StartAgent


async def test_loopback_consul_agent_gives_the_host_address_not_127(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
) -> None:
    # The example: `docker run -p 10000:6379 -e SERVICE_NAME=db`, nothing configured.
    assert is_loopback(consul.get("/v1/agent/self")["Member"]["Addr"])
    host = routed_source_address()
    assert not is_loopback(host)
    running = await start_agent()
    assert running.agent.identity is not None
    assert running.agent.identity.default_address == host
    assert running.agent.identity.address.source == "host address"

    name = f"db-{secrets.token_hex(3)}"
    published = free_port()
    db = await asyncio.to_thread(
        containers.run,
        "db",
        environment={"SERVICE_NAME": name},
        ports={"6379/tcp": published},
        network=docker_network.create(),
    )
    service_id = running.service_id(db.name, 6379)
    entry = (await running.wait_registered(service_id))[service_id]
    assert (entry["Address"], entry["Port"]) == (host, published)
    assert not entry.get("Checks")


async def test_host_network_container_gets_the_host_address_too(
    start_agent: StartAgent, containers: ContainerFactory
) -> None:
    running = await start_agent()
    name = f"hostnet-{secrets.token_hex(3)}"
    port = free_port()
    box = await asyncio.to_thread(
        containers.run,
        "hostnet",
        labels={"SERVICE_NAME": name, "SERVICE_PORT": str(port)},
        network_mode="host",
    )
    service_id = running.service_id(box.name, port)
    entry = (await running.wait_registered(service_id))[service_id]
    assert (entry["Address"], entry["Port"]) == (routed_source_address(), port)


async def test_port_published_on_loopback_is_registered_there_with_one_warning(
    start_agent: StartAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # `-p 127.0.0.1:8080:80`: reachable from this host only. Registered where it listens, never
    # at -ip (nothing listens there), and the operator is told so once.
    caplog.set_level(logging.WARNING, logger="registrator")
    running = await start_agent("-ip", "198.18.255.254", "-resync", "1")
    name = f"local-{secrets.token_hex(3)}"
    web = await asyncio.to_thread(
        containers.run,
        "local",
        command=HTTPD_COMMAND,
        labels={"SERVICE_NAME": name},
        ports={"80/tcp": ("127.0.0.1", None)},
        network=docker_network.create(),
    )
    service_id = running.service_id(web.name, 80)
    entry = (await running.wait_registered(service_id))[service_id]
    port = host_port(web, "80/tcp")
    assert (entry["Address"], entry["Port"]) == ("127.0.0.1", port)
    body = await async_wait_until(
        lambda: asyncio.to_thread(http_get_text, f"http://127.0.0.1:{port}/index.html"),
        ignore=(OSError,),
        message=f"127.0.0.1:{port} does not serve",
    )
    assert HTTPD_INDEX_MARKER in body
    await running.full_reconcile()
    await running.full_reconcile()
    found = warnings_about(caplog, web.name, f"127.0.0.1:{port}->80/tcp", "this host only")
    assert len(found) == 1, found


def test_explain_without_consul_shows_the_registration_and_what_its_address_waits_for(
    consul_factory: Callable[..., ConsulAgent],
    containers: ContainerFactory,
    docker_network: NetworkFactory,
) -> None:
    name = f"db-{secrets.token_hex(3)}"
    db = containers.run(
        "db",
        environment={"SERVICE_NAME": name},
        ports={"6379/tcp": None},
        network=docker_network.create(),
    )
    nobody = free_port()  # nothing listens here: Consul is unreachable
    result = run_cli("explain", db.name, "-node", "explainer", f"consul://127.0.0.1:{nobody}")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (body,) = report["registrations"]
    assert body["Name"] == name and body["Port"] == host_port(db, "6379/tcp")
    assert body["Address"].startswith("unknown until Consul answers")
    assert routed_source_address() in body["Address"]  # what it falls back to, if loopback
    assert report["default_address"] == body["Address"]
    assert [n for n in report["notes"] if "Consul did not answer" in n]

    # The same kind, with a Consul that answers from loopback: the host's address, as the agent.
    consul = consul_factory()
    answered = run_cli("explain", db.name, "-node", "explainer", f"consul://{consul.http_addr}")
    assert answered.returncode == 0, answered.stderr
    report = json.loads(answered.stdout)
    (body,) = report["registrations"]
    assert body["Address"] == routed_source_address()
    assert report["default_address_source"] == "host address"


def test_a_consul_agent_advertising_a_real_address_comes_before_the_host_address(
    consul_factory: Callable[..., ConsulAgent],
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    start_process: StartProcess,
) -> None:
    # Chain step 2, the standard deployment: the local Consul agent advertises the host's
    # address. Here that is a bridge network's gateway, an address of this host that is not
    # its LAN address (nothing is sent to it).
    network = docker_network.create()
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    consul = consul_factory(extra_args=["-advertise", gateway])
    assert consul.get("/v1/agent/self")["Member"]["Addr"] == gateway
    node = f"adv-{secrets.token_hex(3)}"
    agent = start_process(node=node, consul=f"consul://{consul.http_addr}")
    name = f"db-{secrets.token_hex(3)}"
    db = containers.run(
        "db", environment={"SERVICE_NAME": name}, ports={"6379/tcp": None}, network=network
    )
    entries = wait_until(
        lambda: [e for e in consul.services().values() if e["Service"] == name],
        timeout=20,
        message=f"{name} was not registered",
    )
    assert [(e["Address"], e["Port"]) for e in entries] == [(gateway, host_port(db, "6379/tcp"))]
    assert agent.lines_with("default address", gateway, "Consul agent address")
