"""Helpers shared by the integration and e2e tests: polling, free ports, real Consul agents and
Docker resources.

Everything here drives real components (a real `consul` binary, the real Docker engine); there
are no mocks. The pytest fixtures built on top of these live in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import IPAMConfig, IPAMPool

T = TypeVar("T")

DEFAULT_TEST_IMAGE = "registrator-test/busybox:latest"
TEST_IMAGE_ENV = "REGISTRATOR_TEST_IMAGE"

# busybox as PID 1 has no default SIGTERM handling, so a bare `sleep`/`httpd` would make every
# `docker stop` wait its full timeout. The trap makes containers stop at once, which keeps tests
# that stop containers fast.
IDLE_COMMAND = ["sh", "-c", "trap 'exit 0' TERM INT; sleep 86400 & wait"]
HTTPD_COMMAND = ["sh", "-c", "trap 'exit 0' TERM INT; httpd -f -p 80 -h /www & wait"]
# What /www/index.html in the test image contains (see scripts/lib/build-test-images.sh).
HTTPD_INDEX_MARKER = "registrator-test ok"

CONSUL_STOP_TIMEOUT = 10.0
CONSUL_START_TIMEOUT = 30.0

# Requests to the agents on 127.0.0.1 must never go through an HTTP proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def dig(consul: ConsulAgent, *query: str) -> list[str]:
    """`dig +short` against the Consul agent's DNS port: the answer's fields, split on spaces."""
    command = shutil.which("dig")
    if command is None:
        raise AssertionError("dig is missing: scripts/test installs it (Debian package dnsutils)")
    result = subprocess.run(
        [
            command,
            "@127.0.0.1",
            "-p",
            str(consul.dns_port),
            "+short",
            "+time=2",
            "+tries=1",
            *query,
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.split()


def http_get_text(url: str, timeout: float = 5.0) -> str:
    """GET `url` bypassing any proxy settings; raises on connection errors and non-2xx."""
    with _opener.open(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# Polling


def _format_failure(message: str, timeout: float, last: object) -> str:
    return f"{message} (gave up after {timeout:.1f} s; last value: {last!r})"


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 15.0,
    interval: float = 0.1,
    message: str = "condition was not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Polls `predicate` until it returns something truthy, and returns that.

    Exceptions of the types in `ignore` count as a falsy result (handy for "until the server
    answers"); the last value or exception is put in the AssertionError raised on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: object
        try:
            value = predicate()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(_format_failure(message, timeout, last))
        time.sleep(interval)


# Same signature as wait_until on purpose, hence the `timeout` parameter (ASYNC109):
# asyncio.timeout could not report the last value seen.
@overload
async def async_wait_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...
@overload
async def async_wait_until(
    predicate: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...
async def async_wait_until(
    predicate: Callable[[], Any],
    timeout: float = 15.0,  # noqa: ASYNC109
    interval: float = 0.1,
    message: str = "condition was not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Like `wait_until`, without blocking the event loop; `predicate` may be a coroutine
    function, so it can await the code under test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last: object
        try:
            result = predicate()
            value = await result if inspect.isawaitable(result) else result
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if loop.time() >= deadline:
            raise AssertionError(_format_failure(message, timeout, last))
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------
# Ports


@contextlib.contextmanager
def _reserved_port() -> Iterator[int]:
    """Yields a 127.0.0.1 port that is free for both TCP and UDP, held until the block ends.

    Consul's DNS and Serf listeners bind UDP as well as TCP on the same number, so a port that is
    only free for TCP is not good enough.
    """
    while True:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        port: int = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        try:
            yield port
        finally:
            udp.close()
            tcp.close()
        return


def warnings_about(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    """The WARNING messages captured so far that contain every one of `words`."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and all(w in record.getMessage() for w in words)
    ]


def routed_source_address() -> str:
    """The host's primary address as the kernel picks it for the default route: connect() on
    a UDP socket chooses a route and a source address and sends no packet at all. Found this
    way, independently of the agent's reading of /proc; tests compare with it, never send to
    it (it is this machine's LAN address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))  # TEST-NET-2: only the default route leads there
        address: str = probe.getsockname()[0]
    return address


def free_ports(count: int) -> list[int]:
    """`count` distinct ports on 127.0.0.1, each free for TCP and UDP when returned.

    All are held open while the next is picked, so the kernel cannot hand out one twice.
    """
    with contextlib.ExitStack() as stack:
        return [stack.enter_context(_reserved_port()) for _ in range(count)]


def free_port() -> int:
    """One port on 127.0.0.1 that is free for TCP and UDP right now."""
    return free_ports(1)[0]


# --------------------------------------------------------------------------------------------
# Consul


class ConsulHTTPError(Exception):
    """A Consul HTTP API call answered with a non-2xx status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body.strip()}")
        self.status = status
        self.body = body


def find_consul_bin() -> str | None:
    """The consul binary the tests use: $CONSUL_BIN, else `consul` on PATH."""
    env = os.environ.get("CONSUL_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("consul")


@dataclasses.dataclass(frozen=True)
class ConsulAgent:
    """A running `consul agent -dev` and a small synchronous client for its HTTP API."""

    http_addr: str  # "127.0.0.1:PORT"
    http_port: int
    dns_port: int
    grpc_port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    node_name: str = "consul-test"
    # Sent as X-Consul-Token on every request when set (agents started with ACLs enabled).
    token: str | None = None

    # -- HTTP ---------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://{self.http_addr}/{path.lstrip('/')}"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """Calls the API; returns the decoded JSON answer, the raw text if it is not JSON, or
        None for an empty answer. Raises ConsulHTTPError on a non-2xx status."""
        url = self.url(path)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("X-Consul-Token", self.token)
        try:
            with _opener.open(req, timeout=timeout) as response:
                raw: bytes = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise ConsulHTTPError(method, url, exc.code, detail) from None
        if not raw.strip():
            return None
        text = raw.decode("utf-8", errors="replace")
        try:
            return json.loads(text)
        except ValueError:
            return text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def services(self) -> dict[str, Any]:
        """The agent's local services, by service ID."""
        result: dict[str, Any] = self.get("/v1/agent/services")
        return result

    def checks(self) -> dict[str, Any]:
        """The agent's local checks, by check ID."""
        result: dict[str, Any] = self.get("/v1/agent/checks")
        return result

    def catalog_service(self, name: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(f"/v1/catalog/service/{_quote(name)}")
        return result

    def leader(self) -> str:
        """The current Raft leader's address, "" while there is none."""
        try:
            return str(self.get("/v1/status/leader") or "")
        except (OSError, ConsulHTTPError):
            return ""

    def token_resolves(self) -> bool:
        """True once the client's token is known to the ACL system (or no token is sent).

        A leader is not enough with ACLs: Consul inserts `initial_management` a moment after the
        election, and requests in that window fail with "ACL not found".
        """
        if not self.token:
            return True
        try:
            self.get("/v1/acl/token/self")
        except (OSError, ConsulHTTPError):
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------------------

    def with_token(self, token: str | None) -> ConsulAgent:
        """The same agent, with requests made under another ACL token."""
        return dataclasses.replace(self, token=token)

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"

    def reset(self, timeout: float = 10.0) -> None:
        """Removes everything a test may have put into the agent: local services and checks,
        catalog entries of other nodes, and the KV store; then waits until the catalog shows it.
        """
        for service_id in self.services():
            self._put_unless_gone(f"/v1/agent/service/deregister/{_quote(service_id)}")
        for check_id in self.checks():
            self._put_unless_gone(f"/v1/agent/check/deregister/{_quote(check_id)}")
        for node in self.get("/v1/catalog/nodes") or []:
            if node["Node"] != self.node_name:
                self.put("/v1/catalog/deregister", {"Node": node["Node"]})
        self.delete("/v1/kv/?recurse=true")

        def catalog_clean() -> bool:
            # The dev server always lists its own "consul" service.
            services = set(self.get("/v1/catalog/services") or {})
            nodes = {n["Node"] for n in self.get("/v1/catalog/nodes") or []}
            return services <= {"consul"} and nodes <= {self.node_name}

        wait_until(catalog_clean, timeout=timeout, message="consul catalog did not empty")

    def _put_unless_gone(self, path: str) -> None:
        """PUT, where 404 is fine: a Connect sidecar, for one, goes with its parent service."""
        try:
            self.put(path)
        except ConsulHTTPError as exc:
            if exc.status != 404:
                raise

    def stop(self, timeout: float = CONSUL_STOP_TIMEOUT) -> None:
        """Terminates the agent, killing it if it has not exited after `timeout` seconds."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _consul_command(
    consul_bin: str,
    ports: Mapping[str, int],
    data_dir: Path,
    node_name: str,
    config_path: Path | None,
    extra_args: Sequence[str],
) -> list[str]:
    command = [
        consul_bin, "agent", "-dev",
        "-bind", "127.0.0.1",
        "-client", "127.0.0.1",
        "-node", node_name,
        "-data-dir", str(data_dir),
        "-http-port", str(ports["http"]),
        "-dns-port", str(ports["dns"]),
        "-grpc-port", str(ports["grpc"]),
        "-serf-lan-port", str(ports["serf_lan"]),
        "-server-port", str(ports["server"]),
        # Servers (and -dev is one) default to gRPC-TLS on 8503 and Serf WAN on 8302: fixed ports
        # would clash between agents, and no test needs either.
        "-grpc-tls-port", "-1",
        "-serf-wan-port", "-1",
    ]  # fmt: skip
    if config_path is not None:
        command += ["-config-file", str(config_path)]
    command += list(extra_args)
    # The agent should not outlive a test run that is killed before its teardown runs (a
    # leftover agent only wastes memory, but a developer's machine would pile them up).
    setpriv = shutil.which("setpriv")
    if setpriv:
        command = [setpriv, "--pdeathsig", "KILL", "--", *command]
    return command


def make_consul_agent(
    tmp_path: Path,
    extra_args: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    *,
    consul_bin: str | None = None,
    node_name: str = "consul-test",
    token: str | None = None,
    start_timeout: float = CONSUL_START_TIMEOUT,
    attempts: int = 3,
) -> ConsulAgent:
    """Starts a `consul agent -dev` on 127.0.0.1 with free ports and waits until it has a leader
    (and, with `token`, until that token resolves).

    `config` (e.g. ACL or TLS settings) is written to a JSON file passed with -config-file;
    `extra_args` go last on the command line. `token` is the token the returned client sends
    (the agent's own ACL tokens are set through `config`). `tmp_path` must be a directory of
    this agent's own. The caller must call `.stop()`; the `consul_factory` fixture does that.

    Call it from the main thread (fixtures and test bodies run there): the agent is started with
    a parent-death signal, which Linux sends when the *thread* that started it exits.
    """
    consul_bin = consul_bin or find_consul_bin()
    if not consul_bin:
        raise RuntimeError("no consul binary: set CONSUL_BIN or put consul on PATH")
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path: Path | None = None
    if config is not None:
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(config, indent=2))

    failures: list[str] = []
    for attempt in range(1, attempts + 1):
        port_list = free_ports(5)
        ports = dict(zip(("http", "dns", "grpc", "serf_lan", "server"), port_list, strict=True))
        data_dir = tmp_path / f"data-{attempt}"
        data_dir.mkdir()
        log_path = tmp_path / f"consul-{attempt}.log"
        command = _consul_command(consul_bin, ports, data_dir, node_name, config_path, extra_args)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Ctrl-C on a terminal must reach pytest only; the fixture stops the agent.
                start_new_session=True,
            )  # fmt: skip
        agent = ConsulAgent(
            http_addr=f"127.0.0.1:{ports['http']}",
            http_port=ports["http"],
            dns_port=ports["dns"],
            grpc_port=ports["grpc"],
            log_path=log_path,
            process=process,
            node_name=node_name,
            token=token,
        )
        deadline = time.monotonic() + start_timeout
        while agent.is_running() and time.monotonic() < deadline:
            if agent.leader() and agent.token_resolves():
                return agent
            time.sleep(0.1)
        agent.stop()
        log_tail = agent.log_tail()
        failures.append(f"attempt {attempt} ({' '.join(command)}):\n{log_tail}")
        # Another process may have taken one of the ports between picking and binding it; only
        # that is worth another try.
        if "address already in use" not in log_tail.lower():
            break
    raise RuntimeError(
        f"consul agent not ready (a leader, and its token resolving) within {start_timeout:.0f} s\n"
        + "\n".join(failures)
    )


# --------------------------------------------------------------------------------------------
# Docker

# Anything a test creates in Docker carries LABEL, OWNER_LABEL naming the pytest process and
# TEST_LABEL naming the test, so leftovers of a killed run can be found and removed without
# touching resources of another test run that is still going on against the same daemon.
LABEL = "registrator-test"
OWNER_LABEL = "registrator-test.owner"
TEST_LABEL = "registrator-test.test"
# Test networks take /24s from here: inside 198.18.0.0/15 (the only range the tests may use)
# and clear of dockerd's own bridge (198.18.0.0/24) and default pool (198.19.0.0/16). Each
# engine lane of scripts/test sets its own, disjoint pool: two engines on one machine share the
# host's routes, and neither knows the other's subnets.
NETWORK_POOL = ipaddress.ip_network(
    os.environ.get("REGISTRATOR_TEST_NETWORK_POOL") or "198.18.64.0/18"
)


def docker_host() -> str:
    """The engine the tests (and the agents they start) talk to: DOCKER_HOST of the lane."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def docker_socket() -> Path:
    """The lane engine's socket, for proxies put in front of it."""
    host = docker_host()
    if not host.startswith("unix://"):
        raise AssertionError(f"DOCKER_HOST={host!r}: these tests need a local unix socket")
    return Path(host[len("unix://") :])


# The network a container joins when a test names none. Unset for Docker (its default bridge);
# the podman lane names a network on a 198.18.0.0/15 subnet (Podman's default is 10.88.0.0/16).
DEFAULT_NETWORK = os.environ.get("REGISTRATOR_TEST_NETWORK") or None


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_stale(labels: Mapping[str, str]) -> bool:
    """Whether a labelled resource was left behind by a pytest process that no longer runs."""
    host, _, pid = labels.get(OWNER_LABEL, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_resources(client: docker.DockerClient) -> None:
    for container in client.containers.list(
        all=True, filters={"label": LABEL}, ignore_removed=True
    ):
        if _is_stale(container.labels):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
    # After the containers: Docker refuses to remove a network that still has endpoints.
    for network in client.networks.list(filters={"label": LABEL}):
        if _is_stale(network.attrs.get("Labels") or {}):
            # APIError: still in use (e.g. by another session's swarm service); not ours to force.
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.remove()


def _slug(text: str, limit: int) -> str:
    # Container and network names allow [a-zA-Z0-9][a-zA-Z0-9_.-]*.
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-._")[:limit].rstrip("-._")


def _resource_name(test_name: str, suffix: str | None) -> str:
    """rt-<test>-<suffix>-<random>: readable in `docker ps`, unique across runs and calls."""
    parts = ("rt", _slug(test_name, 30), _slug(suffix or "", 20), secrets.token_hex(3))
    return "-".join(part for part in parts if part)


def _resource_labels(test_id: str, labels: Mapping[str, str] | None) -> dict[str, str]:
    return {**(labels or {}), LABEL: "1", OWNER_LABEL: _owner(), TEST_LABEL: test_id}


class NetworkFactory:
    """Creates labelled bridge networks, each on its own /24 from NETWORK_POOL."""

    def __init__(self, client: docker.DockerClient, test_id: str, test_name: str) -> None:
        self._client = client
        self._test_id = test_id
        self._test_name = test_name
        self.created: list[Network] = []

    def _used_subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        used = []
        for network in self._client.networks.list():
            for pool in (network.attrs.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(KeyError, ValueError):
                    used.append(ipaddress.ip_network(pool["Subnet"], strict=False))
        return used

    def create(
        self,
        name_suffix: str | None = None,
        labels: Mapping[str, str] | None = None,
        ipv6_subnet: str | None = None,
        **kwargs: Any,
    ) -> Network:
        """Creates a bridge network; extra keyword arguments go to `networks.create`.

        `ipv6_subnet` (a ULA prefix such as fd00:5e:1::/64) makes it dual stack.
        """
        name = _resource_name(self._test_name, name_suffix)
        all_labels = _resource_labels(self._test_id, labels)
        used = self._used_subnets()
        last_error: Exception | None = None
        for subnet in NETWORK_POOL.subnets(new_prefix=24):
            if any(subnet.overlaps(other) for other in used):
                continue
            gateway = str(next(subnet.hosts()))
            pools = [IPAMPool(subnet=str(subnet), gateway=gateway)]
            if ipv6_subnet:
                pools.append(IPAMPool(subnet=ipv6_subnet))
                kwargs["enable_ipv6"] = True
            ipam = IPAMConfig(pool_configs=pools)
            try:
                network = self._create(name, ipam, all_labels, **kwargs)
            except docker.errors.APIError as exc:
                # Another test run on the same daemon took this subnet after we listed them.
                if "overlap" not in str(exc).lower():
                    raise
                last_error = exc
                continue
            self.created.append(network)
            network.reload()
            return network
        raise RuntimeError(f"no free /24 left in {NETWORK_POOL}: {last_error}")

    def _create(
        self, name: str, ipam: IPAMConfig, labels: Mapping[str, str], **kwargs: Any
    ) -> Network:
        for attempt in range(5):
            try:
                return self._client.networks.create(
                    name, driver="bridge", ipam=ipam, labels=labels, **kwargs
                )
            except docker.errors.APIError as exc:
                # Podman (CNI) lists the host's routes to check the subnet; an interface that
                # another engine removes meanwhile fails that listing. Asking again works.
                if "no such network interface" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def remove_all(self) -> None:
        for network in reversed(self.created):
            with contextlib.suppress(docker.errors.NotFound):
                network.reload()
                # Containers a test attached by hand would block the removal.
                for container in network.containers:
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        network.disconnect(container, force=True)
                network.remove()
        self.created.clear()


class ContainerFactory:
    """Runs detached, labelled containers from the test image and removes them at teardown."""

    def __init__(
        self, client: docker.DockerClient, image: str, test_id: str, test_name: str
    ) -> None:
        self.client = client
        self.image = image
        self._test_id = test_id
        self._test_name = test_name
        self.created: list[Container] = []

    def run(
        self,
        name_suffix: str | None = None,
        command: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | Sequence[str] | None = None,
        ports: Mapping[str, Any] | None = None,
        network: str | Network | None = None,
        expose: Sequence[str] = (),
        **kwargs: Any,
    ) -> Container:
        """Starts a container and returns it, reloaded so `attrs` shows its ports and addresses.

        `command` defaults to an idle shell that exits promptly on SIGTERM. `ports` publishes
        (docker-py's form); `expose` ("8080/tcp", ...) only exposes: no host binding at all, since
        an empty binding list publishes on a random port from Engine 29 on. Other keyword
        arguments go to `containers.run` (e.g. image=..., hostname=..., init=True).
        """
        name = _resource_name(self._test_name, name_suffix)
        all_labels = _resource_labels(self._test_id, labels)
        if isinstance(network, Network):
            network = network.name
        network = network or (None if kwargs.get("network_mode") else DEFAULT_NETWORK)
        command = list(IDLE_COMMAND) if command is None else command
        image = kwargs.pop("image", self.image)
        common: dict[str, Any] = {
            "command": command, "name": name, "labels": all_labels, "environment": environment
        }  # fmt: skip
        container: Container
        if expose:
            if kwargs:
                raise TypeError(f"expose= takes no other options: {sorted(kwargs)}")
            # docker-py's high-level run publishes every port it is given; the low-level create
            # can expose without binding.
            host_config = self.client.api.create_host_config(
                port_bindings=dict(ports or {}), network_mode=network
            )
            created = self.client.api.create_container(
                image,
                ports=[tuple(p.split("/", 1)) for p in [*(ports or {}), *expose]],
                host_config=host_config,
                **common,
            )
            container = self.client.containers.get(created["Id"])
            self.created.append(container)
            container.start()
        else:
            container = self.client.containers.run(
                image, ports=ports, network=network, detach=True, **common, **kwargs
            )
            self.created.append(container)
        container.reload()
        return container

    __call__ = run

    def remove_all(self) -> list[str]:
        """Force-removes every container this factory started; returns removal errors."""
        errors = []
        for container in reversed(self.created):
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                errors.append(f"{container.name}: {exc}")
        self.created.clear()
        return errors


@contextlib.contextmanager
def health_probes(container: Container, interval: float = 0.5) -> Iterator[None]:
    """Makes the engine run `container`'s HEALTHCHECK for the block.

    Docker runs it by itself. Podman hands the schedule to a systemd timer, and this sandbox has
    no systemd: its health stays "starting" unless something runs the probe, which is what
    this does through Podman's own API (the same as `podman healthcheck run`), standing in
    for that timer. Podman 4.3 then sends one `health_status` event per probe.
    """
    if os.environ.get("REGISTRATOR_TEST_ENGINE") != "podman":
        yield
        return
    stop = threading.Event()
    api = container.client.api
    url = api.base_url + f"/v4.0.0/libpod/containers/{container.id}/healthcheck"

    def probe() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # the container may be going away
                api.get(url, timeout=10)

    thread = threading.Thread(target=probe, name=f"health {container.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)


def container_ip(container: Container, network: str | None = None) -> str:
    """The container's address on `network`, or on its only network.

    Per-network addresses only: the top-level NetworkSettings.IPAddress is gone from API 1.44
    (Docker Engine 29 answers without it).
    """
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"] or {}
    if network is None:
        if len(networks) != 1:
            raise AssertionError(f"{container.name}: on {sorted(networks)}, name one")
        network = next(iter(networks))
    address = str((networks.get(network) or {}).get("IPAddress") or "")
    if not address:
        raise AssertionError(f"{container.name}: no address on {network!r}: {sorted(networks)}")
    return address


def host_port(container: Container, container_port: str) -> int:
    """The host port Docker published `container_port` (e.g. "80/tcp") on."""
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"].get(container_port) or []
    if not bindings:
        raise AssertionError(f"{container.name}: {container_port} is not published")
    return int(bindings[0]["HostPort"])
