"""End to end on a macvlan network (the seed's part 1): a container with its own address on a
macvlan, registered by the real `registrator` command into a real Consul agent whose HTTP check
reaches the container through a host-side macvlan shim.

The machine has no `dummy` interfaces and eth0 must never be touched, so the macvlan's parent
is one end of a veth pair made for this module. Containers on a macvlan cannot talk to their
parent's host directly; the seed's remedy is a macvlan interface on the host (the "shim") in
the same subnet, which is what lets the host's Consul agent run HTTP checks against the
container's macvlan address:

    host: shim 198.18.60.254/24 --+
                                  +-- parent (veth) --- peer (veth, unused)
    container: eth0 198.18.60.10 -+

The subnet and container address are fixed (198.18.60.0/24, .10), so a file lock serialises
runs of this module on one machine; under the lock, interfaces and networks that a killed
earlier run left behind are removed first. Every agent and Consul entry is scoped to this
module: the registrator under test uses a node name of its own, and other test sessions'
containers on the shared engine are ignored.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from registrator.model import META_CONTAINER, META_NODE
from tests.e2e.support import exclusive, run, run_quietly
from tests.helpers import (
    HTTPD_COMMAND,
    HTTPD_INDEX_MARKER,
    LABEL,
    OWNER_LABEL,
    TEST_LABEL,
    ConsulAgent,
    find_consul_bin,
    http_get_text,
    make_consul_agent,
    wait_until,
)
from tests.helpers_cli import RegistratorProcess

pytestmark = [
    pytest.mark.docker,
    pytest.mark.consul,
    # Podman 4.3 with CNI names the macvlan parent differently and has no Docker-style shim
    # setup to mirror; the lane covers the core registration paths instead.
    pytest.mark.engines("docker20", "docker29", reason="macvlan is tested on the Docker engines"),
]

REPO = Path(__file__).resolve().parents[2]
ENSURE_PKG = REPO / "scripts" / "lib" / "ensure-pkg.sh"
TEST_IMAGE = os.environ.get("REGISTRATOR_TEST_IMAGE", "registrator-test/busybox:latest")

SUBNET = ipaddress.IPv4Network("198.18.60.0/24")
GATEWAY = "198.18.60.1"  # required by Docker's IPAM; nothing answers there
SHIM_ADDRESS = "198.18.60.254/24"
CONTAINER_IP = "198.18.60.10"
# Interface names: rtmv<6 hex><p|q|s>, 11 characters (the kernel allows 15).
LINK_PREFIX = "rtmv"
NETWORK_LABEL = "registrator-test.macvlan"
SERVICE_NAME = "macvlan-web"
CONVERGE = 20.0  # seconds; the agent acts on events within a second, checks run every second


def our_links() -> list[str]:
    """Host interfaces whose names this module uses (left over, when seen under the lock)."""
    # /sys/class/net rather than `ip link`, whose dump is cut short ("Dump was interrupted")
    # while other tests on the machine add and remove interfaces.
    return sorted(name for name in os.listdir("/sys/class/net") if name.startswith(LINK_PREFIX))


def remove_leftovers() -> None:
    """Removes what an earlier, killed run of this module left (called under the lock)."""
    networks = run(["docker", "network", "ls", "-q", "--filter", f"label={NETWORK_LABEL}"]).split()
    for network in networks:
        attached = json.loads(run(["docker", "network", "inspect", network]))[0]["Containers"]
        for container in attached or {}:
            run_quietly(["docker", "rm", "-f", container])
        run_quietly(["docker", "network", "rm", network])
    # Deleting a veth end deletes its peer, and a parent takes its macvlan shim with it.
    for link in our_links():
        if link.endswith("p"):
            run_quietly(["ip", "link", "del", link])
    for link in our_links():
        run_quietly(["ip", "link", "del", link])


def labels(test: str) -> list[str]:
    owner = f"{socket.gethostname()}:{os.getpid()}"
    pairs = {LABEL: "1", OWNER_LABEL: owner, TEST_LABEL: test}
    return [arg for key, value in pairs.items() for arg in ("--label", f"{key}={value}")]


@dataclass(frozen=True)
class Macvlan:
    parent: str
    shim: str
    network: str
    container_id: str
    container_name: str
    consul: ConsulAgent
    log_dir: Path

    def start_registrator(self, *flags: str) -> tuple[str, RegistratorProcess]:
        """The real command with a node name of its own, ready (first full reconcile done)."""
        node = f"mv-{secrets.token_hex(4)}"
        agent = RegistratorProcess.start(
            self.log_dir, *flags, node=node, consul=f"consul://{self.consul.http_addr}"
        )
        agent.wait_ready(timeout=30)
        return node, agent

    def services_of(self, node: str) -> dict[str, dict[str, Any]]:
        """What `node` registered for this module's container."""
        return {
            sid: entry
            for sid, entry in self.consul.services().items()
            if (entry.get("Meta") or {}).get(META_NODE) == node
            and (entry.get("Meta") or {}).get(META_CONTAINER) == self.container_id
        }


@pytest.fixture(scope="module")
def macvlan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Macvlan]:
    run([str(ENSURE_PKG), "/sbin/ip", "iproute2"], timeout=300)
    if "macvlan" not in run(["docker", "info", "--format", "{{json .Plugins.Network}}"]):
        pytest.fail("this Docker engine has no macvlan network driver", pytrace=False)
    consul_bin = find_consul_bin()
    if not consul_bin:
        pytest.fail("no consul binary: set CONSUL_BIN (scripts/test does)", pytrace=False)
    tag = secrets.token_hex(3)
    parent, peer, shim = (f"{LINK_PREFIX}{tag}{end}" for end in "pqs")
    network = f"rt-macvlan-{tag}"
    container_name = f"rt-macvlan-web-{tag}"
    problems: list[str | None] = []
    with exclusive("macvlan"):
        remove_leftovers()
        consul: ConsulAgent | None = None
        try:
            # The parent: a veth pair, both ends up (a veth has carrier only then).
            run(["ip", "link", "add", parent, "type", "veth", "peer", "name", peer])
            run(["ip", "link", "set", parent, "up"])
            run(["ip", "link", "set", peer, "up"])
            run(
                ["docker", "network", "create", "--driver", "macvlan",
                 "--opt", f"parent={parent}", "--subnet", str(SUBNET), "--gateway", GATEWAY,
                 "--label", f"{NETWORK_LABEL}=1", *labels("macvlan"), network]
            )  # fmt: skip
            # The seed's host-side shim: the host reaches macvlan containers through it.
            run(["ip", "link", "add", shim, "link", parent, "type", "macvlan", "mode", "bridge"])
            run(["ip", "addr", "add", SHIM_ADDRESS, "dev", shim])
            run(["ip", "link", "set", shim, "up"])
            container_id = run(
                ["docker", "run", "-d", "--name", container_name,
                 "--network", network, "--ip", CONTAINER_IP, "--expose", "80",
                 "--label", f"SERVICE_NAME={SERVICE_NAME}",
                 "--label", "SERVICE_CHECK_HTTP=/index.html",
                 "--label", "SERVICE_CHECK_INTERVAL=1s",
                 *labels("macvlan"), TEST_IMAGE, *HTTPD_COMMAND]
            ).strip()  # fmt: skip
            consul = make_consul_agent(
                tmp_path_factory.mktemp("macvlan-consul"), consul_bin=consul_bin
            )
            yield Macvlan(
                parent=parent,
                shim=shim,
                network=network,
                container_id=container_id,
                container_name=container_name,
                consul=consul,
                log_dir=tmp_path_factory.mktemp("macvlan-agents"),
            )
        finally:
            if consul is not None:
                consul.stop()
            problems.append(run_quietly(["docker", "rm", "-f", container_name]))
            problems.append(run_quietly(["docker", "network", "rm", network]))
            # The parent takes its peer and the shim with it.
            problems.append(run_quietly(["ip", "link", "del", parent]))
            left = our_links()
            if left:
                problems.append(f"interfaces left behind: {left}")
    # "No such ..." means setup never got that far: not a teardown problem.
    real = [p for p in problems if p and "No such" not in p and "Cannot find" not in p]
    if real:
        pytest.fail("teardown: " + "; ".join(real), pytrace=False)


def test_host_reaches_the_macvlan_container_through_the_shim(macvlan: Macvlan) -> None:
    # Precondition of the Consul check below: the host's route to the subnet is the shim.
    route = run(["ip", "-o", "route", "get", CONTAINER_IP])
    assert f"dev {macvlan.shim} " in route, route
    body = wait_until(
        lambda: http_get_text(f"http://{CONTAINER_IP}/index.html", timeout=2),
        timeout=CONVERGE,
        interval=0.2,
        message=f"http://{CONTAINER_IP}/ did not answer through {macvlan.shim}",
        ignore=(OSError,),
    )
    assert HTTPD_INDEX_MARKER in body


def test_internal_registers_the_macvlan_address_and_its_http_check_passes(
    macvlan: Macvlan,
) -> None:
    node, agent = macvlan.start_registrator("-internal", "-resync", "1")
    try:
        expected_id = f"{node}:{macvlan.container_name}:80"
        services = wait_until(
            lambda: macvlan.services_of(node),
            timeout=CONVERGE,
            interval=0.2,
            message=f"{macvlan.container_name} was not registered by {node}",
        )
        assert list(services) == [expected_id]
        service = services[expected_id]
        assert service["Service"] == SERVICE_NAME
        assert service["Address"] == CONTAINER_IP
        assert service["Port"] == 80

        def http_check() -> dict[str, Any] | None:
            checks = [c for c in macvlan.consul.checks().values() if c["ServiceID"] == expected_id]
            assert len(checks) <= 1, checks
            return checks[0] if checks and checks[0]["Status"] == "passing" else None

        check = wait_until(
            http_check,
            timeout=CONVERGE,
            interval=0.2,
            message=f"the HTTP check of {expected_id} did not pass: "
            f"{[c for c in macvlan.consul.checks().values() if c['ServiceID'] == expected_id]}",
        )
        assert check is not None
        assert check["CheckID"] == f"service:{expected_id}:http"
        assert check["Type"] == "http"
        # Consul probed the container's macvlan address (from the host, through the shim).
        assert f"http://{CONTAINER_IP}:80/index.html" in check["Output"], check["Output"]
        # The catalog (what DNS and other agents see) agrees.
        catalog = macvlan.consul.get(f"/v1/catalog/service/{SERVICE_NAME}")
        entry = next(e for e in catalog if e["ServiceID"] == expected_id)
        assert (entry["ServiceAddress"], entry["ServicePort"]) == (CONTAINER_IP, 80)
    finally:
        agent.terminate()


def test_without_internal_an_unpublished_macvlan_port_is_not_registered(
    macvlan: Macvlan,
) -> None:
    # Ready means the first full reconcile is done, and the container existed before it: the
    # agent has looked at it, and found nothing reachable from outside (no published port).
    node, agent = macvlan.start_registrator("-resync", "1")
    try:
        assert macvlan.services_of(node) == {}
        assert not [
            sid for sid, entry in macvlan.consul.services().items()
            if (entry.get("Meta") or {}).get(META_NODE) == node
            and entry["Service"] == SERVICE_NAME
        ]  # fmt: skip
    finally:
        agent.terminate()
