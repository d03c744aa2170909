"""The real `registrator` console script, as a user runs it: gliderlabs-style flags, signals,
exit codes and messages, against the real Docker engine and the real Consul agent.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from registrator.model import META_CONTAINER, META_NODE
from registrator.settings import OPTIONS
from tests.helpers import ConsulAgent, ContainerFactory, wait_until
from tests.integration.conftest import remove_services_of_node, unique_node

STARTUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 5.0
# The console script pip installed next to this interpreter; `python -m registrator` otherwise.
CONSOLE_SCRIPT = Path(sys.executable).with_name("registrator")


def registrator_command() -> list[str]:
    if CONSOLE_SCRIPT.is_file() and os.access(CONSOLE_SCRIPT, os.X_OK):
        return [str(CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "registrator"]


def clean_environ() -> dict[str, str]:
    """The test's environment without anything that configures registrator or Consul."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("REGISTRATOR_", "CONSUL_")) and name != "DOCKER_HOST"
    }
    if os.environ.get("DOCKER_HOST"):
        env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Registrator:
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


class StartRegistrator(Protocol):
    def __call__(self, *args: str) -> Registrator: ...


@pytest.fixture
def start_registrator(consul: ConsulAgent, tmp_path: Path) -> Iterator[StartRegistrator]:
    """Starts `registrator ARGS...` in the background, output to a file; killed at teardown,
    and what it registered (under its `-node`) removed from the session's Consul agent."""
    started: list[Registrator] = []
    nodes: set[str] = set()

    def start(*args: str) -> Registrator:
        nodes.update(value for flag, value in itertools.pairwise(args) if flag == "-node")
        log_path = tmp_path / f"registrator-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*registrator_command(), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_environ(),
            )
        running = Registrator(process, log_path)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            if running.alive():
                running.process.kill()
            running.process.wait(timeout=10)
        errors = [error for node in nodes for error in remove_services_of_node(consul, node)]
        assert not errors, errors


def services_of(consul: ConsulAgent, *container_ids: str) -> dict[str, dict[str, Any]]:
    """Every service in Consul (any owner) that names one of these containers."""
    wanted = set(container_ids)
    return {
        sid: entry
        for sid, entry in consul.services().items()
        if (entry.get("Meta") or {}).get(META_CONTAINER) in wanted
    }


def test_console_script_registers_recovers_from_sigkill_and_stops_on_sigterm(
    consul: ConsulAgent,
    containers: ContainerFactory,
    start_registrator: StartRegistrator,
) -> None:
    node = unique_node()
    name = f"cli-{secrets.token_hex(3)}"
    stays = containers.run(
        "stays", labels={"SERVICE_NAME": f"{name}-stays"}, ports={"80/tcp": None}
    )
    goes = containers.run("goes", labels={"SERVICE_NAME": f"{name}-goes"}, ports={"80/tcp": None})
    stays_id = f"{node}:{stays.name}:80"
    goes_id = f"{node}:{goes.name}:80"
    # gliderlabs' form: single dashes, `-flag=value` and `-flag value`, options on both sides of
    # the registry URI.
    args = (
        "-internal=false",
        "-resync",
        "2",
        f"consul://{consul.http_addr}",
        "-node",
        node,
        "-retry-attempts=10",
    )

    first = start_registrator(*args)
    wait_until(
        lambda: {stays_id, goes_id} <= set(consul.services()) or not first.alive(),
        timeout=STARTUP_TIMEOUT,
        message=f"services not registered; registrator output:\n{first.output()}",
    )
    assert first.alive(), first.output()
    before = services_of(consul, stays.id, goes.id)
    assert set(before) == {stays_id, goes_id}
    assert {entry["Meta"][META_NODE] for entry in before.values()} == {node}

    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(timeout=EXIT_TIMEOUT) == -signal.SIGKILL
    goes.remove(force=True)
    assert goes_id in consul.services(), "nobody should have cleaned up while no agent ran"

    second = start_registrator(*args)
    wait_until(
        lambda: goes_id not in consul.services() or not second.alive(),
        timeout=STARTUP_TIMEOUT,
        message=f"{goes_id} of the removed container was not deregistered; output:\n"
        + second.output(),
    )
    assert second.alive(), second.output()
    after = services_of(consul, stays.id, goes.id)
    assert set(after) == {stays_id}, "expected exactly the surviving container's service"
    assert after[stays_id] == before[stays_id]
    # The restarted agent adopted the existing registration instead of writing it again.
    assert not re.search(rf"\bregistered {re.escape(stays_id)} ", second.output()), second.output()

    started = time.monotonic()
    second.process.send_signal(signal.SIGTERM)
    try:
        code = second.process.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit within {EXIT_TIMEOUT} s of SIGTERM; output:\n{second.output()}")
    assert code == 0, second.output()
    assert time.monotonic() - started < EXIT_TIMEOUT
    # Without -deregister-on-exit a clean stop leaves the registrations for the next start.
    assert stays_id in consul.services()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["-resync", "abc", "consul://127.0.0.1:8500"], ["-resync", "abc"], id="resync"
        ),
        pytest.param(
            ["-internal", "-deregister", "sometimes"], ["-deregister", "sometimes"], id="deregister"
        ),
        pytest.param(["etcd://host:4001"], ["etcd://", "only", "Consul"], id="etcd"),
        pytest.param(["-bogus", "consul://127.0.0.1:8500"], ["-bogus"], id="unknown flag"),
    ],
)
def test_bad_options_exit_2_with_one_line_naming_the_option(
    args: list[str], expected: list[str]
) -> None:
    result = subprocess.run(
        [*registrator_command(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_environ(),
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert all(word in lines[0] for word in expected), lines[0]
    assert result.stdout == ""


def test_help_exits_0_and_lists_every_environment_variable() -> None:
    result = subprocess.run(
        [*registrator_command(), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_environ(),
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 0, result
    assert result.stderr == ""
    missing = [opt.env for opt in OPTIONS if f"[{opt.env}]" not in result.stdout]
    assert missing == [], result.stdout
    for flag in ("-internal", "-resync", "-deregister", "-explicit", "-ip", "-tags"):
        assert re.search(rf"^\s+{re.escape(flag)}\b", result.stdout, re.MULTILINE), flag
