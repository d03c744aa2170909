"""Issue 4 acceptance: every SERVICE_CHECK_* kind, run by a REAL Consul agent against REAL
containers, follows the container's health: passing, then critical when it breaks, then passing
again when it is fixed.

The agent runs in-process (`start_agent`, tests/integration/conftest.py) against the session's
`consul agent -dev`, so the tests can read its counters; Consul and Docker are the real ones.
Other sessions may share the Docker engine, and the agent registers their containers too: every
assertion is about this test's own service ids, and service names are made unique.

Where checks probe: outside `-internal`, a service is registered at its published host port and
`-ip 127.0.0.1`, so Consul probes through Docker's userland proxy and never the host's primary
address, which the default would choose (issue 12's test-safety rule).
That proxy accepts every TCP connection itself, listener or not, so a TCP check through it can
never fail; the TCP test therefore runs with `-internal`, where the check dials the container's
own bridge address, which the Consul agent on the host reaches directly.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from docker.models.containers import Container

from tests.helpers import (
    HTTPD_INDEX_MARKER,
    ConsulAgent,
    ContainerFactory,
    async_wait_until,
    container_ip,
)
from tests.integration.conftest import RunningAgent, StartAgent

# Published on loopback only: the Consul agent is on this host, nothing else needs the port.
PUBLISH_80 = {"80/tcp": ("127.0.0.1", None)}
# httpd without -f daemonizes, so the shell stays PID 1 and the container outlives a killed
# httpd; `sleep 1` in the loop lets the TERM trap run promptly on `docker stop`.
HTTPD_DAEMON = [
    "sh",
    "-c",
    "trap 'exit 0' TERM INT; httpd -p 80 -h /www; while true; do sleep 1; done",
]
# busybox nc has no -k; -ll keeps listening after each connection (-e true closes it at once).
NC_LISTENER = [
    "sh",
    "-c",
    "trap 'exit 0' TERM INT; nc -ll -p 80 -e true & while true; do sleep 1; done",
]
IDLE_LOOP = ["sh", "-c", "trap 'exit 0' TERM INT; while true; do sleep 1; done"]

CHECK_TIMEOUT = 15.0


# --------------------------------------------------------------------------------------------
# Docker and Consul, without blocking the agent's event loop


async def run_container(
    containers: ContainerFactory,
    suffix: str,
    command: Sequence[str],
    labels: Mapping[str, str],
    ports: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Container:
    return await asyncio.to_thread(
        containers.run, suffix, list(command), labels=labels, ports=ports or PUBLISH_80, **kwargs
    )


async def sh(container: Container, script: str) -> str:
    """Runs `sh -c script` in the container; fails the test unless it exits 0."""
    result = await asyncio.to_thread(container.exec_run, ["sh", "-c", script])
    output = result.output.decode(errors="replace")
    assert result.exit_code == 0, (
        f"{container.name}: `{script}` exited {result.exit_code}: {output}"
    )
    return output


async def kill_process(container: Container, comm: str) -> None:
    """Kills every process named `comm` in the container (never PID 1, the keep-alive shell)."""
    await sh(
        container,
        f"pids=$(ps -o pid,comm | sed -n 's/^ *\\([0-9]*\\) {comm}$/\\1/p' | grep -vx 1);"
        f' test -n "$pids" && kill $pids',
    )


async def consul_checks(consul: ConsulAgent) -> dict[str, Any]:
    return await asyncio.to_thread(consul.checks)


async def consul_services(consul: ConsulAgent) -> dict[str, Any]:
    return await asyncio.to_thread(consul.services)


async def wait_registered(consul: ConsulAgent, sid: str, within: float = 15.0) -> dict[str, Any]:
    async def registered() -> dict[str, Any] | None:
        return (await consul_services(consul)).get(sid)

    service: dict[str, Any] = await async_wait_until(
        registered, timeout=within, interval=0.2, message=f"service {sid} never registered"
    )
    return service


async def wait_check(
    consul: ConsulAgent,
    check_id: str,
    status: str,
    output_contains: str = "",
    within: float = CHECK_TIMEOUT,
) -> dict[str, Any]:
    """Polls /v1/agent/checks until `check_id` has `status` (and output containing a text)."""
    last: object = "never read"

    async def reached() -> dict[str, Any] | None:
        nonlocal last
        check = (await consul_checks(consul)).get(check_id)
        last = {"Status": check["Status"], "Output": check["Output"]} if check else "no such check"
        if check and check["Status"] == status and output_contains in check["Output"]:
            return dict(check)
        return None

    try:
        result: dict[str, Any] = await async_wait_until(
            reached, timeout=within, interval=0.2, message=f"check {check_id} never {status}"
        )
    except AssertionError as err:
        raise AssertionError(f"{err}; Consul's last view of the check: {last!r}") from None
    return result


def full_reconciles(running: RunningAgent) -> int:
    assert running.agent.reconciler is not None
    return running.agent.reconciler.stats.full_reconciles


async def wait_resyncs(running: RunningAgent, count: int) -> None:
    """Waits until `count` more full reconciles (the -resync timer's) have completed."""
    target = full_reconciles(running) + count
    await async_wait_until(
        lambda: full_reconciles(running) >= target,
        timeout=count * 2 + 5,
        message=f"fewer than {count} resyncs (is -resync 1 set?)",
    )


def unique(name: str) -> str:
    """A service name no concurrent test session uses (their containers share our dockerd)."""
    return f"{name}-{secrets.token_hex(3)}"


def check_id(sid: str, kind: str) -> str:
    return f"service:{sid}:{kind}"


# --------------------------------------------------------------------------------------------
# One kind at a time: passing → critical → passing


async def test_http_check_follows_httpd(
    start_agent: StartAgent, consul: ConsulAgent, containers: ContainerFactory
) -> None:
    running = await start_agent("-ip", "127.0.0.1")
    web = await run_container(
        containers,
        "http",
        HTTPD_DAEMON,
        {
            "SERVICE_NAME": unique("chk-http"),
            "SERVICE_CHECK_HTTP": "/index.html",
            "SERVICE_CHECK_INTERVAL": "1s",
            "SERVICE_CHECK_TIMEOUT": "1s",
        },
    )
    sid = running.service_id(web.name, 80)
    service = await wait_registered(consul, sid)
    http = check_id(sid, "http")

    passing = await wait_check(consul, http, "passing", output_contains=HTTPD_INDEX_MARKER)
    assert passing["Type"] == "http"
    assert passing["Interval"] == "1s"
    assert passing["Timeout"] == "1s"
    # It probes what was registered: the published port at the address asked for.
    assert service["Address"] == "127.0.0.1"
    url = f"http://{service['Address']}:{service['Port']}/index.html"
    assert f"HTTP GET {url}: 200 OK" in passing["Output"]

    await kill_process(web, "httpd")
    await wait_check(consul, http, "critical")

    await sh(web, "httpd -p 80 -h /www")
    await wait_check(consul, http, "passing", output_contains=HTTPD_INDEX_MARKER)


async def test_tcp_check_follows_listener(
    start_agent: StartAgent, consul: ConsulAgent, containers: ContainerFactory
) -> None:
    # -internal: the check dials the container's bridge address itself (see the module doc).
    running = await start_agent("-internal")
    box = await run_container(
        containers,
        "tcp",
        NC_LISTENER,
        {
            "SERVICE_NAME": unique("chk-tcp"),
            "SERVICE_CHECK_TCP": "true",
            "SERVICE_CHECK_INTERVAL": "1s",
        },
    )
    sid = running.service_id(box.name, 80)
    service = await wait_registered(consul, sid)
    await asyncio.to_thread(box.reload)
    address = container_ip(box)
    assert (service["Address"], service["Port"]) == (address, 80)
    tcp = check_id(sid, "tcp")

    passing = await wait_check(consul, tcp, "passing")
    assert passing["Type"] == "tcp"
    assert f"TCP connect {address}:80: Success" in passing["Output"]

    await kill_process(box, "nc")
    await wait_check(consul, tcp, "critical")

    await sh(box, "nc -ll -p 80 -e true >/dev/null 2>&1 &")
    await wait_check(consul, tcp, "passing")


# Exit 0 passing, 1 warning, anything else critical; each run leaves a line in /tmp/runs.
SCRIPT = (
    "sh -c 'echo run >> /tmp/runs; if test -f /tmp/ok; then echo script-says-ok;"
    " elif test -f /tmp/meh; then echo script-says-meh; exit 1;"
    " else echo script-says-missing; exit 2; fi'"
)


async def test_script_check_runs_in_container(
    start_agent: StartAgent, consul: ConsulAgent, containers: ContainerFactory
) -> None:
    running = await start_agent()
    box = await run_container(
        containers,
        "script",
        ["sh", "-c", "touch /tmp/ok; trap 'exit 0' TERM INT; while true; do sleep 1; done"],
        {"SERVICE_NAME": unique("chk-script"), "SERVICE_CHECK_SCRIPT": SCRIPT,
         "SERVICE_CHECK_INTERVAL": "1s"},
    )  # fmt: skip
    sid = running.service_id(box.name, 80)
    await wait_registered(consul, sid)
    script = check_id(sid, "script")

    passing = await wait_check(consul, script, "passing", output_contains="script-says-ok")
    # Reported to a TTL check by registrator: Consul needs no enable_script_checks.
    assert passing["Type"] == "ttl"

    # It runs every SERVICE_CHECK_INTERVAL (1s), even with no other check to take it from.
    async def runs() -> int:
        return int(await sh(box, "wc -l < /tmp/runs"))

    first = await runs()

    async def four_more() -> bool:
        return await runs() >= first + 4

    await async_wait_until(four_more, timeout=6.5, message="the script does not run every 1s")

    await sh(box, "rm /tmp/ok")
    await wait_check(consul, script, "critical", output_contains="script-says-missing")

    await sh(box, "touch /tmp/meh")
    await wait_check(consul, script, "warning", output_contains="script-says-meh")

    await sh(box, "touch /tmp/ok")
    await wait_check(consul, script, "passing", output_contains="script-says-ok")


async def test_ttl_check_is_the_applications_to_heartbeat(
    start_agent: StartAgent, consul: ConsulAgent, containers: ContainerFactory
) -> None:
    running = await start_agent("-resync", "1")
    box = await run_container(
        containers,
        "ttl",
        IDLE_LOOP,
        {"SERVICE_NAME": unique("chk-ttl"), "SERVICE_CHECK_TTL": "5s"},
    )
    sid = running.service_id(box.name, 80)
    await wait_registered(consul, sid)
    ttl = check_id(sid, "ttl")

    initial = await wait_check(consul, ttl, "critical")  # Consul's default for a new check
    assert initial["Type"] == "ttl"

    # The application heartbeats once; registrator's resyncs (every second) must not reset the
    # check in the 5 s it has before it expires.
    resyncs = full_reconciles(running)
    await asyncio.to_thread(consul.put, f"/v1/agent/check/pass/{ttl}?note=app-alive")
    passed_at = time.monotonic()
    await wait_check(consul, ttl, "passing", output_contains="app-alive", within=2)
    while time.monotonic() - passed_at < 3.5:
        check = (await consul_checks(consul))[ttl]
        assert (check["Status"], check["Output"]) == ("passing", "app-alive")
        await asyncio.sleep(0.2)
    assert full_reconciles(running) >= resyncs + 2

    # No more heartbeats: Consul expires it.
    expired = await wait_check(consul, ttl, "critical", within=10)
    assert "TTL expired" in expired["Output"]


async def test_docker_healthcheck_is_mirrored(
    start_agent: StartAgent, consul: ConsulAgent, containers: ContainerFactory
) -> None:
    marker = f"healthy-{secrets.token_hex(4)}"
    running = await start_agent()
    box = await run_container(
        containers,
        "health",
        IDLE_LOOP,
        {"SERVICE_NAME": unique("chk-health")},
        healthcheck={
            "test": ["CMD-SHELL", "cat /tmp/healthy"],
            "interval": 1_000_000_000,
            "timeout": 1_000_000_000,
            "retries": 1,
        },
    )
    sid = running.service_id(box.name, 80)
    await wait_registered(consul, sid)
    mirror = check_id(sid, "docker-health")

    # Registered while Docker says "starting": the -docker-health-initial status.
    initial = await wait_check(consul, mirror, "critical")
    assert initial["Type"] == "ttl"

    await sh(box, f"echo {marker} > /tmp/healthy")
    await wait_check(consul, mirror, "passing", output_contains=marker)

    await sh(box, "rm /tmp/healthy")
    await wait_check(consul, mirror, "critical", output_contains="can't open")

    await sh(box, f"echo {marker} > /tmp/healthy")
    await wait_check(consul, mirror, "passing", output_contains=marker)


async def test_https_and_grpc_checks_are_accepted_and_run(
    start_agent: StartAgent, consul: ConsulAgent, containers: ContainerFactory
) -> None:
    running = await start_agent("-ip", "127.0.0.1")
    web = await run_container(
        containers,
        "tls",
        HTTPD_DAEMON,
        {
            "SERVICE_NAME": unique("chk-tls"),
            "SERVICE_CHECK_HTTPS": "/index.html",
            "SERVICE_CHECK_TLS_SKIP_VERIFY": "true",
            "SERVICE_CHECK_GRPC": "true",
            "SERVICE_CHECK_GRPC_USE_TLS": "true",
            "SERVICE_CHECK_INTERVAL": "1s",
            "SERVICE_CHECK_TIMEOUT": "1s",
        },
    )
    sid = running.service_id(web.name, 80)
    service = await wait_registered(consul, sid)
    target = f"{service['Address']}:{service['Port']}"

    # busybox speaks neither TLS nor gRPC: critical, with the probe's own error in the
    # output, proves Consul accepted both definitions and runs them.
    url = f"https://{target}/index.html"
    https = await wait_check(consul, check_id(sid, "https"), "critical", output_contains=url)
    assert (https["Type"], https["Interval"], https["Timeout"]) == ("http", "1s", "1s")
    # Go reports a plain-HTTP answer, or the peer resetting the TLS handshake, depending on
    # how busybox httpd reacts to the ClientHello; either shows a TLS probe really ran.
    assert any(
        sign in https["Output"]
        for sign in ("HTTP response to HTTPS client", "connection reset by peer", "EOF")
    ), https["Output"]

    grpc = await wait_check(consul, check_id(sid, "grpc"), "critical", output_contains="rpc error")
    assert (grpc["Type"], grpc["Interval"]) == ("grpc", "1s")


# --------------------------------------------------------------------------------------------
# Several checks, resyncs, and what registrator refuses or Consul rejects


def registrations_of(caplog: pytest.LogCaptureFixture, sid: str) -> int:
    return sum(
        1
        for record in caplog.records
        if record.name == "registrator.reconciler"
        and record.getMessage().startswith(f"registered {sid} ")
    )


async def test_unchanged_resyncs_neither_reregister_nor_flap(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="registrator")
    running = await start_agent("-ip", "127.0.0.1", "-resync", "1")
    name = unique("chk-three")
    web = await run_container(
        containers,
        "three",
        ["sh", "-c", "touch /tmp/ok; " + HTTPD_DAEMON[2]],
        {
            "SERVICE_NAME": name,
            "SERVICE_CHECK_HTTP": "/index.html",
            "SERVICE_CHECK_TCP": "true",
            "SERVICE_CHECK_SCRIPT": SCRIPT,
            "SERVICE_CHECK_INTERVAL": "1s",
        },
    )
    sid = running.service_id(web.name, 80)
    await wait_registered(consul, sid)
    # The node heartbeat's alias must not flap either.
    ids = {check_id(sid, kind) for kind in ("http", "tcp", "script", "registrator-node")}
    for cid in sorted(ids):
        await wait_check(consul, cid, "passing")

    def statuses(checks: Mapping[str, Any]) -> dict[str, str]:
        return {cid: c["Status"] for cid, c in checks.items() if c["ServiceID"] == sid}

    async def catalog_indexes() -> dict[str, int] | None:
        """ModifyIndex of our checks in the catalog, once it shows all of them passing."""
        entries = await asyncio.to_thread(consul.get, f"/v1/health/checks/{name}")
        mine = [c for c in entries if c["ServiceID"] == sid]
        if {c["CheckID"] for c in mine} != ids or any(c["Status"] != "passing" for c in mine):
            return None
        return {c["CheckID"]: c["ModifyIndex"] for c in mine}

    indexes = await async_wait_until(
        catalog_indexes, timeout=10, message="the catalog never showed every check passing"
    )
    # At least one: a resync racing the first, event-driven registration may repeat it.
    registrations = registrations_of(caplog, sid)
    assert registrations >= 1
    resyncs = full_reconciles(running)

    # Past the script check's TTL (30 s at the least): registrator must keep reporting it
    # even though its result never changes, or Consul would expire it to critical.
    deadline = time.monotonic() + 33.0
    while time.monotonic() < deadline:
        assert statuses(await consul_checks(consul)) == dict.fromkeys(ids, "passing")
        await asyncio.sleep(1.0)

    assert full_reconciles(running) >= resyncs + 2
    assert registrations_of(caplog, sid) == registrations, "a resync re-registered"
    # No check changed in the catalog: no flapping, not even for a moment between two polls.
    assert await catalog_indexes() == indexes


async def test_bad_interval_keeps_the_checks_and_adds_a_critical_one(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="registrator")
    running = await start_agent("-ip", "127.0.0.1", "-resync", "1")
    web = await run_container(
        containers,
        "banana",
        HTTPD_DAEMON,
        {
            "SERVICE_NAME": unique("chk-banana"),
            "SERVICE_CHECK_HTTP": "/index.html",
            "SERVICE_CHECK_INTERVAL": "banana",
            "SERVICE_CHECK_TTL": "30s",
        },
    )
    sid = running.service_id(web.name, 80)
    await wait_registered(consul, sid)

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "SERVICE_CHECK_INTERVAL" in r.getMessage()
        ]

    found = await async_wait_until(warnings, timeout=5, message="no warning about the interval")
    assert f"container {web.name}: label SERVICE_CHECK_INTERVAL:" in found[0]
    assert "banana" in found[0]

    checks = {cid for cid, c in (await consul_checks(consul)).items() if c["ServiceID"] == sid}
    # The HTTP check runs at the default interval, the service is critical until the label is
    # fixed; the TTL check and the node heartbeat's alias are as they would be.
    assert checks == {
        check_id(sid, kind) for kind in ("http", "ttl", "misconfigured", "registrator-node")
    }

    await wait_resyncs(running, 2)
    assert len(warnings()) == 1, "the problem must be logged once, not on every resync"


@pytest.mark.parametrize(
    ("labels", "consul_says"),
    [
        # A zero interval, which Consul refuses, is caught before it (a critical
        # misconfigured check: test_catalog_truth.py); Connect still has rules only Consul knows.
        pytest.param(
            {"SERVICE_81_CONNECT": "sidecar", "SERVICE_81_CONNECT_UPSTREAMS": "a:19001,b:19001"},
            "upstreams cannot contain duplicates",
            id="duplicate-upstream-ports",
        ),
    ],
)
async def test_consul_rejection_skips_only_that_service(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    caplog: pytest.LogCaptureFixture,
    labels: dict[str, str],
    consul_says: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="registrator")
    running = await start_agent("-resync", "1")
    box = await run_container(
        containers,
        "reject",
        IDLE_LOOP,
        {"SERVICE_NAME": unique("chk-reject"), "SERVICE_CHECK_TTL": "30s", **labels},
        ports={"80/tcp": ("127.0.0.1", None), "81/tcp": ("127.0.0.1", None)},
    )
    good, bad = running.service_id(box.name, 80), running.service_id(box.name, 81)
    await wait_registered(consul, good)

    def rejections() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith(f"Consul rejected service {bad} ")
        ]

    found = await async_wait_until(rejections, timeout=10, message=f"{bad} not rejected")
    assert box.name in found[0]
    assert consul_says in found[0]

    await wait_resyncs(running, 2)
    services = await consul_services(consul)
    assert good in services
    assert bad not in services
    assert len(rejections()) == 1, "the rejection must be logged once, not on every resync"
