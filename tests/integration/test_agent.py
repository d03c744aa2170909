"""The agent in-process against the real Docker engine and the real Consul agent.

Each test starts its own agent under a node name of its own (see conftest.py) and asserts only
about the services of its own containers or its own node: other test sessions may run labelled
containers on the same Docker engine at any time, and the agent registers those as well.

Blocking Docker calls (run, stop, kill, wait) go through `asyncio.to_thread`, so the agent keeps
running on the event loop while the test drives Docker.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from registrator.addresses import is_loopback
from registrator.events import CONTAINER_EVENTS
from registrator.model import META_CONTAINER, META_NODE, META_SOURCE
from tests.helpers import (
    HTTPD_COMMAND,
    HTTPD_INDEX_MARKER,
    ConsulAgent,
    ContainerFactory,
    NetworkFactory,
    async_wait_until,
    container_ip,
    health_probes,
    host_port,
    http_get_text,
    routed_source_address,
    warnings_about,
)
from tests.integration.conftest import StartAgent

# busybox sh as PID 1: SIGUSR1 makes it exit with the given code, SIGTERM with 0 (fast stop).
EXIT_ON_USR1 = "trap 'exit {code}' USR1; trap 'exit 0' TERM INT; sleep 86400 & wait"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def run(containers: ContainerFactory, suffix: str, **kwargs: Any) -> Container:
    return await asyncio.to_thread(containers.run, suffix, **kwargs)


def expected_default_address(docker_client: docker.DockerClient, consul: ConsulAgent) -> str:
    """Where a port published on all interfaces is registered, as the README defines it: the
    first of the Swarm node address, the local Consul agent's address and the host's own
    address that is not loopback (the session's Consul agent is on loopback)."""
    swarm = docker_client.info().get("Swarm") or {}
    node = swarm.get("NodeAddr") if swarm.get("LocalNodeState") == "active" else ""
    member = str(consul.get("/v1/agent/self")["Member"]["Addr"])
    for address in (str(node or ""), member, routed_source_address()):
        if address and not is_loopback(address):
            return address
    raise AssertionError("no default address at all")


# -- registration basics -----------------------------------------------------------------------


@pytest.mark.podman_core
async def test_published_port_is_registered_with_labels_and_ownership_then_removed(
    start_agent: StartAgent,
    containers: ContainerFactory,
    consul: ConsulAgent,
    docker_client: docker.DockerClient,
) -> None:
    running = await start_agent()
    name = unique("web")
    web = await run(
        containers,
        "web",
        command=HTTPD_COMMAND,
        labels={
            "SERVICE_NAME": name,
            "SERVICE_TAGS": r"blue, a\,b ,primary",
            "SERVICE_VERSION": "1.2.3",
        },
        ports={"80/tcp": None},  # all interfaces, a random host port
    )
    service_id = running.service_id(web.name, 80)

    entry = (await running.wait_registered(service_id))[service_id]

    address = expected_default_address(docker_client, consul)
    assert running.agent.identity is not None
    assert running.agent.identity.default_address == address
    assert entry["ID"] == service_id
    assert entry["Service"] == name
    assert entry["Address"] == address
    assert entry["Port"] == host_port(web, "80/tcp")
    assert entry["Tags"] == ["blue", "a,b", "primary"]
    meta = entry["Meta"]
    assert meta["version"] == "1.2.3"
    assert meta[META_SOURCE] == "registrator"
    assert meta[META_NODE] == running.node
    assert meta[META_CONTAINER] == web.id
    assert set(running.of_containers(web.id)) == {service_id}
    # The registered port answers. Asked on loopback, where a port published on all
    # interfaces answers too: the registered address is this machine's LAN address, which
    # the tests never send traffic to.
    body = await async_wait_until(
        lambda: asyncio.to_thread(http_get_text, f"http://127.0.0.1:{entry['Port']}/index.html"),
        ignore=(OSError,),
        message=f"published port {entry['Port']} does not serve HTTP",
    )
    assert HTTPD_INDEX_MARKER in body

    await asyncio.to_thread(web.stop, timeout=5)
    await running.wait_deregistered(service_id)

    await asyncio.to_thread(web.start)
    entry = (await running.wait_registered(service_id))[service_id]
    assert entry["Port"] == host_port(web, "80/tcp")

    await asyncio.to_thread(web.remove, force=True)
    await running.wait_deregistered(service_id)
    assert running.of_containers(web.id) == {}


@pytest.mark.podman_core
async def test_internal_registers_container_ip_and_exposed_ports(
    start_agent: StartAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
) -> None:
    network = await asyncio.to_thread(docker_network.create, "internal")
    subnet = ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])
    name = unique("internal")
    app = await run(
        containers,
        "app",
        labels={"SERVICE_NAME": name},
        # 80 published, 8080 only exposed (no binding at all: every engine leaves it unpublished).
        ports={"80/tcp": None},
        expose=["8080/tcp"],
        network=network,
    )
    assert not app.attrs["NetworkSettings"]["Ports"].get("8080/tcp")
    ip = container_ip(app, network.name)
    assert ipaddress.ip_address(ip) in subnet

    # Started after the container: the first full reconcile must find it.
    running = await start_agent("-internal")
    web_id = running.service_id(app.name, 80)
    admin_id = running.service_id(app.name, 8080)
    found = await running.wait_registered(web_id, admin_id)

    assert {(e["Service"], e["Address"], e["Port"]) for e in found.values()} == {
        (f"{name}-80", ip, 80),
        (f"{name}-8080", ip, 8080),
    }
    assert set(running.of_containers(app.id)) == {web_id, admin_id}


@pytest.mark.podman_core
async def test_containers_removed_before_their_inspect_are_gone_not_an_outage(
    start_agent: StartAgent, containers: ContainerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Engines say "no such container" differently (Docker: 404; Podman: HTTP 500): either
    way the container is gone, which is no error and no sign of Docker being down."""
    caplog.set_level(logging.INFO, logger="registrator")
    running = await start_agent()
    name = unique("shortlived")
    keeper = await run(containers, "keeper", labels={"SERVICE_NAME": name}, ports={"80/tcp": None})
    keeper_id = running.service_id(keeper.name, 80)
    await running.wait_registered(keeper_id)

    # Started and removed at once: the agent's inspect on `start` races the removal, and
    # ends up asking about containers that no longer exist.
    short_ids = []
    for index in range(6):
        box = await run(
            containers, f"gone{index}", labels={"SERVICE_NAME": name}, ports={"80/tcp": None}
        )
        await asyncio.to_thread(box.remove, force=True)
        short_ids.append(running.service_id(box.name, 80))
    await running.wait_deregistered(*short_ids)
    await running.full_reconcile()

    assert running.agent.docker_ok
    assert running.of_containers(keeper.id).keys() == {keeper_id}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors
    assert not [r for r in caplog.records if "reachable" in r.getMessage()], caplog.text


@pytest.mark.podman_core
async def test_several_ports_get_suffixed_names_and_udp_ids_and_tags(
    start_agent: StartAgent, containers: ContainerFactory
) -> None:
    running = await start_agent()
    name = unique("multi")
    app = await run(
        containers,
        "multi",
        labels={"SERVICE_NAME": name, "SERVICE_8080_NAME": f"{name}-admin"},
        ports={"80/tcp": None, "53/udp": None, "8080/tcp": None},
    )
    web_id = running.service_id(app.name, 80)
    dns_id = running.service_id(app.name, "53:udp")
    admin_id = running.service_id(app.name, 8080)

    found = await running.wait_registered(web_id, dns_id, admin_id)

    assert set(running.of_containers(app.id)) == {web_id, dns_id, admin_id}
    assert (found[web_id]["Service"], found[web_id]["Port"]) == (
        f"{name}-80",
        host_port(app, "80/tcp"),
    )
    assert (found[web_id].get("Tags") or []) == []
    assert (found[dns_id]["Service"], found[dns_id]["Port"], found[dns_id]["Tags"]) == (
        f"{name}-53",
        host_port(app, "53/udp"),
        ["udp"],
    )
    # A port-scoped name is taken as written, without the port suffix.
    assert found[admin_id]["Service"] == f"{name}-admin"


# -- selection: SERVICE_IGNORE, -explicit -------------------------------------------------------


async def test_service_ignore_skips_containers_and_ports(
    start_agent: StartAgent, containers: ContainerFactory
) -> None:
    running = await start_agent()
    ignored = await run(
        containers,
        "ignored",
        labels={"SERVICE_NAME": unique("ignored"), "SERVICE_IGNORE": "true"},
        ports={"80/tcp": None},
    )
    partly = await run(
        containers,
        "partly",
        labels={"SERVICE_NAME": unique("partly"), "SERVICE_8080_IGNORE": "yes"},
        ports={"80/tcp": None, "8080/tcp": None},
    )
    # An explicit negative does not ignore (gliderlabs: any other non-empty value does).
    kept = await run(containers, "kept", labels={"SERVICE_IGNORE": "false"}, ports={"80/tcp": None})
    partly_id = running.service_id(partly.name, 80)
    kept_id = running.service_id(kept.name, 80)

    found = await running.wait_registered(partly_id, kept_id)
    await running.full_reconcile()

    assert running.of_containers(ignored.id) == {}
    assert set(running.of_containers(partly.id)) == {partly_id}
    # Without SERVICE_NAME the image's base name is the service name.
    assert found[kept_id]["Service"] == "busybox"


async def test_explicit_registers_only_named_containers_and_ports(
    start_agent: StartAgent, containers: ContainerFactory
) -> None:
    running = await start_agent("-explicit")
    unnamed = await run(containers, "unnamed", ports={"80/tcp": None})
    named = await run(
        containers, "named", labels={"SERVICE_NAME": unique("named")}, ports={"80/tcp": None}
    )
    port_named = await run(
        containers,
        "port-named",
        labels={"SERVICE_8080_NAME": unique("admin")},
        ports={"80/tcp": None, "8080/tcp": None},
    )
    named_id = running.service_id(named.name, 80)
    admin_id = running.service_id(port_named.name, 8080)

    await running.wait_registered(named_id, admin_id)
    await running.full_reconcile()

    assert running.of_containers(unnamed.id) == {}
    assert set(running.of_containers(named.id)) == {named_id}
    assert set(running.of_containers(port_named.id)) == {admin_id}


# -- container lifecycle -----------------------------------------------------------------------


async def test_pause_deregisters_and_unpause_registers_again(
    start_agent: StartAgent, containers: ContainerFactory
) -> None:
    running = await start_agent()
    app = await run(
        containers, "paused", labels={"SERVICE_NAME": unique("paused")}, ports={"80/tcp": None}
    )
    service_id = running.service_id(app.name, 80)
    await running.wait_registered(service_id)

    await asyncio.to_thread(app.pause)
    await running.wait_deregistered(service_id)

    await asyncio.to_thread(app.unpause)
    await running.wait_registered(service_id)
    assert set(running.of_containers(app.id)) == {service_id}


async def test_deregister_on_success_keeps_services_of_failed_containers_only(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    running = await start_agent("-deregister", "on-success")

    async def start(suffix: str, exit_code: int) -> tuple[Container, str]:
        container = await run(
            containers,
            suffix,
            command=["sh", "-c", EXIT_ON_USR1.format(code=exit_code)],
            labels={"SERVICE_NAME": unique(suffix)},
            ports={"80/tcp": None},
        )
        return container, running.service_id(container.name, 80)

    failed, failed_id = await start("failed", 3)
    succeeded, succeeded_id = await start("succeeded", 0)
    killed, killed_id = await start("killed", 0)
    await running.wait_registered(failed_id, succeeded_id, killed_id)

    await asyncio.to_thread(failed.kill, signal="SIGUSR1")
    await asyncio.to_thread(succeeded.kill, signal="SIGUSR1")
    await asyncio.to_thread(killed.kill)  # SIGKILL: 137, the operator's decision
    codes = [
        (await asyncio.to_thread(c.wait, timeout=10))["StatusCode"]
        for c in (failed, succeeded, killed)
    ]
    assert codes == [3, 0, 137]

    await running.wait_deregistered(succeeded_id, killed_id)
    await running.full_reconcile()
    assert failed_id in consul.services(), "exit 3 under -deregister on-success lost its service"
    assert set(running.of_containers(failed.id, succeeded.id, killed.id)) == {failed_id}

    # Once the failed container is removed, nothing is left to keep.
    await asyncio.to_thread(failed.remove, force=True)
    await running.wait_deregistered(failed_id)


# -- ownership: restarts and other owners ------------------------------------------------------


async def test_restart_after_sigkill_neither_duplicates_nor_leaves_stale_services(
    start_agent: StartAgent,
    containers: ContainerFactory,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="registrator")
    first = await start_agent()
    stays = await run(
        containers, "stays", labels={"SERVICE_NAME": unique("stays")}, ports={"80/tcp": None}
    )
    dies = await run(
        containers, "dies", labels={"SERVICE_NAME": unique("dies")}, ports={"80/tcp": None}
    )
    stays_id = first.service_id(stays.name, 80)
    dies_id = first.service_id(dies.name, 80)
    await first.wait_registered(stays_id, dies_id)
    before = first.of_containers(stays.id, dies.id)
    assert set(before) == {stays_id, dies_id}

    await first.kill()
    await asyncio.to_thread(dies.kill)
    await asyncio.to_thread(dies.remove, force=True)
    assert dies_id in consul.services(), "the killed agent's registrations should still be there"

    caplog.clear()
    second = await start_agent(node=first.node)  # ready: its first full reconcile is done

    after = second.of_containers(stays.id, dies.id)
    assert set(after) == {stays_id}
    assert after[stays_id] == before[stays_id], "unchanged service was modified"
    # Exactly one registration for the surviving container, on any node, and in the catalog.
    holding = [
        sid
        for sid, entry in consul.services().items()
        if (entry.get("Meta") or {}).get(META_CONTAINER) == stays.id
    ]
    assert holding == [stays_id]
    stays_name = before[stays_id]["Service"]
    await async_wait_until(
        lambda: [e["ServiceID"] for e in consul.catalog_service(stays_name)] == [stays_id],
        message=f"catalog does not list exactly {stays_id} for {stays_name}",
    )
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if m.startswith(f"registered {stays_id} ")], messages
    assert [m for m in messages if m.startswith(f"deregistered {dies_id} ")], messages


async def test_services_of_other_owners_survive_reconcile_and_shutdown(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    node = f"it-{secrets.token_hex(4)}"
    mine = await run(
        containers, "mine", labels={"SERVICE_NAME": unique("mine")}, ports={"80/tcp": None}
    )
    by_hand = {
        "ID": unique("by-hand"),
        "Name": "by-hand",
        "Address": "198.18.0.10",
        "Port": 8080,
        "Tags": ["manual"],
    }
    other_node = {
        # Same container, same naming scheme, owned by registrator on another node.
        "ID": f"other-{node}:{mine.name}:80",
        "Name": "other-node",
        "Address": "198.18.0.11",
        "Port": 8080,
        "Meta": {
            META_SOURCE: "registrator",
            META_NODE: f"other-{node}",
            META_CONTAINER: mine.id,
        },
    }
    stale_elsewhere = {
        # Another node's service for a container this engine has never seen.
        "ID": unique("stale-elsewhere"),
        "Name": "stale-elsewhere",
        "Address": "198.18.0.12",
        "Port": 8080,
        "Meta": {
            META_SOURCE: "registrator",
            META_NODE: f"other-{node}",
            META_CONTAINER: "0" * 64,
        },
    }
    foreign_ids = [str(s["ID"]) for s in (by_hand, other_node, stale_elsewhere)]
    for service in (by_hand, other_node, stale_elsewhere):
        consul.put("/v1/agent/service/register", service)
    foreign_before = {sid: consul.services()[sid] for sid in foreign_ids}

    running = await start_agent("-cleanup", "-deregister-on-exit", node=node)
    mine_id = running.service_id(mine.name, 80)
    await running.wait_registered(mine_id)
    await running.full_reconcile()
    services = consul.services()
    assert {sid: services.get(sid) for sid in foreign_ids} == foreign_before

    await running.stop()

    services = consul.services()
    assert mine_id not in services, "-deregister-on-exit left the agent's own service"
    assert {sid: services.get(sid) for sid in foreign_ids} == foreign_before


# -- steady state ------------------------------------------------------------------------------


# Actions after which the agent may rightly write for a container; exec_*, attach, create,
# resize and the like change nothing it registers.
_WRITE_WORTHY_ACTIONS = CONTAINER_EVENTS | {"connect", "disconnect"}


def foreign_docker_events(
    docker_client: docker.DockerClient,
    since: float,
    until: float,
    mine: set[str],
    scripted: set[str],
) -> list[str]:
    """Events in [since, until] about containers other than `mine` that may make the agent
    write: another session's containers changing on the shared engine, or the agent running a
    SERVICE_CHECK_SCRIPT in one of the `scripted` containers (it reports each new output)."""
    margin = 0.2  # the agent may act on an event from just before the window
    events = docker_client.events(
        # Docker takes `seconds.fraction`; docker-py passes strings through unchanged.
        since=f"{since - margin:.6f}",
        until=f"{until + margin:.6f}",
        decode=True,
        filters={"type": ["container", "network"]},
    )
    foreign = []
    for event in events:
        action = str(event.get("Action", "")).split(":", 1)[0].strip()
        actor = event.get("Actor") or {}
        subject = (actor.get("Attributes") or {}).get("container") or actor.get("ID")
        if subject in mine:
            continue
        if action in _WRITE_WORTHY_ACTIONS or (action.startswith("exec_") and subject in scripted):
            foreign.append(f"{event.get('Type')} {action} {str(subject)[:12]}")
    return foreign


async def test_unchanged_resync_sends_no_writes_to_consul(
    start_agent: StartAgent,
    containers: ContainerFactory,
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="registrator")
    running = await start_agent("-ip", "127.0.0.1", "-resync", "1", "-explicit")
    app = await run(
        containers,
        "steady",
        command=HTTPD_COMMAND,
        labels={
            "SERVICE_NAME": unique("steady"),
            "SERVICE_TAGS": "a,b",
            "SERVICE_OWNER": "team",
            "SERVICE_CHECK_HTTP": "/index.html",
            "SERVICE_CHECK_INTERVAL": "10s",
        },
        ports={"80/tcp": None},
    )
    service_id = running.service_id(app.name, 80)
    await running.wait_registered(service_id)
    assert running.agent.reconciler is not None
    stats = running.agent.reconciler.stats

    async def resyncs(count: int) -> None:
        target = stats.full_reconciles + count
        await async_wait_until(
            lambda: stats.full_reconciles >= target,
            timeout=count * 5 + 5,
            message=f"fewer than {count} resyncs with -resync 1",
        )

    # A resync that listed Consul before the registration landed may still re-send it.
    await resyncs(2)
    # Other sessions' containers changing on the shared engine make the agent write (it
    # registers every named container); a window with such changes cannot show "no writes" for
    # the whole agent, only for this test's service, whose every write is logged with its id
    # (it has no Docker health, TTL or script check, and -drain is off).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    busy: list[str] = []
    while True:
        started, writes, full = time.time(), running.consul_client.writes, stats.full_reconciles
        logged = len(caplog.records)
        await resyncs(2)
        delta = running.consul_client.writes - writes
        assert stats.full_reconciles >= full + 2
        messages = [record.getMessage() for record in caplog.records[logged:]]
        about_mine = [message for message in messages if service_id in message]
        assert about_mine == [], "an unchanged service was written to during resyncs"
        if delta == 0:
            return
        scripted = {
            s.container_id for s in running.agent.reconciler.registered.values() if s.script
        }
        foreign = await asyncio.to_thread(
            foreign_docker_events, docker_client, started, time.time(), {app.id}, scripted
        )
        assert foreign, f"{delta} Consul writes during resyncs while nothing changed in Docker"
        busy.append(f"{delta} writes with {len(foreign)} foreign events, e.g. {foreign[:3]}")
        if loop.time() > deadline:
            pytest.skip(
                "this test's service saw no writes, but the shared Docker engine was never quiet "
                "for two resyncs, so the agent's total writes could not be checked: "
                + "; ".join(busy)
            )


# -- metadata problems and checks --------------------------------------------------------------


async def test_bad_labels_are_logged_with_container_and_key_and_the_service_registers(
    start_agent: StartAgent,
    containers: ContainerFactory,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="registrator")
    running = await start_agent("-ip", "127.0.0.1")
    app = await run(
        containers,
        "badlabels",
        labels={
            "SERVICE_NAME": unique("bad"),
            "SERVICE_CHECK_TCP": "true",
            "SERVICE_CHECK_INTERVAL": "banana",
            "SERVICE_80_BAD.KEY": "x",
            "SERVICE_OWNER": "team-a",
        },
        ports={"80/tcp": None},
    )
    service_id = running.service_id(app.name, 80)

    entry = (await running.wait_registered(service_id))[service_id]
    await running.full_reconcile()

    assert entry["Meta"]["owner"] == "team-a"
    assert "bad.key" not in entry["Meta"]
    # The TCP check runs at the default interval, and a critical check says why the service
    # is critical until the label is fixed (issue 12; test_catalog_truth.py has the rest).
    assert {c["CheckID"] for c in consul.checks().values() if c["ServiceID"] == service_id} == {
        f"service:{service_id}:{kind}" for kind in ("tcp", "misconfigured", "registrator-node")
    }
    interval = warnings_about(caplog, app.name, "SERVICE_CHECK_INTERVAL", "banana")
    bad_key = warnings_about(caplog, app.name, "SERVICE_80_BAD.KEY")
    assert len(interval) == 1, caplog.text
    # Logged once, not again on the full reconcile that followed.
    assert len(bad_key) == 1, caplog.text


@pytest.mark.podman_core
async def test_docker_healthcheck_is_mirrored_as_a_consul_check(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    running = await start_agent()
    app = await run(
        containers,
        "health",
        labels={"SERVICE_NAME": unique("health")},
        ports={"80/tcp": None},
        healthcheck={
            # Every probe says something new (the uptime), healthy or not.
            "test": ["CMD-SHELL", "cat /proc/uptime; test ! -e /tmp/sick"],
            "interval": 500_000_000,
            "timeout": 2_000_000_000,
            "retries": 1,
        },
    )
    service_id = running.service_id(app.name, 80)
    check_id = f"service:{service_id}:docker-health"
    await running.wait_registered(service_id)

    def check() -> dict[str, Any]:
        found = consul.checks().get(check_id) or {}
        assert not found or found["ServiceID"] == service_id
        return found

    def status() -> str:
        return str(check().get("Status", "(no check)"))

    def probe_outputs() -> set[str]:
        app.reload()
        log = (app.attrs["State"].get("Health") or {}).get("Log") or []
        return {str(entry.get("Output")) for entry in log}

    with health_probes(app):
        await async_wait_until(
            lambda: status() == "passing",
            message=f"{check_id} did not go passing; it is {status()}",
        )
        # Not chatty: more probes with new output (on Podman, an event each) and a full
        # reconcile change nothing while the health stays the same.
        written = check()["Output"]
        await async_wait_until(
            lambda: len(probe_outputs() - {written}) >= 3,
            message=f"{app.name}: fewer than 3 new probes ran",
        )
        await running.full_reconcile()
        assert check()["Output"] == written

        result = await asyncio.to_thread(app.exec_run, ["sh", "-c", "echo > /tmp/sick"])
        assert result.exit_code == 0, result.output
        await async_wait_until(
            lambda: status() == "critical",
            message=f"{check_id} did not go critical when Docker said unhealthy; it is {status()}",
        )
    assert set(running.of_containers(app.id)) == {service_id}


async def test_containers_sharing_a_service_id_do_not_flap_on_every_resync(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    """Two containers labelled with the same SERVICE_ID: a misconfiguration, but one the agent
    must settle (one winner, a warning for the other) instead of rewriting Consul forever."""
    running = await start_agent("-resync", "1", "-explicit")
    service_id = unique("shared-id")
    labels = {"SERVICE_NAME": service_id, "SERVICE_ID": service_id}
    first = await run(containers, "first", labels=labels, ports={"80/tcp": None})
    second = await run(containers, "second", labels=labels, ports={"80/tcp": None})
    await running.wait_registered(service_id)
    assert running.agent.reconciler is not None
    stats = running.agent.reconciler.stats

    async def next_resync() -> None:
        target = stats.full_reconciles + 1
        await async_wait_until(
            lambda: stats.full_reconciles >= target, timeout=15, message="no resync with -resync 1"
        )

    owners: list[str] = []
    for _ in range(3):
        await next_resync()
        owner = consul.services()[service_id]["Meta"][META_CONTAINER]
        assert owner in {first.id, second.id}
        owners.append(owner[:12])

    # Whichever container wins, Consul should stop being rewritten once the agent has settled.
    assert len(set(owners[1:])) == 1, f"owner of {service_id} per resync: {owners}"


# Traps SIGTERM and keeps serving for a few seconds, like an application draining connections.
SLOW_STOP = "trap 'sleep 4; exit 0' TERM; while true; do sleep 1; done"


async def test_drain_puts_services_in_maintenance_between_stop_signal_and_death(
    start_agent: StartAgent, containers: ContainerFactory, consul: ConsulAgent
) -> None:
    running = await start_agent("-drain")
    app = await run(
        containers,
        "draining",
        command=["sh", "-c", SLOW_STOP],
        labels={"SERVICE_NAME": unique("draining")},
        ports={"80/tcp": None},
    )
    service_id = running.service_id(app.name, 80)
    await running.wait_registered(service_id)
    maintenance_check = f"_service_maintenance:{service_id}"

    stopping = asyncio.create_task(asyncio.to_thread(app.stop, timeout=20))
    # While the container is still finishing its work, Consul already routes around it.
    check = await async_wait_until(
        lambda: consul.checks().get(maintenance_check),
        timeout=10,
        message=f"{maintenance_check} never appeared after the stop signal",
    )
    assert check["Status"] == "critical"
    assert service_id in running.of_containers(app.id), "drained, not yet deregistered"

    await stopping
    await running.wait_deregistered(service_id)
    assert maintenance_check not in consul.checks()
