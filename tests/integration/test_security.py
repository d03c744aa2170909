"""Security: Consul ACLs, TLS to Consul, and what the agent asks of the Docker socket.

The real CLI against real Consul agents configured with ACLs (default deny) or HTTPS with
client certificates made here with `openssl`, and against the real Docker engine through a
recording proxy. Every agent runs under a `-node` of its own; assertions only look at this
test's containers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.docker_proxy import ThreadedDockerProxy
from tests.helpers import ConsulAgent, ContainerFactory, docker_socket, free_port, wait_until
from tests.helpers_cli import (
    REPO,
    RegistratorProcess,
    http_get,
    owned_services,
    services_of,
    unique_node,
)

OPERATIONS_DOC = REPO / "docs" / "operations.md"


def documented_policy() -> str:
    """The ACL policy docs/operations.md recommends: the tests use exactly that text."""
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    after = text.partition("<!-- acl-policy")[2]
    match = re.search(r"```hcl\n(.*?)```", after, re.S)
    assert match, "docs/operations.md: no ```hcl block after the acl-policy marker"
    return match.group(1)


def without_rule(policy: str, resource: str) -> str:
    """The policy minus its `resource "" { ... }` block."""
    stripped = re.sub(rf'{resource} "" \{{.*?\}}\n', "", policy, flags=re.S)
    assert stripped != policy, f"no {resource} rule in the policy"
    return stripped


# --------------------------------------------------------------------------------------------
# ACLs


@dataclass
class AclConsul:
    consul: ConsulAgent  # requests carry the management token
    management: str

    def token_for(self, rules: str) -> str:
        policy = self.consul.put(
            "/v1/acl/policy", {"Name": f"registrator-{uuid.uuid4().hex[:8]}", "Rules": rules}
        )
        token = self.consul.put("/v1/acl/token", {"Policies": [{"ID": policy["ID"]}]})
        return str(token["SecretID"])


@pytest.fixture
def acl_consul(consul_factory: Callable[..., ConsulAgent]) -> AclConsul:
    management = str(uuid.uuid4())
    config = {
        "acl": {
            "enabled": True,
            "default_policy": "deny",
            "enable_token_persistence": True,
            # The agent's own token (node registration, anti-entropy) is Consul's business,
            # not registrator's; management keeps the dev agent quiet.
            "tokens": {"initial_management": management, "agent": management},
        }
    }
    consul = consul_factory(config=config, token=management)
    return AclConsul(consul, management)


def _assert_secret_absent(agent: RegistratorProcess, secret: str) -> None:
    assert secret not in agent.stderr(), "the token appears in the logs"
    if agent.http_port is not None and agent.returncode is None:
        _, metrics = http_get(agent.url("/metrics"))
        _, health = http_get(agent.url("/health"))
        assert secret not in metrics and secret not in health


def _register_one_and_remove_it(
    agent: RegistratorProcess, consul: ConsulAgent, containers: ContainerFactory, node: str
) -> None:
    agent.wait_ready()
    container = containers.run(labels={"SERVICE_NAME": f"acl-{node}", "SERVICE_PORT": "80"})
    registered = wait_until(
        lambda: services_of(consul, node, container.id),
        timeout=10,
        message="nothing registered under the ACL token",
    )
    (service_id,) = registered
    # The -ttl heartbeat: a check update under the token (its output is only set by updates).
    wait_until(
        lambda: any(
            check.get("ServiceID") == service_id and check.get("Output") == "registrator is running"
            for check in consul.checks().values()
        ),
        timeout=10,
        message=f"no heartbeat reached Consul:\n{agent.stderr()[-2000:]}",
    )
    container.stop(timeout=2)
    wait_until(
        lambda: not services_of(consul, node, container.id),
        timeout=10,
        message="not deregistered",
    )


def test_minimal_policy_works_with_token_from_env_and_never_leaks_it(
    tmp_path: Path, acl_consul: AclConsul, containers: ContainerFactory
) -> None:
    token = acl_consul.token_for(documented_policy())
    node = unique_node("acl")
    agent = RegistratorProcess.start(
        tmp_path,
        "-log-level",
        "debug",
        "-ttl",
        "6",
        node=node,
        consul=f"consul://{acl_consul.consul.http_addr}",
        env={"CONSUL_HTTP_TOKEN": token},
    )
    try:
        _register_one_and_remove_it(agent, acl_consul.consul, containers, node)
        _assert_secret_absent(agent, token)
        refusals = [
            line for line in agent.lines() if "HTTP 403" in line or "Permission denied" in line
        ]
        assert not refusals, "\n".join(refusals)
    finally:
        code, _ = agent.terminate()
    assert code == 0
    _assert_secret_absent(agent, token)


def test_minimal_policy_works_with_token_file(
    tmp_path: Path, acl_consul: AclConsul, containers: ContainerFactory
) -> None:
    token = acl_consul.token_for(documented_policy())
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    node = unique_node("acl")
    agent = RegistratorProcess.start(
        tmp_path,
        "-log-level",
        "debug",
        "-ttl",
        "6",
        node=node,
        consul=f"consul://{acl_consul.consul.http_addr}",
        env={"CONSUL_HTTP_TOKEN_FILE": str(token_file)},
    )
    try:
        _register_one_and_remove_it(agent, acl_consul.consul, containers, node)
        _assert_secret_absent(agent, token)
    finally:
        agent.terminate()


def test_wrong_token_fails_at_startup_with_a_clear_message(
    tmp_path: Path, acl_consul: AclConsul
) -> None:
    wrong = str(uuid.uuid4())
    agent = RegistratorProcess.start(
        tmp_path,
        "-log-level",
        "debug",
        node=unique_node("acl"),
        consul=f"consul://{acl_consul.consul.http_addr}",
        env={"CONSUL_HTTP_TOKEN": wrong},
    )
    started = time.monotonic()
    code = agent.wait_exit(timeout=20)
    assert code == 1, agent.stderr()
    assert time.monotonic() - started < 10, "a refused token must not be retried for long"
    errors = agent.lines_with(" ERROR ")
    assert len(errors) == 1, agent.stderr()
    assert "HTTP 403" in errors[0] and "Consul refused the ACL token" in errors[0], errors[0]
    _assert_secret_absent(agent, wrong)


def test_every_rule_of_the_minimal_policy_is_needed(
    tmp_path: Path, acl_consul: AclConsul, containers: ContainerFactory
) -> None:
    policy = documented_policy()
    address = f"consul://{acl_consul.consul.http_addr}"

    # Without agent:read, GET /v1/agent/self is refused: startup fails loudly.
    no_agent = RegistratorProcess.start(
        tmp_path,
        node=unique_node("acl"),
        consul=address,
        env={"CONSUL_HTTP_TOKEN": acl_consul.token_for(without_rule(policy, "agent_prefix"))},
    )
    assert no_agent.wait_exit(timeout=20) == 1
    assert no_agent.lines_with("giving up", "lacks permission 'agent:read'"), no_agent.stderr()

    # Without service:write, every registration is refused (and said so).
    node = unique_node("acl")
    no_service = RegistratorProcess.start(
        tmp_path,
        node=node,
        consul=address,
        env={"CONSUL_HTTP_TOKEN": acl_consul.token_for(without_rule(policy, "service_prefix"))},
    )
    try:
        no_service.wait_ready()
        container = containers.run(labels={"SERVICE_NAME": f"acl-{node}", "SERVICE_PORT": "80"})
        wait_until(
            lambda: no_service.lines_with("Consul rejected", container.name, "HTTP 403"),
            timeout=10,
            message=f"no refusal logged:\n{no_service.stderr()[-2000:]}",
        )
        assert not owned_services(acl_consul.consul, node)
    finally:
        no_service.terminate()


# --------------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests need the openssl command")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=registrator test CA", cwd=d,
    )  # fmt: skip
    common = (
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:server.dc1.consul\n"
        "extendedKeyUsage=serverAuth,clientAuth\n" + common
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n" + common)
    for name in ("server", "client"):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}", cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d,
        )  # fmt: skip
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


@pytest.fixture
def tls_consul(consul_factory: Callable[..., ConsulAgent], pki: Pki) -> tuple[ConsulAgent, int]:
    """A Consul agent whose HTTPS port demands a client certificate from our CA.

    Its plain HTTP port stays on (the fixture's readiness and reset use it); registrator only
    ever talks to the HTTPS one.
    """
    https_port = free_port()
    config = {
        "ports": {"https": https_port},
        "tls": {
            "defaults": {
                "ca_file": str(pki.ca),
                "cert_file": str(pki.server_cert),
                "key_file": str(pki.server_key),
            },
            "https": {"verify_incoming": True},
        },
    }
    return consul_factory(config=config), https_port


def test_tls_with_ca_and_client_certificate(
    tmp_path: Path,
    tls_consul: tuple[ConsulAgent, int],
    pki: Pki,
    containers: ContainerFactory,
) -> None:
    consul, https_port = tls_consul
    node = unique_node("tls")
    agent = RegistratorProcess.start(
        tmp_path,
        node=node,
        consul=f"consul-tls://127.0.0.1:{https_port}",
        env={
            "CONSUL_CACERT": str(pki.ca),
            "CONSUL_CLIENT_CERT": str(pki.client_cert),
            "CONSUL_CLIENT_KEY": str(pki.client_key),
        },
    )
    try:
        agent.wait_ready()
        container = containers.run(labels={"SERVICE_NAME": f"tls-{node}", "SERVICE_PORT": "80"})
        wait_until(
            lambda: services_of(consul, node, container.id), timeout=10, message="not registered"
        )
        assert not agent.lines_with("NOT verified")
    finally:
        agent.terminate()


def test_tls_without_the_ca_fails_verification(
    tmp_path: Path, tls_consul: tuple[ConsulAgent, int], pki: Pki
) -> None:
    _, https_port = tls_consul
    agent = RegistratorProcess.start(
        tmp_path,
        "-retry-attempts",
        "0",
        node=unique_node("tls"),
        consul=f"consul-tls://127.0.0.1:{https_port}",
        env={"CONSUL_CLIENT_CERT": str(pki.client_cert), "CONSUL_CLIENT_KEY": str(pki.client_key)},
    )
    assert agent.wait_exit(timeout=30) == 1
    assert agent.lines_with("giving up", "certificate verify failed"), agent.stderr()


def test_tls_verification_off_works_and_warns(
    tmp_path: Path, tls_consul: tuple[ConsulAgent, int], pki: Pki
) -> None:
    _, https_port = tls_consul
    agent = RegistratorProcess.start(
        tmp_path,
        node=unique_node("tls"),
        consul=f"consul-tls://127.0.0.1:{https_port}",
        env={
            "CONSUL_HTTP_SSL_VERIFY": "false",
            "CONSUL_CLIENT_CERT": str(pki.client_cert),
            "CONSUL_CLIENT_KEY": str(pki.client_key),
        },
    )
    try:
        agent.wait_ready()
        warnings = agent.lines_with(" WARNING ", "NOT verified")
        assert len(warnings) == 1, agent.stderr()
    finally:
        agent.terminate()


# --------------------------------------------------------------------------------------------
# The Docker socket

READS = {
    "GET /_ping",
    "GET /version",
    "GET /info",
    "GET /containers/json",
    "GET /containers/{id}/json",
    "GET /events",
    # Once at startup, when no Swarm or non-loopback Consul address is the node address (the
    # Consul agent here is on loopback): are we in the host's network namespace?
    "GET /networks",
}
EXEC = {"POST /containers/{id}/exec", "POST /exec/{id}/start", "GET /exec/{id}/json"}


@pytest.fixture
def docker_proxy() -> Iterator[ThreadedDockerProxy]:
    # Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="rt-", dir="/tmp") as directory:
        proxy = ThreadedDockerProxy(Path(directory) / "docker.sock", upstream=docker_socket())
        proxy.start()
        try:
            yield proxy
        finally:
            proxy.stop()


def _cycle_through_proxy(
    tmp_path: Path,
    proxy: ThreadedDockerProxy,
    consul: ConsulAgent,
    containers: ContainerFactory,
    labels: dict[str, str],
    wait_for_check: bool,
) -> tuple[set[str], list[str], str]:
    node = unique_node("sock")
    agent = RegistratorProcess.start(
        tmp_path,
        node=node,
        consul=f"consul://{consul.http_addr}",
        env={"DOCKER_HOST": proxy.docker_host},
    )
    try:
        agent.wait_ready()
        container = containers.run(
            labels={"SERVICE_NAME": f"sock-{node}", "SERVICE_PORT": "80", **labels}
        )
        registered = wait_until(
            lambda: services_of(consul, node, container.id), timeout=10, message="not registered"
        )
        if wait_for_check:
            wait_until(
                lambda: any(
                    check.get("Status") == "passing" and check.get("ServiceID") in registered
                    for check in consul.checks().values()
                ),
                timeout=15,
                message="the script check never passed",
            )
        container.stop(timeout=2)
        wait_until(
            lambda: not services_of(consul, node, container.id), timeout=10, message="not removed"
        )
    finally:
        agent.terminate()
    paths = [f"{r.method} {r.path}" for r in proxy.requests]
    endpoints = {r.endpoint for r in proxy.requests}
    if _swarm_manager():
        # Another run on this engine made it a Swarm manager: services are read, as documented.
        endpoints -= {"GET /services", "GET /services/{id}"}
    return endpoints, paths, container.id


def _swarm_manager() -> bool:
    done = subprocess.run(
        ["docker", "info", "--format", "{{.Swarm.ControlAvailable}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() == "true"


def test_docker_socket_is_only_read_without_script_checks(
    tmp_path: Path,
    docker_proxy: ThreadedDockerProxy,
    consul: ConsulAgent,
    containers: ContainerFactory,
) -> None:
    endpoints, paths, container_id = _cycle_through_proxy(
        tmp_path, docker_proxy, consul, containers, {}, wait_for_check=False
    )
    assert {"GET /version", "GET /info", "GET /containers/json", "GET /events"} <= endpoints
    # Exec can only come from script checks of other sessions' containers on this engine.
    assert endpoints - READS <= EXEC, sorted(endpoints - READS)
    assert not [p for p in paths if f"/containers/{container_id}/exec" in p]


def test_docker_socket_exec_only_for_script_checks(
    tmp_path: Path,
    docker_proxy: ThreadedDockerProxy,
    consul: ConsulAgent,
    containers: ContainerFactory,
) -> None:
    endpoints, paths, container_id = _cycle_through_proxy(
        tmp_path,
        docker_proxy,
        consul,
        containers,
        {"SERVICE_CHECK_SCRIPT": "true", "SERVICE_CHECK_INTERVAL": "1s"},
        wait_for_check=True,
    )
    assert endpoints <= READS | EXEC, sorted(endpoints - READS - EXEC)
    assert endpoints >= EXEC
    assert [p for p in paths if p.endswith(f"/containers/{container_id}/exec")]
