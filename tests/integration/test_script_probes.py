"""Issue 13 (3): script probes that overrun SERVICE_CHECK_TIMEOUT are killed, at most one probe
per check runs at a time, and the interval has a floor. Real dockerd (busybox containers) and
a real Consul agent; the processes are counted inside the container with `ps`.

Other test sessions' agents on the shared dockerd register every container with a published
port or SERVICE_PORT, and would exec their own probes into ours. So the containers here only
EXPOSE port 80 (published nowhere) and the agent runs with -internal: no default agent
registers them, and every probe counted is this agent's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator

import docker
import pytest
from docker.models.containers import Container

from tests.helpers import ConsulAgent, ContainerFactory
from tests.integration.conftest import StartAgent
from tests.integration.test_checks import (
    IDLE_LOOP,
    check_id,
    sh,
    unique,
    wait_check,
    wait_registered,
)

# registrator-test/web: busybox with EXPOSE 80 and no `timeout` applet.
NO_TIMEOUT_IMAGE = "registrator-test/web:latest"


@pytest.fixture(scope="module")
def exposing_image(docker_client: docker.DockerClient, test_image: str) -> Iterator[str]:
    """The busybox test image (it has `timeout`) with EXPOSE 80."""
    base = docker_client.containers.create(test_image, ["true"])
    name = f"registrator-test/exposing-{secrets.token_hex(4)}"
    try:
        base.commit(repository=name, changes=["EXPOSE 80"])
    finally:
        base.remove(force=True)
    yield name
    docker_client.images.remove(name, force=True)


async def exposed(
    containers: ContainerFactory,
    suffix: str,
    command: list[str],
    labels: dict[str, str],
    image: str,
) -> Container:
    """A container whose port 80 is EXPOSEd, published nowhere."""
    return await asyncio.to_thread(containers.run, suffix, command, labels=labels, image=image)


async def probes_alive(box: Container, script: str, seconds: int) -> int:
    """How many of this agent's probes of `script` run in the container. Each has a watcher
    process, `timeout -s KILL N SCRIPT`, until the probe ends (killed or not); agents of other
    sessions on this dockerd that still register the container run theirs unwrapped."""
    listing = await sh(box, "ps -o args")
    return sum(
        1 for line in listing.splitlines() if line.strip() == f"timeout -s KILL {seconds} {script}"
    )


async def watch_probes(box: Container, script: str, seconds: int, watch: float) -> int:
    """The most probes seen alive at once, sampled twice a second for `watch` seconds."""
    most = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + watch
    while loop.time() < end:
        most = max(most, await probes_alive(box, script, seconds))
        await asyncio.sleep(0.5)
    return most


@pytest.mark.parametrize(
    ("script", "check_timeout"),
    [
        pytest.param("sleep 29", "1s", id="the issue's example"),
        pytest.param("sleep 17", "2s", id="2s timeout"),
    ],
)
async def test_timed_out_probe_is_killed(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    exposing_image: str,
    script: str,
    check_timeout: str,
) -> None:
    running = await start_agent("-internal")
    box = await exposed(
        containers,
        "probe",
        IDLE_LOOP,
        {
            "SERVICE_NAME": unique("probe"),
            "SERVICE_CHECK_SCRIPT": script,
            "SERVICE_CHECK_INTERVAL": "1s",
            "SERVICE_CHECK_TIMEOUT": check_timeout,
        },
        image=exposing_image,
    )
    sid = running.service_id(box.name, 80)
    await wait_registered(consul, sid)
    # Before the fix: 7 `sleep 29` alive after 12 s, one more every interval.
    seconds = int(check_timeout[:-1])
    assert await watch_probes(box, script, seconds, 12.0) <= 1
    await wait_check(
        consul, check_id(sid, "script"), "critical", f"timed out after {seconds} s; killed"
    )


async def test_container_without_timeout_runs_one_probe_at_a_time(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="registrator")
    running = await start_agent("-internal")
    probe = await exposed(
        containers,
        "notimeout",
        IDLE_LOOP,
        {
            "SERVICE_NAME": unique("probe-bare"),
            "SERVICE_CHECK_SCRIPT": "sleep 4",
            "SERVICE_CHECK_INTERVAL": "1s",
            "SERVICE_CHECK_TIMEOUT": "1s",
        },
        image=NO_TIMEOUT_IMAGE,
    )
    sid = running.service_id(probe.name, 80)
    await wait_registered(consul, sid)
    # Not killable here; the next probe waits for this one (exec_run polls it until it ends).
    # Unwrapped probes cannot be told from other sessions' agents', so they are not counted.
    await wait_check(consul, check_id(sid, "script"), "critical", "not killed")
    warnings = [r.getMessage() for r in caplog.records if "no `timeout` command" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert probe.name in warnings[0] and "SERVICE_CHECK_SCRIPT" in warnings[0]


@pytest.mark.parametrize("interval", ["1ms", "100ms"])
async def test_script_interval_floor(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    caplog: pytest.LogCaptureFixture,
    exposing_image: str,
    interval: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="registrator")
    running = await start_agent("-internal")
    box = await exposed(
        containers,
        "floor",
        IDLE_LOOP,
        {
            "SERVICE_NAME": unique("floor"),
            "SERVICE_CHECK_SCRIPT": "true",
            "SERVICE_CHECK_INTERVAL": interval,
        },
        image=exposing_image,
    )
    sid = running.service_id(box.name, 80)
    await wait_registered(consul, sid)
    await wait_check(consul, check_id(sid, "script"), "passing")
    # How often it runs is not counted in the container: agents of other sessions running
    # with -internal probe it too. The agent's own pace is unit-tested (tests/unit/test_checks.py).
    lines = [r.getMessage() for r in caplog.records if "shortest interval" in r.getMessage()]
    assert lines == [
        f"container {box.name}: label SERVICE_CHECK_INTERVAL: {interval!r} is shorter than 1s, "
        "the shortest interval Consul runs a check at (and registrator a script); using 1s"
    ]


async def probe_check(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    image: str,
    name: str,
    labels: dict[str, str],
) -> str:
    """The script check id of a fresh service `name` with `labels`, registered by an
    -internal agent of this test."""
    running = await start_agent("-internal")
    box = await exposed(
        containers, name, IDLE_LOOP, {"SERVICE_NAME": unique(name), **labels}, image=image
    )
    sid = running.service_id(box.name, 80)
    await wait_registered(consul, sid)
    return check_id(sid, "script")


async def test_probe_longer_than_docker_client_timeout_passes(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    exposing_image: str,
) -> None:
    # Before the fix the Docker client's 30 s session timeout cut the exec stream and the
    # check read "timed out after 60 s; not killed: the container has no `timeout` command".
    labels = {
        "SERVICE_CHECK_SCRIPT": "sleep 33; echo done",
        "SERVICE_CHECK_INTERVAL": "40s",
        "SERVICE_CHECK_TIMEOUT": "60s",
    }
    checked = await probe_check(start_agent, consul, containers, exposing_image, "long", labels)
    check = await wait_check(consul, checked, "passing", "done", within=45.0)
    assert check["Output"] == "done\n"


async def test_multiline_output_has_no_carriage_returns(
    start_agent: StartAgent,
    consul: ConsulAgent,
    containers: ContainerFactory,
    exposing_image: str,
) -> None:
    labels = {
        # `[ -t 1 ]`: stdout is not a terminal (with a TTY, every \n arrived as \r\n).
        "SERVICE_CHECK_SCRIPT": "echo a; echo b; [ -t 1 ] && echo tty; echo err >&2",
        "SERVICE_CHECK_INTERVAL": "10s",
    }
    checked = await probe_check(start_agent, consul, containers, exposing_image, "lines", labels)
    check = await wait_check(consul, checked, "passing", "err")
    # stdout and stderr are separate pipes: their relative order is the kernel's, not ours.
    assert check["Output"] in {"a\nb\nerr\n", "err\na\nb\n", "a\nerr\nb\n"}
