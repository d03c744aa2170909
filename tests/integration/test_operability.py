"""Operability: /health, /metrics, JSON logs, `explain`, shutdown, and backends that answer
garbage or nothing at all.

Mostly the real command (`python -m registrator`) in a subprocess against a real Consul and the
real Docker engine; the two "hanging backend" tests run the agent in-process, because the only
way to shorten its request timeouts (10 s for Consul, 30 s for Docker) is the client's
constructor. Every agent runs under a `-node` of its own and assertions only look at this
test's containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import select
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import registrator.http
from registrator.agent import Agent
from registrator.arguments import parse_args
from registrator.consul import ConsulClient
from registrator.docker import DockerClient
from registrator.http import serve
from tests.conftest import StartProcess
from tests.helpers import ConsulAgent, ContainerFactory, free_port, wait_until
from tests.helpers import docker_host as lane_docker_host
from tests.helpers_cli import (
    owned_services,
    run_cli,
    services_of,
    start_consul_at,
    unique_node,
)

SERVICE_LABELS = {"SERVICE_PORT": "80"}


def metric_names_in_source() -> set[str]:
    """Every metric family registrator/http.py defines, read from the source itself."""
    source = Path(registrator.http.__file__).read_text(encoding="utf-8")
    return set(re.findall(r'"(registrator_[a-z_]+)"', source))


# --------------------------------------------------------------------------------------------
# /health and /metrics


def test_health_is_503_until_the_first_full_reconcile_then_200(
    tmp_path: Path, start_process: StartProcess
) -> None:
    port = free_port()  # nothing listens here yet
    agent = start_process(
        "-retry-interval",
        "200",
        node=unique_node("ops"),
        consul=f"consul://127.0.0.1:{port}",
        wait=False,
    )
    answer = wait_until(agent.health, timeout=15, message="/health never answered")
    assert answer is not None and answer[0] == 503
    assert answer[1]["ready"] is False and answer[1]["consul"] is False, answer
    wait_until(lambda: agent.lines_with("waiting for Consul"), timeout=10)
    time.sleep(1.0)  # several more startup attempts
    assert (agent.health() or (0, {}))[0] == 503
    waiting = agent.lines_with("waiting for Consul")
    assert len(waiting) == 1, agent.stderr()

    consul = start_consul_at(tmp_path / "consul", port)
    try:
        started = time.monotonic()
        wait_until(agent.is_ready, timeout=10, message="/health did not turn 200")
        assert time.monotonic() - started < 5
        status, body = agent.health() or (0, {})
        assert status == 200
        assert body["synced"] and body["docker"] and body["consul"], body
        code, _ = agent.terminate()
        assert code == 0
    finally:
        consul.stop()


def test_metrics_are_prometheus_text_with_every_documented_family(
    consul_factory: Callable[..., ConsulAgent],
    containers: ContainerFactory,
    start_process: StartProcess,
) -> None:
    consul = consul_factory()
    node = unique_node("ops")
    agent = start_process(node=node, consul=f"consul://{consul.http_addr}")
    container = containers.run(labels={"SERVICE_NAME": f"m-{node}", **SERVICE_LABELS})
    wait_until(lambda: services_of(consul, node, container.id), timeout=10)

    with urllib_response(agent.url("/metrics")) as (content_type, text):
        assert content_type.startswith("text/plain; version=0.0.4"), content_type
    families = {family.name: family for family in text_string_to_metric_families(text)}
    expected = metric_names_in_source()
    assert len(expected) >= 10, expected
    assert expected <= set(families), sorted(expected - set(families))
    samples = agent.metrics()
    assert samples["registrator_ready"] == 1
    assert samples['registrator_backend_up{backend="consul"}'] == 1
    assert samples['registrator_backend_up{backend="docker"}'] == 1
    assert samples["registrator_registrations_total"] >= 1
    assert samples["registrator_consul_writes_total"] >= 1
    assert samples["registrator_owned_services"] >= 1
    assert samples['registrator_reconciles_total{scope="full"}'] >= 1


def test_health_server_answers_only_reads_of_its_two_paths(
    consul_factory: Callable[..., ConsulAgent], start_process: StartProcess
) -> None:
    """aiohttp's low-level server has no router: the handler itself refuses the rest."""
    consul = consul_factory()
    agent = start_process(node=unique_node("ops"), consul=f"consul://{consul.http_addr}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for method, path, status in [
        ("GET", "/health", 200),
        ("HEAD", "/metrics", 200),
        ("GET", "/", 404),
        ("GET", "/health/extra", 404),
        ("POST", "/health", 405),
        ("DELETE", "/metrics", 405),
    ]:
        request = urllib.request.Request(agent.url(path), method=method)
        try:
            with opener.open(request, timeout=5) as response:
                answered = response.status
        except urllib.error.HTTPError as err:
            answered = err.code
        assert answered == status, (method, path, answered)


@contextlib.contextmanager
def urllib_response(url: str) -> Iterator[tuple[str, str]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        yield response.headers.get("Content-Type", ""), response.read().decode()


# --------------------------------------------------------------------------------------------
# Logs


def test_json_logs_one_object_per_line_and_one_line_per_registration_change(
    consul_factory: Callable[..., ConsulAgent],
    containers: ContainerFactory,
    start_process: StartProcess,
) -> None:
    consul = consul_factory()
    node = unique_node("ops")
    agent = start_process(
        "-log-format", "json", "-resync", "1", node=node, consul=f"consul://{consul.http_addr}"
    )
    container = containers.run(labels={"SERVICE_NAME": f"j-{node}", **SERVICE_LABELS})
    (service_id,) = wait_until(lambda: services_of(consul, node, container.id), timeout=10)
    time.sleep(2.5)  # two resyncs: they must not log the unchanged registration again
    container.stop(timeout=2)
    wait_until(lambda: not services_of(consul, node, container.id), timeout=10)
    code, _ = agent.terminate()
    assert code == 0

    entries = []
    for line in agent.lines():
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        entries.append(entry)
    mine = [e for e in entries if e.get("container") == container.name]
    assert [(e["service_id"], e["reason"]) for e in mine] == [
        (service_id, "new"),
        (service_id, "exited (0)"),
    ], mine
    assert "registered" in mine[0]["message"] and "deregistered" in mine[1]["message"]


# --------------------------------------------------------------------------------------------
# explain


def test_explain_prints_registrations_and_warnings_and_writes_nothing(
    consul_factory: Callable[..., ConsulAgent], containers: ContainerFactory
) -> None:
    consul = consul_factory()
    container = containers.run(
        labels={
            "SERVICE_NAME": "explained",
            "SERVICE_CHECK_TTL": "soon",  # not a duration: a warning, the service still registers
            "SERVICE_VERSION": "1.2",
            **SERVICE_LABELS,
        }
    )
    before = consul.services()
    result = run_cli(
        "explain", container.name, "-node", "explainer", f"consul://{consul.http_addr}"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["container"] == container.name and report["id"] == container.id
    (body,) = report["registrations"]
    assert body["Name"] == "explained" and body["Port"] == 80
    assert body["Meta"]["version"] == "1.2" and body["Meta"]["registrator-node"] == "explainer"
    assert [w for w in report["warnings"] if "SERVICE_CHECK_TTL" in w and "soon" in w]
    assert consul.services() == before

    missing = run_cli("explain", "no-such-container-xyz", f"consul://{consul.http_addr}")
    assert missing.returncode == 1 and "no-such-container-xyz" in missing.stderr


def test_explain_names_who_holds_an_id_the_agent_would_not_take_over(
    consul_factory: Callable[..., ConsulAgent], containers: ContainerFactory
) -> None:
    consul = consul_factory()
    by_hand = {"ID": "db-fixed", "Name": "db", "Port": 4711, "Meta": {"owner": "ops"}}
    consul.put("/v1/agent/service/register", by_hand)
    container = containers.run(labels={"SERVICE_ID": "db-fixed", **SERVICE_LABELS})
    before = consul.services()
    result = run_cli(
        "explain", container.name, "-node", "explainer", f"consul://{consul.http_addr}"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    holder = "a registration not made by registrator (Meta owner=ops)"
    assert report["registrations"] == []
    (foreign,) = report["foreign_holders"]
    assert (foreign["id"], foreign["holder"]) == ("db-fixed", holder)
    assert foreign["registration"]["ID"] == "db-fixed"
    assert report["warnings"] == [
        f"container {container.name}: service id 'db-fixed': Consul already holds it for "
        f"{holder}, not for registrator on node 'explainer'; not taken over, registered once "
        "that entry is gone"
    ]
    assert consul.services() == before


# --------------------------------------------------------------------------------------------
# Shutdown


def test_sigterm_exits_0_promptly_and_keeps_services(
    consul_factory: Callable[..., ConsulAgent],
    containers: ContainerFactory,
    start_process: StartProcess,
) -> None:
    consul = consul_factory()
    node = unique_node("ops")
    agent = start_process(node=node, consul=f"consul://{consul.http_addr}")
    container = containers.run(labels={"SERVICE_NAME": f"t-{node}", **SERVICE_LABELS})
    wait_until(lambda: services_of(consul, node, container.id), timeout=10)
    code, seconds = agent.terminate(timeout=10)
    assert code == 0 and seconds < 5, (code, seconds)
    assert services_of(consul, node, container.id), "services must survive a plain restart"


def test_deregister_on_exit_removes_every_owned_service_on_sigterm(
    consul_factory: Callable[..., ConsulAgent],
    containers: ContainerFactory,
    start_process: StartProcess,
) -> None:
    consul = consul_factory()
    node = unique_node("ops")
    agent = start_process("-deregister-on-exit", node=node, consul=f"consul://{consul.http_addr}")
    kept = [
        containers.run(labels={"SERVICE_NAME": f"d-{node}", **SERVICE_LABELS}) for _ in range(2)
    ]
    for container in kept:
        wait_until(functools.partial(services_of, consul, node, container.id), timeout=10)
    code, seconds = agent.terminate(timeout=10)
    assert code == 0 and seconds < 5, (code, seconds)
    assert owned_services(consul, node) == {}


# --------------------------------------------------------------------------------------------
# Backends answering garbage, or nothing


class FakeBackend:
    """A TCP or unix-socket server that reads a request and then answers garbage (valid HTTP,
    a body that is not JSON) or hangs without ever answering."""

    def __init__(self, mode: str, unix_path: Path | None = None) -> None:
        assert mode in {"garbage", "hang"}
        self.mode = mode
        if unix_path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(unix_path))
            self.address = f"unix://{unix_path}"
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.listen(64)
        self.requests = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            conn, _ = self.sock.accept()
            conn.settimeout(2)
            with contextlib.suppress(OSError):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests += 1
                if self.mode == "hang":
                    self._held.append(conn)  # never answered, closed at stop()
                    continue
                body = b"<html>this is not the API you are looking for"
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self.sock.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="rt-", dir="/tmp") as path:
        yield Path(path)


@pytest.mark.parametrize("backend", ["consul", "docker"])
@pytest.mark.parametrize("mode", ["garbage", "hang"])
def test_backend_answering_garbage_or_hanging_keeps_health_serving_503(
    backend: str,
    mode: str,
    short_tmp: Path,
    consul_factory: Callable[..., ConsulAgent],
    start_process: StartProcess,
) -> None:
    fake = FakeBackend(mode, short_tmp / "docker.sock" if backend == "docker" else None)
    try:
        if backend == "consul":
            consul_uri, env = f"consul://{fake.address}", {}
        else:
            consul_uri, env = (
                f"consul://{consul_factory().http_addr}",
                {"DOCKER_HOST": fake.address},
            )
        agent = start_process(
            "-retry-interval",
            "200",
            node=unique_node("ops"),
            consul=consul_uri,
            env=env,
            wait=False,
        )
        wait_until(lambda: fake.requests >= 1, timeout=15, message="the backend was never asked")
        for _ in range(3):  # /health answers at once, whatever the backend does
            started = time.monotonic()
            assert (agent.health() or (0, {}))[0] == 503
            assert time.monotonic() - started < 1.0
            time.sleep(0.3)
        if mode == "garbage":
            name = "Consul" if backend == "consul" else "Docker"
            wait_until(lambda: fake.requests >= 4, timeout=15)
            waiting = agent.lines_with(f"waiting for {name}", "not JSON")
            assert len(waiting) == 1, agent.stderr()  # once, however many attempts
        code, seconds = agent.terminate(timeout=10)
        assert code == 0 and seconds < 5, (code, seconds)
        assert agent.lines_with("stopped before startup completed")
    finally:
        fake.stop()


@pytest.mark.parametrize("backend", ["consul", "docker"])
async def test_hanging_backend_calls_time_out_and_are_logged_once(
    backend: str, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The request timeouts are what bounds a hang; shortened here through the clients."""
    fake = FakeBackend("hang", short_tmp / "docker.sock" if backend == "docker" else None)
    port = free_port()
    docker_host = fake.address if backend == "docker" else lane_docker_host()
    consul_uri = f"consul://{fake.address}" if backend == "consul" else "consul://127.0.0.1:1"
    settings = parse_args(
        ["-retry-interval", "100", "-node", "hang", "-docker-host", docker_host, consul_uri], {}
    ).settings
    docker = DockerClient(settings.docker_host, timeout=0.5)
    consul = ConsulClient(settings.consul, timeout=0.5, attempts=1)
    agent = Agent(settings, docker, consul)
    runner = await serve(agent, f"127.0.0.1:{port}")
    caplog.set_level(logging.INFO, logger="registrator")
    starting = asyncio.create_task(agent.start())
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(8):
                started = time.monotonic()
                async with session.get(f"http://127.0.0.1:{port}/health") as response:
                    assert response.status == 503
                assert time.monotonic() - started < 0.5
                await asyncio.sleep(0.25)
        assert not starting.done()
        name = "Consul" if backend == "consul" else "Docker"
        waiting = [
            r.getMessage() for r in caplog.records if f"waiting for {name}" in r.getMessage()
        ]
        assert len(waiting) == 1, waiting
        assert "no answer within 0.5 s" in waiting[0], waiting[0]
        assert fake.requests >= 2  # retried, not stuck on the first call
    finally:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await runner.cleanup()
        await docker.close()
        await consul.close()
        await asyncio.to_thread(fake.stop)
