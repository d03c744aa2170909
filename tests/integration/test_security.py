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


@dataclass
class AclToken:
    secret: str
    accessor: str
    policy_id: str
    policy_name: str


def acl_token(acl: AclConsul, rules: str) -> AclToken:
    """A token whose policy the test can change (or whose token it can delete) later."""
    name = f"registrator-{uuid.uuid4().hex[:8]}"
    policy = acl.consul.put("/v1/acl/policy", {"Name": name, "Rules": rules})
    token = acl.consul.put("/v1/acl/token", {"Policies": [{"ID": policy["ID"]}]})
    return AclToken(str(token["SecretID"]), str(token["AccessorID"]), policy["ID"], name)


def set_rules(acl: AclConsul, token: AclToken, rules: str) -> None:
    acl.consul.put(f"/v1/acl/policy/{token.policy_id}", {"Name": token.policy_name, "Rules": rules})


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
            lambda: no_service.lines_with(
                "Consul refused the registration", container.name, "HTTP 403"
            ),
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
                # The script's own check: the node alias check passes before any exec ran.
                lambda: any(
                    check.get("Status") == "passing"
                    and check.get("ServiceID") in registered
                    and str(check.get("CheckID", "")).endswith(":script")
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
        # Another run on this engine made it a Swarm manager: services and nodes are read (the
        # leader reaps lost nodes), as documented.
        endpoints -= {"GET /services", "GET /services/{id}", "GET /nodes", "GET /nodes/{id}"}
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


# --------------------------------------------------------------------------------------------
# ACL policies and tokens that change while the agent runs (issue 13, item 8)

LOCKED = 'service_prefix "locked-" {\n  policy = "read"\n}\n'


def test_refused_registration_lands_once_the_policy_widens_and_a_refused_deregistration_waits(
    tmp_path: Path, acl_consul: AclConsul, containers: ContainerFactory
) -> None:
    policy = documented_policy()
    token = acl_token(acl_consul, policy + LOCKED)
    node = unique_node("acl")
    agent = RegistratorProcess.start(
        tmp_path,
        "-resync",
        "0",
        node=node,
        consul=f"consul://{acl_consul.consul.http_addr}",
        env={"CONSUL_HTTP_TOKEN": token.secret},
    )
    try:
        agent.wait_ready()
        locked = containers.run(labels={"SERVICE_NAME": f"locked-{node}", "SERVICE_PORT": "80"})
        opened = containers.run(labels={"SERVICE_NAME": f"open-{node}", "SERVICE_PORT": "80"})
        wait_until(
            lambda: services_of(acl_consul.consul, node, opened.id), timeout=10, message="open"
        )
        wait_until(
            lambda: agent.lines_with("Consul refused the registration", locked.name, "HTTP 403"),
            timeout=10,
            message=f"no refusal logged:\n{agent.stderr()[-2000:]}",
        )
        time.sleep(3)  # a few retries: still one line
        assert not services_of(acl_consul.consul, node, locked.id)

        set_rules(acl_consul, token, policy)  # the operator widens the policy
        wait_until(
            lambda: services_of(acl_consul.consul, node, locked.id),
            timeout=40,  # the retry backoff: 1, 2, 4, 8, 16 s
            message=f"not registered after the policy widened:\n{agent.stderr()[-2000:]}",
        )
        wait_until(lambda: agent.lines_with("registered", locked.name), timeout=5, message="logged")
        assert len(agent.lines_with("Consul refused the registration")) == 1, agent.stderr()
        assert agent.lines_with("Consul accepts service")

        set_rules(acl_consul, token, policy + LOCKED)  # narrowed again, then the app stops
        locked.stop(timeout=1)
        wait_until(
            lambda: agent.lines_with("Consul refused the deregistration", "HTTP 403"),
            timeout=10,
            message=f"no refused deregistration:\n{agent.stderr()[-2000:]}",
        )
        time.sleep(8)
        errors = agent.lines_with(" ERROR ")
        assert len(errors) == 2, "one line per refusal, not one per retry:\n" + "\n".join(errors)
        assert not agent.lines_with("unreachable")
        # Retried by the container's own backoff: the startup's is the only full reconcile.
        assert agent.metrics()['registrator_reconciles_total{scope="full"}'] == 1
        set_rules(acl_consul, token, policy)
        wait_until(
            lambda: not services_of(acl_consul.consul, node, locked.id),
            timeout=40,
            message="not deregistered once allowed",
        )
    finally:
        agent.terminate()


def test_token_deleted_is_forbidden_not_unreachable_and_a_rotated_token_file_is_used(
    tmp_path: Path, acl_consul: AclConsul, containers: ContainerFactory
) -> None:
    first = acl_token(acl_consul, documented_policy())
    token_file = tmp_path / "token"
    token_file.write_text(first.secret + "\n")
    node = unique_node("acl")
    agent = RegistratorProcess.start(
        tmp_path,
        "-resync",
        "1",
        node=node,
        consul=f"consul://{acl_consul.consul.http_addr}",
        env={"CONSUL_HTTP_TOKEN_FILE": str(token_file)},
    )
    try:
        agent.wait_ready()
        acl_consul.consul.delete(f"/v1/acl/token/{first.accessor}")

        def forbidden() -> dict[str, object] | None:
            answer = agent.health()
            if answer and answer[0] == 503 and answer[1].get("consul_state") == "forbidden":
                return answer[1]
            return None

        body = wait_until(forbidden, timeout=10, message=f"/health:\n{agent.stderr()[-2000:]}")
        assert "403" in str(body["consul_reason"]), body
        assert not agent.lines_with("unreachable"), agent.stderr()

        second = acl_token(acl_consul, documented_policy())
        rotated = tmp_path / "token.new"
        rotated.write_text(second.secret + "\n")
        rotated.replace(token_file)
        box = containers.run(labels={"SERVICE_NAME": f"acl-{node}", "SERVICE_PORT": "80"})
        wait_until(
            lambda: services_of(acl_consul.consul, node, box.id),
            timeout=15,
            message=f"not registered with the rotated token:\n{agent.stderr()[-2000:]}",
        )
        wait_until(agent.is_ready, timeout=10, message="/health did not return to 200")
        assert len(agent.lines_with("refuses the ACL token")) == 1, agent.stderr()
        assert agent.lines_with("Consul accepts the ACL token again")
        _assert_secret_absent(agent, second.secret)
    finally:
        agent.terminate()
