"""Issue 4 acceptance for Connect: SERVICE_CONNECT* labels give REAL Consul registrations that
REAL proxies (Consul 1.14's built-in `consul connect proxy`) use to carry mTLS traffic, and
intentions stop it.

The agent runs in-process (`start_agent`, tests/integration/conftest.py). Service names carry a
random suffix and every assertion is about this test's own service ids: other sessions may share
the Docker engine, and the agent registers their containers too. Sidecars get explicit public
ports (SERVICE_CONNECT_SIDECAR_PORT) picked free on this host, instead of Consul's 21000-21255
range that concurrent sessions would all draw from. Agents run with `-ip 127.0.0.1`: Consul's
default sidecar check and the proxies' mTLS traffic go to the registered address, which must not
be the host's primary address (issue 12's test-safety rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from tests.helpers import (
    HTTPD_COMMAND,
    HTTPD_INDEX_MARKER,
    IDLE_COMMAND,
    ConsulAgent,
    ConsulHTTPError,
    ContainerFactory,
    async_wait_until,
    free_ports,
    host_port,
    http_get_text,
)
from tests.integration.conftest import StartAgent

PUBLISH_80 = {"80/tcp": ("127.0.0.1", None)}
PROXY_STOP_TIMEOUT = 5.0
# Consul's sidecar "Listening" check is a TCP check every 10 s with a random first delay: the
# backend's sidecar can take two rounds to turn passing after its proxy starts.
SIDECAR_HEALTHY_TIMEOUT = 30.0
REQUEST_TIMEOUT = 3.0


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


async def run_container(
    containers: ContainerFactory, suffix: str, command: Sequence[str], labels: Mapping[str, str]
) -> Container:
    return await asyncio.to_thread(
        containers.run, suffix, list(command), labels=labels, ports=PUBLISH_80
    )


async def agent_service(consul: ConsulAgent, service_id: str) -> dict[str, Any] | None:
    """`/v1/agent/service/<id>`, or None if the agent has no such service."""
    path = f"/v1/agent/service/{urllib.parse.quote(service_id, safe='')}"
    try:
        service: dict[str, Any] = await asyncio.to_thread(consul.get, path)
    except ConsulHTTPError as err:
        if err.status == 404:
            return None
        raise
    return service


async def wait_service(consul: ConsulAgent, service_id: str) -> dict[str, Any]:
    async def present() -> dict[str, Any] | None:
        return await agent_service(consul, service_id)

    service: dict[str, Any] = await async_wait_until(
        present, timeout=15, interval=0.2, message=f"service {service_id} never registered"
    )
    return service


# --------------------------------------------------------------------------------------------
# Real proxies


ProxyFactory = Callable[[str], subprocess.Popen[bytes]]


@pytest.fixture
def connect_proxy(consul_bin: str, consul: ConsulAgent, tmp_path: Path) -> Iterator[ProxyFactory]:
    """Starts `consul connect proxy -sidecar-for <service id>`; all are stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(service_id: str) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"proxy-{len(started)}.log"
        command = [
            consul_bin, "connect", "proxy",
            "-http-addr", consul.http_addr,
            "-sidecar-for", service_id,
            "-log-level", "debug",
        ]  # fmt: skip
        setpriv = shutil.which("setpriv")
        if setpriv:  # the proxy must not outlive a killed test run
            command = [setpriv, "--pdeathsig", "KILL", "--", *command]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.terminate()
        for process in started:
            try:
                process.wait(timeout=PROXY_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def proxy_logs(tmp_path: Path) -> str:
    parts = []
    for log in sorted(tmp_path.glob("proxy-*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Sidecars


async def test_sidecars_carry_mtls_traffic_until_an_intention_denies_it(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    connect_proxy: ProxyFactory,
    tmp_path: Path,
) -> None:
    running = await start_agent("-ip", "127.0.0.1")
    frontend_name, backend_name = unique("frontend"), unique("backend")
    upstream_port, frontend_public, backend_public = free_ports(3)

    backend = await run_container(
        containers,
        "backend",
        HTTPD_COMMAND,
        {
            "SERVICE_NAME": backend_name,
            "SERVICE_CONNECT": "sidecar",
            "SERVICE_CONNECT_SIDECAR_PORT": str(backend_public),
        },
    )
    frontend = await run_container(
        containers,
        "frontend",
        IDLE_COMMAND,
        {
            "SERVICE_NAME": frontend_name,
            "SERVICE_CONNECT": "sidecar",
            "SERVICE_CONNECT_UPSTREAMS": f"{backend_name}:{upstream_port}",
            "SERVICE_CONNECT_SIDECAR_PORT": str(frontend_public),
        },
    )
    backend_id = running.service_id(backend.name, 80)
    frontend_id = running.service_id(frontend.name, 80)

    # What registrator asked for is what Consul holds.
    backend_sidecar = await wait_service(consul, f"{backend_id}-sidecar-proxy")
    assert backend_sidecar["Kind"] == "connect-proxy"
    assert backend_sidecar["Service"] == f"{backend_name}-sidecar-proxy"
    assert backend_sidecar["Port"] == backend_public
    assert backend_sidecar["Proxy"]["DestinationServiceID"] == backend_id
    # The proxy forwards to the registered (published) port of the backend.
    backend_port = await asyncio.to_thread(host_port, backend, "80/tcp")
    assert backend_sidecar["Proxy"]["LocalServicePort"] == backend_port

    frontend_sidecar = await wait_service(consul, f"{frontend_id}-sidecar-proxy")
    assert frontend_sidecar["Kind"] == "connect-proxy"
    assert frontend_sidecar["Port"] == frontend_public
    assert frontend_sidecar["Proxy"]["DestinationServiceID"] == frontend_id
    upstreams = frontend_sidecar["Proxy"]["Upstreams"]
    assert [(u["DestinationName"], u["LocalBindPort"]) for u in upstreams] == [
        (backend_name, upstream_port)
    ]

    backend_proxy = connect_proxy(backend_id)
    frontend_proxy = connect_proxy(frontend_id)

    def proxies_alive() -> None:
        for process in (backend_proxy, frontend_proxy):
            if process.poll() is not None:
                raise AssertionError(
                    f"a connect proxy exited ({process.returncode}):\n{proxy_logs(tmp_path)}"
                )

    # The frontend proxy only dials healthy backend sidecars.
    async def backend_sidecar_passing() -> bool:
        proxies_alive()
        path = f"/v1/health/connect/{backend_name}?passing=true"
        return bool(await asyncio.to_thread(consul.get, path))

    await async_wait_until(
        backend_sidecar_passing,
        timeout=SIDECAR_HEALTHY_TIMEOUT,
        interval=0.5,
        message=f"the sidecar of {backend_id} never turned passing",
    )

    url = f"http://127.0.0.1:{upstream_port}/index.html"

    def get() -> str:
        return http_get_text(url, timeout=REQUEST_TIMEOUT)

    async def through_the_mesh() -> str:
        proxies_alive()
        return await asyncio.to_thread(get)

    try:
        body = await async_wait_until(
            through_the_mesh,
            timeout=15,
            interval=0.5,
            message=f"GET {url} never went frontend proxy -> backend proxy -> httpd",
            ignore=(OSError,),
        )
    except AssertionError as err:
        raise AssertionError(f"{err}\n{proxy_logs(tmp_path)}") from None
    assert HTTPD_INDEX_MARKER in body

    # Deny frontend -> backend (Consul 1.14 API); -dev has no ACLs, so the default is allow.
    intention = (
        f"/v1/connect/intentions/exact?source={urllib.parse.quote(frontend_name)}"
        f"&destination={urllib.parse.quote(backend_name)}"
    )
    await asyncio.to_thread(consul.put, intention, {"Action": "deny"})
    try:

        async def refused() -> bool:
            proxies_alive()
            try:
                await asyncio.to_thread(get)
            except OSError:  # connection closed, reset or timed out by the backend proxy
                return True
            return False

        await async_wait_until(
            refused, timeout=15, interval=0.5, message=f"GET {url} still works after the deny"
        )
        # And it stays refused (not a one-off hiccup), by the backend proxy's authorization.
        for _ in range(2):
            assert await refused(), "a request got through after the intention denied it"
        backend_log = tmp_path / "proxy-0.log"
        await async_wait_until(
            lambda: "Action: DENY" in backend_log.read_text(errors="replace"),
            timeout=5,
            message=f"the backend proxy did not log the denial:\n{proxy_logs(tmp_path)}",
        )
    finally:
        # The session's Consul outlives this test, and the per-test reset keeps config entries.
        with contextlib.suppress(ConsulHTTPError, OSError):
            await asyncio.to_thread(consul.delete, intention)


async def test_removing_the_container_removes_service_and_sidecar(
    start_agent: StartAgent, consul: ConsulAgent, containers: ContainerFactory
) -> None:
    running = await start_agent("-ip", "127.0.0.1")
    sidecar_port = free_ports(1)[0]
    name = unique("backend")
    backend = await run_container(
        containers,
        "backend",
        HTTPD_COMMAND,
        {
            "SERVICE_NAME": name,
            "SERVICE_CONNECT": "sidecar",
            "SERVICE_CONNECT_SIDECAR_PORT": str(sidecar_port),
        },
    )
    service_id = running.service_id(backend.name, 80)
    sidecar_id = f"{service_id}-sidecar-proxy"
    await wait_service(consul, service_id)
    await wait_service(consul, sidecar_id)

    await asyncio.to_thread(backend.remove, force=True)

    async def both_gone() -> bool:
        services = await asyncio.to_thread(consul.services)
        return service_id not in services and sidecar_id not in services

    await async_wait_until(
        both_gone,
        timeout=10,
        interval=0.2,
        message=f"{service_id} or its sidecar is still registered after the container went",
    )
    # And from the catalog, not just the local agent.
    assert not await asyncio.to_thread(consul.get, f"/v1/health/connect/{name}")


async def test_native_registers_connect_native(
    start_agent: StartAgent, consul: ConsulAgent, containers: ContainerFactory
) -> None:
    running = await start_agent()
    app = await run_container(
        containers,
        "native",
        IDLE_COMMAND,
        {"SERVICE_NAME": unique("native"), "SERVICE_CONNECT": "native"},
    )
    service_id = running.service_id(app.name, 80)
    service = await wait_service(consul, service_id)
    assert service["Connect"] == {"Native": True}
    assert await agent_service(consul, f"{service_id}-sidecar-proxy") is None


async def test_bad_upstream_registers_without_connect(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="registrator")
    running = await start_agent()
    app = await run_container(
        containers,
        "badupstream",
        IDLE_COMMAND,
        {
            "SERVICE_NAME": unique("app"),
            "SERVICE_CONNECT": "sidecar",
            "SERVICE_CONNECT_UPSTREAMS": "db:notaport",
        },
    )
    service_id = running.service_id(app.name, 80)
    service = await wait_service(consul, service_id)

    def warnings() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.levelno == logging.WARNING
            and "SERVICE_CONNECT_UPSTREAMS" in record.getMessage()
        ]

    found = await async_wait_until(warnings, timeout=5, message="no warning about the upstreams")
    assert f"container {app.name}: label SERVICE_CONNECT_UPSTREAMS:" in found[0]
    assert "'db:notaport'" in found[0]
    assert "registered without Connect" in found[0]

    assert not service.get("Connect")
    assert await agent_service(consul, f"{service_id}-sidecar-proxy") is None
