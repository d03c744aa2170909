"""The real `registrator` command as a subprocess, Consul agents on fixed ports, and the
bookkeeping the fault tests report (lost, stale, duplicate services).

The reliability, security and operability tests drive the CLI rather than an in-process agent:
that is what users run, and it is the only way to see its exit codes, what it writes to stderr,
and how it behaves under SIGTERM and SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from registrator.model import META_CONTAINER, META_NODE
from tests.helpers import (
    CONSUL_START_TIMEOUT,
    ConsulAgent,
    _consul_command,
    find_consul_bin,
    free_port,
    free_ports,
)

REPO = Path(__file__).resolve().parents[1]
# Never passed on to the agent: a developer's shell must not change what a test runs.
_SCRUBBED_PREFIXES = ("CONSUL_", "REGISTRATOR_")
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def unique_node(prefix: str = "rel") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def agent_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def _with_parent_death_signal(command: list[str]) -> list[str]:
    # A test run killed before its teardown must not leave agents behind.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body) of a GET, any status; raises OSError if nothing answers."""
    try:
        with _opener.open(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """One short-lived `registrator ...` run (config errors, explain)."""
    return subprocess.run(
        [sys.executable, "-m", "registrator", *args],
        capture_output=True,
        text=True,
        env=agent_env(env),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


class RegistratorProcess:
    """`python -m registrator ...` running in the background; stderr goes to a file."""

    def __init__(
        self,
        log_dir: Path,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        http_port: int | None = None,
        name: str = "registrator",
    ) -> None:
        self.args = list(args)
        self.http_port = http_port
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"{name}-{secrets.token_hex(3)}.stderr"
        command = [sys.executable, "-m", "registrator", *self.args]
        if http_port is not None:
            command += ["-http-addr", f"127.0.0.1:{http_port}"]
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                _with_parent_death_signal(command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=agent_env(env),
                cwd=REPO,
                start_new_session=True,
            )
        self.started = time.monotonic()

    @classmethod
    def start(
        cls,
        log_dir: Path,
        *args: str,
        node: str,
        consul: str,
        env: Mapping[str, str] | None = None,
        http: bool = True,
        name: str = "registrator",
    ) -> RegistratorProcess:
        """`registrator -node NODE ARGS... consul://CONSUL`, serving /health when `http`."""
        return cls(
            log_dir,
            ["-node", node, *args, consul],
            env=env,
            http_port=free_port() if http else None,
            name=name,
        )

    # -- output -------------------------------------------------------------------------------

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def lines(self) -> list[str]:
        return self.stderr().splitlines()

    def lines_with(self, *needles: str) -> list[str]:
        return [line for line in self.lines() if all(n in line for n in needles)]

    # -- /health and /metrics -----------------------------------------------------------------

    def url(self, path: str) -> str:
        assert self.http_port is not None, "started without -http-addr"
        return f"http://127.0.0.1:{self.http_port}{path}"

    def health(self) -> tuple[int, dict[str, Any]] | None:
        """(status, body) of /health, or None while nothing listens."""
        try:
            status, body = http_get(self.url("/health"))
        except OSError:
            return None
        return status, json.loads(body)

    def is_ready(self) -> bool:
        answer = self.health()
        return answer is not None and answer[0] == 200

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics by `name{label="value",...}` (labels sorted)."""
        status, text = http_get(self.url("/metrics"))
        assert status == 200, (status, text)
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def consul_writes(self) -> int:
        with contextlib.suppress(OSError, AssertionError):
            return int(self.metrics().get("registrator_consul_writes_total", 0))
        return 0

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Waits for /health 200; returns seconds since the process started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"registrator exited with {self.process.returncode}:\n{self.stderr()[-3000:]}"
                )
            if self.is_ready():
                return time.monotonic() - self.started
            time.sleep(0.1)
        raise AssertionError(f"registrator not ready after {timeout} s:\n{self.stderr()[-3000:]}")

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"registrator ignored SIGTERM for {timeout} s:\n{self.stderr()[-3000:]}"
            ) from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"registrator still running after {timeout} s:\n{self.stderr()[-3000:]}"
            ) from None


# --------------------------------------------------------------------------------------------
# Consul on a port of the test's choosing (to restart "the same" Consul, or to start one where
# an agent is already knocking)


def start_consul_at(
    data_root: Path,
    http_port: int,
    *,
    config: Mapping[str, Any] | None = None,
    node_name: str = "consul-test",
    token: str | None = None,
    timeout: float = CONSUL_START_TIMEOUT,
) -> ConsulAgent:
    """A fresh `consul agent -dev` (no state) whose HTTP API listens on `http_port`."""
    consul_bin = find_consul_bin()
    assert consul_bin, "no consul binary: set CONSUL_BIN"
    data_root.mkdir(parents=True, exist_ok=True)
    run_dir = data_root / f"run-{secrets.token_hex(3)}"
    (run_dir / "data").mkdir(parents=True)
    config_path = None
    if config is not None:
        config_path = run_dir / "config.json"
        config_path.write_text(json.dumps(config))
    dns, grpc, serf, server = free_ports(4)
    ports = {"http": http_port, "dns": dns, "grpc": grpc, "serf_lan": serf, "server": server}
    command = _consul_command(consul_bin, ports, run_dir / "data", node_name, config_path, ())
    log_path = run_dir / "consul.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    agent = ConsulAgent(
        http_addr=f"127.0.0.1:{http_port}",
        http_port=http_port,
        dns_port=dns,
        grpc_port=grpc,
        log_path=log_path,
        process=process,
        node_name=node_name,
        token=token,
    )
    deadline = time.monotonic() + timeout
    while agent.is_running() and time.monotonic() < deadline:
        if agent.leader():
            return agent
        time.sleep(0.05)
    agent.stop()
    raise RuntimeError(f"consul on port {http_port} did not start:\n{agent.log_tail()}")


def kill_consul(agent: ConsulAgent) -> None:
    """Ends the agent process (SIGTERM, then SIGKILL): its port refuses connections after."""
    agent.stop(timeout=5)


# --------------------------------------------------------------------------------------------
# What Consul holds for a set of containers


@dataclass(frozen=True)
class Tally:
    """How the services one agent node owns compare with the containers that should have them."""

    expected: int  # containers that should have a service
    registered: int  # of those, how many have exactly one
    lost: int  # running containers without a service
    stale: int  # services of containers that are not running (or no longer exist)
    duplicates: int  # extra services for a container beyond the first

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.stale == 0 and self.duplicates == 0


def owned_services(consul: ConsulAgent, node: str) -> dict[str, dict[str, Any]]:
    return {
        sid: entry
        for sid, entry in consul.services().items()
        if (entry.get("Meta") or {}).get(META_NODE) == node and not entry.get("Kind")
    }


def services_of(consul: ConsulAgent, node: str, container_id: str) -> dict[str, dict[str, Any]]:
    """The services `node` registered for one container (never those of other containers,
    which other test sessions on the same engine may be running)."""
    return {
        sid: entry
        for sid, entry in owned_services(consul, node).items()
        if (entry.get("Meta") or {}).get(META_CONTAINER) == container_id
    }


def tally(consul: ConsulAgent, node: str, running: Iterable[str], mine: Iterable[str]) -> Tally:
    """Compare Consul with `running` (container ids that should be registered); only services
    of containers in `mine` count, so containers of other sessions on the engine are ignored."""
    running_ids = set(running)
    mine_ids = set(mine) | running_ids
    per_container: dict[str, int] = {}
    for entry in owned_services(consul, node).values():
        container = str((entry.get("Meta") or {}).get(META_CONTAINER))
        if container in mine_ids:
            per_container[container] = per_container.get(container, 0) + 1
    lost = sum(1 for cid in running_ids if cid not in per_container)
    stale = sum(n for cid, n in per_container.items() if cid not in running_ids)
    duplicates = sum(n - 1 for cid, n in per_container.items() if cid in running_ids and n > 1)
    return Tally(
        expected=len(running_ids),
        registered=sum(1 for cid in running_ids if per_container.get(cid) == 1),
        lost=lost,
        stale=stale,
        duplicates=duplicates,
    )


def wait_exact(
    consul: ConsulAgent,
    node: str,
    running: Iterable[str] | Callable[[], Iterable[str]],
    mine: Iterable[str],
    timeout: float = 30.0,
    interval: float = 0.1,
) -> tuple[float, Tally]:
    """Polls until Consul holds exactly `running` (a set, or a function giving the current
    one); returns (seconds it took, final tally). Raises AssertionError with the last tally
    on timeout."""
    mine_ids = set(mine)
    started = time.monotonic()
    last: Tally | str = "never read"
    while True:
        try:
            running_ids = set(running() if callable(running) else running)
            last = tally(consul, node, running_ids, mine_ids)
            if last.exact:
                return time.monotonic() - started, last
        except OSError as err:  # Consul still starting
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() - started > timeout:
            raise AssertionError(f"Consul did not converge within {timeout} s: {last}")
        time.sleep(interval)
