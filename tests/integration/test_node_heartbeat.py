"""The node heartbeat against a real Consul agent and the real `registrator` command.

Two agents with different -node names register the same container (every agent registers
every container of its engine), so each test has "this node" and "another node" on one
Consul agent, which is the seed's topology (every node's agent writes to one consul-server).
Killing one agent with SIGKILL is a node lost without a goodbye: its services must turn
critical within the TTL and leave `?passing` and DNS, while the other node's stay untouched.

Short TTLs keep the tests quick; Consul's DeregisterCriticalServiceAfter cannot be below one
minute, so the reaping test takes about a minute and a half.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import time
from typing import Any
from urllib.parse import quote

import pytest
from docker.models.containers import Container

from registrator.checks import check_id
from registrator.model import CheckKind
from registrator.reaping import heartbeat_check_id, heartbeat_service_id
from tests.conftest import StartProcess
from tests.helpers import (
    HTTPD_COMMAND,
    ConsulAgent,
    ContainerFactory,
    NetworkFactory,
    async_wait_until,
    wait_until,
)
from tests.helpers_cli import RegistratorProcess, unique_node
from tests.integration.conftest import StartAgent

TTL = 4


def web(containers: ContainerFactory, networks: NetworkFactory, name: str) -> Container:
    """An httpd with an HTTP check, so each service has a check of its own besides the alias.

    On a network of its own rather than the default bridge: the tests need nothing of it.
    """
    return containers.run(
        "web",
        command=HTTPD_COMMAND,
        labels={
            "SERVICE_NAME": name,
            "SERVICE_CHECK_HTTP": "/index.html",
            "SERVICE_CHECK_INTERVAL": "1s",
        },
        ports={"80/tcp": None},
        network=networks.create("hb"),
    )


def statuses(consul: ConsulAgent, service_id: str) -> dict[str, str]:
    """The service's checks by kind (the part of the check id after the service id)."""
    prefix = f"service:{service_id}:"
    return {
        check["CheckID"][len(prefix) :]: check["Status"]
        for check in consul.checks().values()
        if check["ServiceID"] == service_id
    }


def passing_ids(consul: ConsulAgent, name: str) -> set[str]:
    entries = consul.get(f"/v1/health/service/{quote(name)}?passing")
    return {entry["Service"]["ID"] for entry in entries}


def dig(consul: ConsulAgent, name: str) -> list[str]:
    found = shutil.which("dig")
    if found is None:
        pytest.fail("dig is missing: scripts/test installs it (Debian package dnsutils)")
    result = subprocess.run(
        [found, "@127.0.0.1", "-p", str(consul.dns_port), "+short", "+time=2", "+tries=1", name],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.split()


def start_pair(
    start_process: StartProcess, consul: ConsulAgent, *flags: str
) -> tuple[RegistratorProcess, str, RegistratorProcess, str]:
    """Agents of two nodes, each tagging its entries with its own node name (for DNS)."""
    uri = f"consul://{consul.http_addr}"
    node_a, node_b = unique_node("hb"), unique_node("hb")
    # -ip: published ports at an address asked for, so Consul's HTTP checks probe loopback and
    # never the host's own primary address (which the default would choose).
    flags = ("-ip", "127.0.0.1", *flags)
    a = start_process(*flags, "-tags", node_a, node=node_a, consul=uri)
    b = start_process(*flags, "-tags", node_b, node=node_b, consul=uri)
    return a, node_a, b, node_b


def all_passing(consul: ConsulAgent, service_id: str) -> dict[str, str] | None:
    found = statuses(consul, service_id)
    ok = found.keys() >= {"http", CheckKind.NODE_ALIAS} and set(found.values()) == {"passing"}
    return found if ok else None


def test_killed_agents_services_turn_critical_within_the_ttl_and_leave_dns(
    consul: ConsulAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    start_process: StartProcess,
) -> None:
    name = f"hb-{secrets.token_hex(3)}"
    container = web(containers, docker_network, name)
    a, node_a, b, node_b = start_pair(start_process, consul, "-node-ttl", str(TTL))
    sid_a, sid_b = f"{node_a}:{container.name}:80", f"{node_b}:{container.name}:80"
    for sid in (sid_a, sid_b):
        wait_until(lambda sid=sid: all_passing(consul, sid), timeout=20,
                   message=f"{sid}: its HTTP and node alias checks did not both pass")  # fmt: skip
    assert passing_ids(consul, name) == {sid_a, sid_b}
    assert dig(consul, f"{node_a}.{name}.service.consul") == ["127.0.0.1"]
    heartbeat = consul.checks()[heartbeat_check_id(node_a)]
    assert heartbeat["ServiceID"] == heartbeat_service_id(node_a)
    assert f"on node {node_a}" in heartbeat["Output"] and "last beat" in heartbeat["Output"]
    assert f"pid {a.process.pid}" in heartbeat["Output"]

    a.kill()  # SIGKILL: no final beat, no deregistration
    killed = time.monotonic()
    b_seen: list[dict[str, str]] = []

    def a_critical() -> bool:
        b_seen.append(statuses(consul, sid_b))
        return statuses(consul, sid_a).get(CheckKind.NODE_ALIAS) == "critical"

    wait_until(a_critical, timeout=TTL + 10, interval=0.1,
               message=f"{sid_a} did not turn critical after its agent was killed")  # fmt: skip
    to_critical = time.monotonic() - killed
    # The last beat was at most TTL/2 before the kill, so Consul fails it within the TTL.
    assert to_critical <= TTL + 1, to_critical
    # Its own HTTP check still passes (the container serves), yet the alias takes it out of
    # every healthy view: ?passing and DNS.
    assert statuses(consul, sid_a) == {"http": "passing", CheckKind.NODE_ALIAS: "critical"}
    assert passing_ids(consul, name) == {sid_b}
    assert dig(consul, f"{node_a}.{name}.service.consul") == []
    assert dig(consul, f"{node_b}.{name}.service.consul") == ["127.0.0.1"]
    # The other node's entry never changed while this one failed.
    assert all(seen == {"http": "passing", CheckKind.NODE_ALIAS: "passing"} for seen in b_seen)
    # The UI says whose heartbeat went quiet, and when it last beat.
    expired = consul.checks()[heartbeat_check_id(node_a)]
    assert expired["Status"] == "critical"
    assert "TTL expired" in expired["Output"] and f"on node {node_a}" in expired["Output"]
    assert "last beat" in expired["Output"]
    assert b.returncode is None
    print(f"\nnode heartbeat: TTL {TTL} s, critical {to_critical:.1f} s after SIGKILL")


@pytest.mark.parametrize(
    ("how", "ttl"),
    [
        # A clean stop beats once more, so the restart has the whole TTL.
        pytest.param(signal.SIGTERM, TTL, id="SIGTERM then restart"),
        # The last beat may be TTL/2 old at the kill; the restart must fit in what is left.
        pytest.param(signal.SIGKILL, 12, id="SIGKILL then restart"),
    ],
)
def test_restarted_agent_resumes_the_heartbeat_without_a_critical_moment(
    consul: ConsulAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    start_process: StartProcess,
    how: signal.Signals,
    ttl: int,
) -> None:
    container = web(containers, docker_network, f"hb-{secrets.token_hex(3)}")
    uri = f"consul://{consul.http_addr}"
    node = unique_node("hb")
    first = start_process("-ip", "127.0.0.1", "-node-ttl", str(ttl), node=node, consul=uri)
    sid = f"{node}:{container.name}:80"
    wait_until(lambda: all_passing(consul, sid), timeout=20, message=f"{sid} never passed")
    seen: list[str] = []

    def watch_until(deadline: float) -> None:
        while time.monotonic() < deadline:
            seen.append(statuses(consul, sid).get(CheckKind.NODE_ALIAS, "missing"))
            seen.append(consul.checks()[heartbeat_check_id(node)]["Status"])
            time.sleep(0.1)

    first.signal(how)
    first.wait_exit()
    second = start_process(
        "-ip", "127.0.0.1", "-node-ttl", str(ttl), node=node, consul=uri, wait=False
    )
    watch_until(time.monotonic() + 0.5)
    second.wait_ready(timeout=30)
    # Past the point where the old heartbeat would have expired without the new agent.
    watch_until(time.monotonic() + ttl + 1)
    assert set(seen) == {"passing"}, seen
    output = consul.checks()[heartbeat_check_id(node)]["Output"]
    assert f"pid {second.process.pid}" in output, output  # the same check, now the new agent's
    assert heartbeat_service_id(node) in consul.services()


def test_lost_agents_services_are_reaped_after_the_configured_time(
    consul: ConsulAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    start_process: StartProcess,
) -> None:
    container = web(containers, docker_network, f"hb-{secrets.token_hex(3)}")
    reap_after = 60  # Consul's minimum
    a, node_a, _b, node_b = start_pair(
        start_process, consul, "-node-ttl", "2", "-node-reap-after", str(reap_after)
    )
    sid_a, sid_b = f"{node_a}:{container.name}:80", f"{node_b}:{container.name}:80"
    for sid in (sid_a, sid_b):
        wait_until(lambda sid=sid: all_passing(consul, sid), timeout=20, message=sid)

    a.kill()
    killed = time.monotonic()
    wait_until(
        lambda: statuses(consul, sid_a).get(CheckKind.NODE_ALIAS) == "critical",
        timeout=12,
        message=f"{sid_a} did not turn critical",
    )
    to_critical = time.monotonic() - killed

    def a_gone() -> bool:
        services = consul.services()
        assert sid_b in services and heartbeat_service_id(node_b) in services
        return sid_a not in services and heartbeat_service_id(node_a) not in services

    # Consul's reaper runs every 30 s: removal comes TTL + reap time + up to 30 s after the kill.
    wait_until(a_gone, timeout=2 + reap_after + 30 + 15, interval=0.5,
               message=f"{sid_a} and node {node_a}'s heartbeat were not reaped")  # fmt: skip
    to_removed = time.monotonic() - killed
    assert to_removed >= reap_after
    assert all_passing(consul, sid_b)
    print(
        f"\nnode reaping: TTL 2 s, reap after {reap_after} s: critical {to_critical:.1f} s, "
        f"removed {to_removed:.1f} s after SIGKILL"
    )


async def test_node_ttl_0_registers_no_heartbeat_and_no_alias(
    consul: ConsulAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    start_agent: StartAgent,
) -> None:
    container = web(containers, docker_network, f"hb-{secrets.token_hex(3)}")
    running = await start_agent("-node-ttl", "0")
    sid = running.service_id(container.name, 80)
    await running.wait_registered(sid)
    assert heartbeat_service_id(running.node) not in consul.services()
    assert check_id(sid, CheckKind.NODE_ALIAS) not in consul.checks()


async def test_consul_lost_the_heartbeat_it_is_registered_again(
    consul: ConsulAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    start_agent: StartAgent,
) -> None:
    """A Consul restarted empty, or one that reaped the heartbeat during a long partition:
    the next beat finds no check and registers the heartbeat again."""
    container = web(containers, docker_network, f"hb-{secrets.token_hex(3)}")
    running = await start_agent("-node-ttl", "2")
    sid = running.service_id(container.name, 80)
    await running.wait_registered(sid)
    consul.put(f"/v1/agent/service/deregister/{quote(heartbeat_service_id(running.node))}")

    def healed() -> Any:
        return all_passing(consul, sid) and heartbeat_service_id(running.node) in consul.services()

    # The agent runs on this event loop: wait without blocking it.
    await async_wait_until(healed, timeout=5, message="the heartbeat was not registered again")
