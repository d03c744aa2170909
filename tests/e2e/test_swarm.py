"""End to end on a real single-node swarm: the seed's stacks from deploy/, our image.

One module-scoped deployment (Consul, registrator as a global service, the seed's application
stack) on an overlay network of its own, with a unique stack-name prefix and free host ports, so
it can run next to `scripts/demo` on the same engine. The tests run in file order and share
that deployment: DNS answers, scaling up, killing registrator's task, removing a service.

Every registrator on the engine registers every container of the engine into its own Consul,
so this Consul may also list a concurrently running demo's tasks (and the demo's Consul ours).
Catalog checks therefore count only entries whose service id names this module's stacks, and
DNS answers only addresses on this module's overlay subnet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import CACHE, docker_json, free_overlay_subnet, run, swarm_manager
from tests.helpers import docker_socket, free_ports, wait_until

pytestmark = [
    pytest.mark.docker,
    pytest.mark.engines("docker20", "docker29", reason="Podman has no Swarm mode"),
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BUILD_IMAGES = REPO / "scripts" / "lib" / "build-images.sh"
STAMP_DIR = CACHE / "images"
CONSUL_IMAGE = "registrator-test/consul:1.14.0"
WEB_IMAGE = "registrator-test/web:latest"
API_IMAGE = "registrator-test/http-echo:latest"
CONVERGE = 60.0  # seconds any catalog change may take (registrator's own work is sub-second)


@dataclass(frozen=True)
class Deployment:
    prefix: str
    network: str
    subnet: ipaddress.IPv4Network
    http_port: int
    dns_port: int
    env: dict[str, str]

    @property
    def apps(self) -> str:
        return f"{self.prefix}-apps"

    @property
    def web(self) -> str:
        return f"{self.apps}_web-service"

    @property
    def api(self) -> str:
        return f"{self.apps}_api-service"

    @property
    def registrator(self) -> str:
        return f"{self.prefix}-reg_registrator"

    def consul(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}/{path.lstrip('/')}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=5) as answer:
            return json.loads(answer.read() or b"null")

    def catalog(self, name: str) -> list[dict[str, Any]]:
        """Catalog entries of `name` that this module's application stack owns."""
        entries = self.consul(f"/v1/catalog/service/{name}") or []
        return [e for e in entries if f":{self.apps}_" in e["ServiceID"]]

    def task_ips(self, service: str) -> dict[str, str]:
        """Running task containers of a Swarm service: container id -> address on our overlay."""
        ids = run(
            ["docker", "ps", "-q", "--no-trunc", "--filter",
             f"label=com.docker.swarm.service.name={service}"]
        ).split()  # fmt: skip
        if not ids:
            return {}
        result = {}
        for container in docker_json("inspect", *ids):
            networks = container["NetworkSettings"]["Networks"]
            if container["State"]["Running"] and self.network in networks:
                result[container["Id"]] = networks[self.network]["IPAddress"]
        return result

    def dig(self, name: str) -> set[str]:
        out = run(
            ["dig", "@127.0.0.1", "-p", str(self.dns_port), name, "+short", "+time=2", "+tries=1"]
        )
        found = {line for line in out.split() if line[:1].isdigit()}
        return {ip for ip in found if ipaddress.ip_address(ip) in self.subnet}


def matches_tasks(deployment: Deployment, name: str, service: str, count: int) -> bool:
    """The catalog holds exactly one entry per running task of `service`, at its overlay IP."""
    tasks = deployment.task_ips(service)
    entries = deployment.catalog(name)
    if len(tasks) != count or len(entries) != count:
        return False
    held = {e["ServiceMeta"].get("registrator-container"): e["ServiceAddress"] for e in entries}
    return held == tasks


def wait_matches(deployment: Deployment, name: str, service: str, count: int) -> None:
    def check() -> bool:
        return matches_tasks(deployment, name, service, count)

    wait_until(
        check,
        timeout=CONVERGE,
        interval=0.5,
        message=f"catalog {name} did not match {count} running tasks of {service}: "
        f"{deployment.catalog(name)} vs {deployment.task_ips(service)}",
        ignore=(OSError, ValueError),
    )


@pytest.fixture(scope="module")
def swarm() -> Iterator[None]:
    run([str(BUILD_IMAGES)], timeout=900)
    with swarm_manager():
        yield


def stack_deploy(stack: str, file: str, env: Mapping[str, str]) -> None:
    run(
        ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(DEPLOY / file), stack],
        env=env,
    )


def remove_everything(prefix: str, stacks: Sequence[str], network: str) -> list[str]:
    problems = []
    for stack in stacks:
        with contextlib.suppress(AssertionError):
            run(["docker", "stack", "rm", stack])

    def containers_gone() -> bool:
        return not any(
            run(
                ["docker", "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={s}"]
            ).split()
            for s in stacks
        )

    try:
        wait_until(containers_gone, timeout=60, interval=0.5, message="stack containers remain")
    except AssertionError as exc:
        problems.append(str(exc))

    def network_removed() -> bool:
        gone = subprocess.run(
            ["docker", "network", "rm", network], capture_output=True, text=True, check=False
        )
        return gone.returncode == 0 or "not found" in gone.stderr

    try:
        wait_until(network_removed, timeout=30, interval=1, message=f"network {network} remains")
    except AssertionError as exc:
        problems.append(str(exc))
    subprocess.run(
        ["docker", "volume", "rm", f"{prefix}-consul_consul-data"], capture_output=True, check=False
    )
    return problems


@pytest.fixture(scope="module")
def deployment(swarm: None) -> Iterator[Deployment]:
    prefix = f"rte2e{secrets.token_hex(3)}"
    network = f"{prefix}-overlay"
    stacks = [f"{prefix}-connect", f"{prefix}-apps", f"{prefix}-reg", f"{prefix}-consul"]
    http_port, dns_port = free_ports(2)
    registrator_image = (STAMP_DIR / "registrator-build-tag").read_text().strip()
    env = {
        "CONSUL_IMAGE": CONSUL_IMAGE,
        "REGISTRATOR_IMAGE": registrator_image,
        "WEB_IMAGE": WEB_IMAGE,
        "API_IMAGE": API_IMAGE,
        "FRONTEND_IMAGE": WEB_IMAGE,
        "BACKEND_IMAGE": WEB_IMAGE,
        "OVERLAY_NETWORK": network,
        "CONSUL_HTTP_PORT": str(http_port),
        "CONSUL_DNS_PORT": str(dns_port),
        # The lane's engine (the docker29 lane runs beside /var/run/docker.sock's 20.10).
        "DOCKER_SOCKET": str(docker_socket()),
    }
    subnet = free_overlay_subnet()
    try:
        run(
            ["docker", "network", "create", "--driver", "overlay", "--attachable",
             "--subnet", str(subnet), "--label", "registrator-test=1", network]
        )  # fmt: skip
        result = Deployment(prefix, network, subnet, http_port, dns_port, env)
        stack_deploy(f"{prefix}-consul", "consul-stack.yml", env)
        wait_until(
            lambda: result.consul("/v1/status/leader"),
            timeout=90,
            interval=0.5,
            message="Consul got no leader",
            ignore=(OSError, ValueError),
        )
        stack_deploy(f"{prefix}-reg", "registrator-stack.yml", env)
        stack_deploy(f"{prefix}-apps", "application-stack.yml", env)
        yield result
    finally:
        problems = remove_everything(prefix, stacks, network)
        if problems:
            pytest.fail("teardown: " + "; ".join(problems), pytrace=False)


def test_dns_answers_the_web_tasks_overlay_addresses(deployment: Deployment) -> None:
    wait_matches(deployment, "web-service", deployment.web, 3)
    wait_matches(deployment, "api-service", deployment.api, 2)
    tasks = set(deployment.task_ips(deployment.web).values())
    assert len(tasks) == 3
    assert deployment.dig("web-service.service.consul") == tasks
    for entry in deployment.catalog("web-service"):
        assert entry["ServiceTags"] == ["public"]
        assert entry["ServicePort"] == 80
    for entry in deployment.catalog("api-service"):
        assert entry["ServiceTags"] == ["internal"]
        assert entry["ServicePort"] == 5678
    # Consul itself bound to the overlay (deploy/consul-stack.yml's -bind template).
    member = deployment.consul("/v1/agent/self")["Member"]
    assert ipaddress.ip_address(member["Addr"]) in deployment.subnet


def test_scaling_up_registers_every_new_task(deployment: Deployment) -> None:
    run(["docker", "service", "scale", "--detach", f"{deployment.web}=5"])
    wait_matches(deployment, "web-service", deployment.web, 5)
    wait_until(
        lambda: len(deployment.dig("web-service.service.consul")) == 5,
        timeout=CONVERGE,
        interval=0.5,
        message="DNS did not answer 5 web-service addresses",
    )


def test_killed_registrator_is_restarted_and_catches_up(deployment: Deployment) -> None:
    wait_matches(deployment, "web-service", deployment.web, 5)
    wait_matches(deployment, "api-service", deployment.api, 2)
    before = {e["ServiceID"] for n in ("web-service", "api-service") for e in deployment.catalog(n)}
    old = run(
        ["docker", "ps", "-q", "--no-trunc", "--filter",
         f"label=com.docker.swarm.service.name={deployment.registrator}"]
    ).split()  # fmt: skip
    assert len(old) == 1, f"expected one registrator task container, found {old}"
    run(["docker", "kill", old[0]])
    # While it is down, a change it must catch up on after the restart.
    run(["docker", "service", "scale", "--detach", f"{deployment.api}=3"])

    def restarted_and_ready() -> bool:
        new = run(
            ["docker", "ps", "-q", "--no-trunc", "--filter",
             f"label=com.docker.swarm.service.name={deployment.registrator}"]
        ).split()  # fmt: skip
        if not new or new == old:
            return False
        # The image's health check: 0 once /health says Docker, Consul and the first full
        # reconcile are done.
        probe = subprocess.run(
            ["docker", "exec", new[0], "python3", "/opt/registrator/healthcheck.py"],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    wait_until(restarted_and_ready, timeout=CONVERGE, interval=0.5,
               message="Swarm did not restart registrator, or it never became ready")  # fmt: skip
    wait_matches(deployment, "api-service", deployment.api, 3)
    wait_matches(deployment, "web-service", deployment.web, 5)
    after = {e["ServiceID"] for n in ("web-service", "api-service") for e in deployment.catalog(n)}
    assert before <= after, f"lost: {sorted(before - after)}"
    added = after - before
    assert len(added) == 1 and all(f":{deployment.api}." in sid for sid in added), added
    # No duplicates: one catalog entry per running task container (checked above), and ids unique.
    entries = [e for n in ("web-service", "api-service") for e in deployment.catalog(n)]
    assert len(entries) == len({e["ServiceID"] for e in entries}) == 8


def test_removing_the_service_deregisters_every_task(deployment: Deployment) -> None:
    wait_matches(deployment, "web-service", deployment.web, 5)
    run(["docker", "service", "rm", deployment.web])
    started = time.monotonic()
    wait_until(
        lambda: not deployment.catalog("web-service"),
        timeout=CONVERGE,
        interval=0.5,
        message="web-service entries remain after docker service rm",
        ignore=(OSError, ValueError),
    )
    assert not deployment.dig("web-service.service.consul")
    # The other service is untouched.
    assert matches_tasks(deployment, "api-service", deployment.api, 3)
    assert time.monotonic() - started < CONVERGE


def test_seed_connect_example_registers_sidecars_with_upstreams(deployment: Deployment) -> None:
    """The seed's connect-enabled-service.yml, with SERVICE_CONNECT* keys instead of its
    config files (deploy/connect-example.yml): both services get a sidecar registration, and
    the backend's proxy carries the seed's `database` upstream on local port 5432."""
    stack = f"{deployment.prefix}-connect"
    stack_deploy(stack, "connect-example.yml", deployment.env)

    def sidecars() -> dict[str, dict[str, Any]]:
        found = {}
        for name in ("frontend-sidecar-proxy", "backend-sidecar-proxy"):
            for entry in deployment.consul(f"/v1/catalog/service/{name}") or []:
                if f":{stack}_" in entry["ServiceID"]:
                    found[name] = entry
        return found

    wait_until(
        lambda: len(sidecars()) == 2,
        timeout=CONVERGE,
        interval=0.5,
        message="the connect example's sidecars were not registered",
        ignore=(OSError, ValueError),
    )
    found = sidecars()
    backend = found["backend-sidecar-proxy"]
    assert backend["ServiceKind"] == "connect-proxy"
    assert backend["ServiceProxy"]["DestinationServiceName"] == "backend"
    upstreams = backend["ServiceProxy"]["Upstreams"]
    assert [(u["DestinationName"], u["LocalBindPort"]) for u in upstreams] == [("database", 5432)]
    assert found["frontend-sidecar-proxy"]["ServiceProxy"]["DestinationServiceName"] == "frontend"
