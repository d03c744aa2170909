"""Reliability under faults: the real CLI, a real Consul, the real Docker engine.

Each scenario measures how long the agent takes to converge after the fault ends and how far
Consul is from the truth at that point (lost, stale and duplicate services), plus the writes it
sent; the figures are appended to docs/reliability.md by the `reliability_report` fixture.

Sizes are the issue's: up to 100 start/stop operations during a 30 s Consul outage, and a storm
of 200 containers. REGISTRATOR_FAULT_SCALE=small (30 operations, 10 s, 60 containers) gives a
quicker run while iterating; the document names the sizes next to the figures.

Other test sessions may run containers on the same engine at any time and every agent here
registers those too, so assertions (and lost/stale/duplicate counts) only look at this test's
own containers, and every agent runs under a `-node` of its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import os
import platform
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors
import pytest
from docker.models.containers import Container

from bench.docker_proxy import ThreadedDockerProxy
from tests.conftest import StartProcess
from tests.helpers import ConsulAgent, ContainerFactory, docker_socket, free_port, wait_until
from tests.helpers_cli import (
    REPO,
    RegistratorProcess,
    Tally,
    kill_consul,
    start_consul_at,
    tally,
    unique_node,
    wait_exact,
)

_SMALL = os.environ.get("REGISTRATOR_FAULT_SCALE", "") == "small"
CHURN_OPS = 30 if _SMALL else 100
OUTAGE_SECONDS = 10.0 if _SMALL else 30.0
STORM_N = int(os.environ.get("REGISTRATOR_STORM_N", "60" if _SMALL else "200"))
# The bound: converged within 5 s of Consul being back.
CONVERGE_AFTER_OUTAGE = 5.0
REPORT_PATH = REPO / "docs" / "reliability.md"


# --------------------------------------------------------------------------------------------
# The report


@dataclass
class Result:
    scenario: str
    size: str
    converge_seconds: float
    final: Tally
    writes: int
    notes: str = ""


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> None:
        self.results.append(result)


INTRO = """\
# Reliability

Figures from `tests/integration/test_faults.py`, which runs the real `registrator` command
against a real Consul agent (`consul agent -dev`, 1.14) and the real Docker engine, breaks
something while containers come and go, and measures the way back. The test file rewrites the
table below on every run; rows of scenarios that did not run keep their last figures.

- **converge**: seconds from the end of the fault (Consul answering again, the agent
  restarted, the last storm operation) until Consul holds exactly one service per running
  container of the test and nothing else of it.
- **lost / stale / duplicates**: when converged (so 0 if the test passed) — running
  containers without a service, services of containers that are gone or stopped, extra
  services of one container. The test fails if convergence does not happen in time.
- **writes**: write requests the agent sent to Consul over the scenario
  (`registrator_consul_writes_total`); they include services of other containers on the
  shared engine, so they are an upper bound.

Sizes are the issue's: up to 100 start/stop operations (fewer when the engine is slow: the
churn stops when the outage ends; the table shows how many ran) during a 30 s Consul outage,
and a storm of 200 containers (`REGISTRATOR_FAULT_SCALE=small` runs 30, 10 s and 60 for quick
iterations; the size column says which ran). The Docker daemon is not restarted (other test
sessions may share it); the "dockerd goes away" scenario puts a proxy between the agent and the
Docker socket and takes the proxy down instead.
"""
TABLE_START = "<!-- results:start -->"
TABLE_END = "<!-- results:end -->"
HEADER = (
    "| scenario | size | converge (s) | lost | stale | duplicates | writes | notes |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _row(result: Result) -> str:
    t = result.final
    return (
        f"| {result.scenario} | {result.size} | {result.converge_seconds:.2f} | {t.lost} "
        f"| {t.stale} | {t.duplicates} | {result.writes} | {result.notes} |"
    )


def _existing_rows(text: str) -> dict[str, str]:
    block = text.partition(TABLE_START)[2].partition(TABLE_END)[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0] not in {"scenario", "---"}:
            rows[cells[0]] = line
    return rows


def write_report(report: Report, path: Path = REPORT_PATH) -> None:
    try:
        previous = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError:
        previous = ""
    rows = _existing_rows(previous)
    for result in report.results:
        rows[result.scenario] = _row(result)
    stamp = (
        f"Last run: {datetime.date.today().isoformat()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}."
    )
    text = (
        f"{INTRO}\n{stamp}\n\n{TABLE_START}\n{HEADER}\n"
        + "\n".join(rows.values())
        + f"\n{TABLE_END}\n"
    )
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:  # a read-only checkout must not fail the suite
        print(f"could not write {path}: {err}")


@pytest.fixture(scope="session")
def reliability_report() -> Iterator[Report]:
    report = Report()
    yield report
    # docs/reliability.md documents the reference engine (the docker20 lane); the other lanes
    # run a few of these scenarios for coverage, not for the figures.
    if report.results and os.environ.get("REGISTRATOR_TEST_ENGINE", "docker20") == "docker20":
        write_report(report)


# --------------------------------------------------------------------------------------------
# Containers


FLEET_LABEL = "registrator-test.fleet"


class Fleet:
    """This test's containers, started and stopped from any thread.

    What should be registered is asked of Docker (`ids`), not kept by hand: another test
    session's clean-up may remove a container of ours at any moment, and then the agent is
    right to deregister it.
    """

    def __init__(self, factory: ContainerFactory, service: str) -> None:
        self.factory = factory
        self.labels = {"SERVICE_NAME": service, "SERVICE_PORT": "80", FLEET_LABEL: service}
        self.lock = threading.Lock()
        self.running: dict[str, Container] = {}
        self.all_ids: set[str] = set()

    def start(self, **labels: str) -> Container:
        container = self.factory.run("f", labels={**self.labels, **labels})
        with self.lock:
            self.running[container.id] = container
            self.all_ids.add(container.id)
        return container

    def _take_oldest(self) -> Container | None:
        with self.lock:
            if not self.running:
                return None
            container_id = next(iter(self.running))
            return self.running.pop(container_id)

    def stop_oldest(self) -> None:
        container = self._take_oldest()
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.stop(timeout=2)

    def remove_oldest(self) -> None:
        container = self._take_oldest()
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)

    def churn(self, ops: int, pause: float = 0.05, until: float | None = None) -> int:
        """Up to `ops` operations (starts, stops and removals in turn), stopping early at the
        monotonic time `until` (a loaded Docker engine can take seconds per container);
        returns how many were done."""
        for index in range(ops):
            if until is not None and time.monotonic() >= until:
                return index
            step = index % 4
            if step in (0, 2):
                self.start()
            elif step == 1:
                self.stop_oldest()
            else:
                self.remove_oldest()
            time.sleep(pause)
        return ops

    def ids(self) -> set[str]:
        """The fleet's running containers, as Docker sees them now."""
        listed = self.factory.client.containers.list(
            filters={"label": f"{FLEET_LABEL}={self.labels[FLEET_LABEL]}", "status": "running"}
        )
        return {container.id for container in listed}


class Background:
    """Runs `work` in a thread while the test breaks something; `join` re-raises its error
    and returns its result."""

    def __init__(self, work: Callable[[], int]) -> None:
        self._work = work
        self.result = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.result = self._work()
        except BaseException as err:  # handed to the test thread by join()
            self._error = err

    def join(self, timeout: float = 120.0) -> int:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background work did not finish"
        if self._error is not None:
            raise self._error
        return self.result


def status_of(agent: RegistratorProcess) -> int:
    answer = agent.health()
    return answer[0] if answer else 0


def consul_lines(agent: RegistratorProcess, port: int) -> list[str]:
    """Warnings and errors about the Consul on `port` (its address is in every such line)."""
    return [
        line
        for line in agent.lines()
        if (" ERROR " in line or " WARNING " in line) and f":{port}" in line
    ]


# --------------------------------------------------------------------------------------------
# Scenarios


def test_consul_unreachable_during_churn_converges_and_logs_state_changes_only(
    tmp_path: Path,
    containers: ContainerFactory,
    start_process: StartProcess,
    reliability_report: Report,
) -> None:
    port = free_port()
    consul = start_consul_at(tmp_path / "consul", port)
    node = unique_node()
    agent = start_process(
        "-resync", "2", node=node, consul=f"consul://127.0.0.1:{port}", wait=False
    )
    try:
        agent.wait_ready()
        fleet = Fleet(containers, f"outage-{node}")
        for _ in range(4):
            fleet.start()
        wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=15)
        writes_before = agent.consul_writes()

        churn_until = time.monotonic() + 0.5 + OUTAGE_SECONDS - 1.0
        churn = Background(lambda: fleet.churn(CHURN_OPS, until=churn_until))
        time.sleep(0.5)
        kill_consul(consul)
        down_at = time.monotonic()
        ops = churn.join()
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        wait_until(
            lambda: status_of(agent) == 503,
            timeout=5,
            message="/health did not turn 503 while Consul was down",
        )
        consul = start_consul_at(tmp_path / "consul", port)
        back_at = time.monotonic()
        outage = back_at - down_at
        _, final = wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=30)
        converge = time.monotonic() - back_at
        wait_until(agent.is_ready, timeout=5, message="/health did not return to 200")
        writes = agent.consul_writes() - writes_before

        down_lines = consul_lines(agent, port)
        again = agent.lines_with("Consul reachable again")
        reliability_report.add(
            Result(
                "Consul unreachable (killed, restarted empty on the same port)",
                f"{ops} start/stop ops, {outage:.0f} s outage, -resync 2",
                converge,
                final,
                writes,
                f"{len(down_lines)} error line(s) while down, {len(again)} when back",
            )
        )
        assert converge <= CONVERGE_AFTER_OUTAGE, f"converged {converge:.1f} s after Consul"
        assert len(down_lines) == 1, "one line per state change, not per retry:\n" + "\n".join(
            down_lines
        )
        assert "unreachable" in down_lines[0]
        assert len(again) == 1, agent.stderr()[-3000:]
    finally:
        consul.stop()


def test_consul_restarted_without_state_is_refilled_within_one_resync(
    tmp_path: Path,
    containers: ContainerFactory,
    start_process: StartProcess,
    reliability_report: Report,
) -> None:
    resync = 2
    port = free_port()
    consul = start_consul_at(tmp_path / "consul", port)
    node = unique_node()
    agent = start_process(
        "-resync", str(resync), node=node, consul=f"consul://127.0.0.1:{port}", wait=False
    )
    try:
        agent.wait_ready()
        fleet = Fleet(containers, f"amnesia-{node}")
        for _ in range(5):
            fleet.start()
        wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=15)
        writes_before = agent.consul_writes()

        kill_consul(consul)
        consul = start_consul_at(tmp_path / "consul", port)
        back_at = time.monotonic()
        _, final = wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=resync + 10)
        converge = time.monotonic() - back_at
        writes = agent.consul_writes() - writes_before
        reliability_report.add(
            Result(
                "Consul restarted without state",
                f"5 containers, -resync {resync}",
                converge,
                final,
                writes,
                "re-registered by the next resync",
            )
        )
        # One resync interval, plus the reconcile itself on a busy runner.
        assert converge <= resync + 1.5, f"took {converge:.1f} s with -resync {resync}"
    finally:
        consul.stop()


def test_agent_sigkilled_mid_churn_converges_without_duplicates(
    containers: ContainerFactory,
    consul_factory: Callable[..., ConsulAgent],
    start_process: StartProcess,
    reliability_report: Report,
) -> None:
    consul = consul_factory()
    node = unique_node()
    address = f"consul://{consul.http_addr}"
    # -resync 0: whatever the restarted agent fixes, it fixes at startup, not on a timer.
    first = start_process("-resync", "0", node=node, consul=address)
    fleet = Fleet(containers, f"sigkill-{node}")
    for _ in range(6):
        fleet.start()
    wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=15)
    writes_first = first.consul_writes()

    churn = Background(lambda: fleet.churn(20, until=time.monotonic() + 12))
    time.sleep(1.0)
    first.kill()  # SIGKILL: no shutdown, no deregistration
    ops = churn.join()
    # Containers that died while no agent ran still hold services: the restart must find them.
    assert tally(consul, node, fleet.ids(), fleet.all_ids).stale > 0

    second = start_process("-resync", "0", node=node, consul=address, wait=False)
    restarted_at = time.monotonic()
    _, final = wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=20)
    converge = time.monotonic() - restarted_at
    second.wait_ready()
    writes = writes_first + second.consul_writes()
    reliability_report.add(
        Result(
            "agent SIGKILLed mid-churn, restarted",
            f"6 containers + {ops} start/stop ops",
            converge,
            final,
            writes,
            "from the new process's start, so its startup is included",
        )
    )
    assert final.exact


def test_event_storm_ends_in_the_exact_state(
    containers: ContainerFactory,
    consul_factory: Callable[..., ConsulAgent],
    start_process: StartProcess,
    reliability_report: Report,
) -> None:
    consul = consul_factory()
    node = unique_node()
    # -resync 0: events alone must get every container right.
    agent = start_process("-resync", "0", node=node, consul=f"consul://{consul.http_addr}")
    fleet = Fleet(containers, f"storm-{node}")

    def one(index: int) -> None:
        container = fleet.start()
        kind = index % 5
        if kind == 3:  # start and die in quick succession
            with fleet.lock:
                fleet.running.pop(container.id, None)
            container.remove(force=True)
        elif kind == 4:  # bounce: stop, start again right away
            container.stop(timeout=1)
            container.start()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(one, range(STORM_N)))
    up_done = time.monotonic()
    _, up_final = wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=60)
    up_converge = time.monotonic() - up_done

    def remove(container: Container) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)

    writes = agent.consul_writes()
    running = list(fleet.running.values())
    fleet.running.clear()
    removal_started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(remove, running))
    down_done = time.monotonic()
    _, down_final = wait_exact(consul, node, set(), fleet.all_ids, timeout=60)
    down_converge = time.monotonic() - down_done
    reliability_report.add(
        Result(
            "event storm: start (incl. start+die, stop+start)",
            f"{STORM_N} containers, 6 at a time, -resync 0",
            up_converge,
            up_final,
            writes,
            f"{len(running)} left running; storm took {up_done - started:.1f} s",
        )
    )
    reliability_report.add(
        Result(
            "event storm: remove all",
            f"{len(running)} containers, 6 at a time, -resync 0",
            down_converge,
            down_final,
            agent.consul_writes() - writes,
            f"removal took {down_done - removal_started:.1f} s",
        )
    )
    assert up_final.exact and down_final.exact


def test_rejected_registration_skips_only_that_service_and_is_logged_once(
    containers: ContainerFactory,
    consul_factory: Callable[..., ConsulAgent],
    start_process: StartProcess,
    reliability_report: Report,
) -> None:
    consul = consul_factory()
    node = unique_node()
    agent = start_process("-resync", "1", node=node, consul=f"consul://{consul.http_addr}")
    good = containers.run("good", labels={"SERVICE_NAME": f"good-{node}", "SERVICE_PORT": "80"})
    # Consul 1.14 answers 400 "upstreams cannot contain duplicates": a rule only Consul knows
    # (a zero check interval, which it also refuses, is caught by the planner since issue 12).
    bad = containers.run(
        "bad",
        labels={
            "SERVICE_NAME": f"bad-{node}",
            "SERVICE_PORT": "80",
            "SERVICE_CONNECT": "sidecar",
            "SERVICE_CONNECT_UPSTREAMS": "a:19001,b:19001",
        },
    )
    started = time.monotonic()
    wait_exact(consul, node, {good.id}, {good.id, bad.id}, timeout=15)
    converge = time.monotonic() - started

    def rejections() -> list[str]:
        return agent.lines_with("Consul rejected", bad.name)

    wait_until(rejections, timeout=10, message="the rejection was not logged")
    fulls_before = agent.metrics()['registrator_reconciles_total{scope="full"}']
    time.sleep(3.5)
    fulls = agent.metrics()['registrator_reconciles_total{scope="full"}'] - fulls_before
    lines = rejections()
    assert fulls >= 3, f"only {fulls} resyncs in 3.5 s with -resync 1"
    assert len(lines) == 1, "\n".join(lines)
    # Consul's reason goes on over more lines ("upstreams cannot contain duplicates").
    assert "HTTP 400: Failed Validation" in lines[0], lines[0]
    final = tally(consul, node, {good.id}, {good.id, bad.id})
    assert final.exact
    reliability_report.add(
        Result(
            "Consul rejects one registration (HTTP 400)",
            f"1 good + 1 bad container, {fulls:.0f} resyncs watched",
            converge,
            final,
            agent.consul_writes(),
            f"rejection logged {len(lines)} time(s), never resent unchanged",
        )
    )


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="rt-", dir="/tmp") as path:
        yield Path(path)


@pytest.mark.podman_core
def test_docker_going_away_and_back_is_followed_by_a_full_catch_up(
    short_tmp: Path,
    containers: ContainerFactory,
    consul_factory: Callable[..., ConsulAgent],
    start_process: StartProcess,
    reliability_report: Report,
) -> None:
    consul = consul_factory()
    node = unique_node()
    proxy = ThreadedDockerProxy(short_tmp / "docker.sock", upstream=docker_socket())
    proxy.start()
    try:
        # -resync 0: only the reconnect itself can catch up with what happened meanwhile.
        agent = start_process(
            "-resync",
            "0",
            node=node,
            consul=f"consul://{consul.http_addr}",
            env={"DOCKER_HOST": proxy.docker_host},
        )
        fleet = Fleet(containers, f"dockerd-{node}")
        for _ in range(4):
            fleet.start()
        wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=15)
        writes_before = agent.consul_writes()

        proxy.stop()  # "dockerd is gone": its socket refuses, the event stream is cut
        down_at = time.monotonic()
        wait_until(
            lambda: status_of(agent) == 503,
            timeout=10,
            message="/health did not report Docker down",
        )
        for _ in range(3):
            fleet.start()
        fleet.stop_oldest()
        fleet.remove_oldest()
        time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))
        proxy.start()
        back_at = time.monotonic()
        _, final = wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=40)
        converge = time.monotonic() - back_at
        wait_until(agent.is_ready, timeout=5, message="/health did not return to 200")
        failures = agent.lines_with("Docker event stream failed")
        reliability_report.add(
            Result(
                "Docker socket gone and back (proxy stopped)",
                f"{back_at - down_at:.0f} s down, 3 started + 2 stopped meanwhile, -resync 0",
                converge,
                final,
                agent.consul_writes() - writes_before,
                "caught up by the reconnect alone; includes event-stream backoff",
            )
        )
        assert len(agent.lines_with("following Docker events")) == 2, agent.stderr()[-3000:]
        assert len(failures) <= 1, "\n".join(failures)
        # The reconnect backoff doubles from 0.5 s; 4 s down means at most ~4 s to wait.
        assert converge <= 10.0
    finally:
        proxy.stop()


def test_report_format_round_trips(tmp_path: Path) -> None:
    """The document keeps rows of scenarios that did not run this time."""
    path = tmp_path / "reliability.md"
    t = Tally(expected=1, registered=1, lost=0, stale=0, duplicates=0)
    write_report(Report([Result("a", "1", 1.0, t, 3), Result("b", "2", 2.0, t, 4)]), path)
    write_report(Report([Result("b", "2", 0.5, t, 1)]), path)
    rows = _existing_rows(path.read_text())
    assert list(rows) == ["a", "b"]
    assert re.search(r"\| b \| 2 \| 0\.50 \|", rows["b"])


def test_resyncs_racing_events_never_repeat_a_change(
    containers: ContainerFactory,
    consul_factory: Callable[..., ConsulAgent],
    start_process: StartProcess,
    reliability_report: Report,
) -> None:
    """A full reconcile lists Consul, then works through the containers; an event-driven
    write in between must not be undone and redone from that older listing (which showed as a
    second "registered"/"deregistered" line for the same change)."""
    consul = consul_factory()
    node = unique_node()
    agent = start_process("-resync", "1", node=node, consul=f"consul://{consul.http_addr}")
    fleet = Fleet(containers, f"race-{node}")
    rounds, per_round = 3, 8
    started = time.monotonic()
    for _ in range(rounds):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            batch = list(pool.map(lambda _: fleet.start(), range(per_round)))
        wait_exact(consul, node, fleet.ids, fleet.all_ids, timeout=15)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda c: c.stop(timeout=2), batch))
        with fleet.lock:
            fleet.running.clear()
        _, final = wait_exact(consul, node, set(), fleet.all_ids, timeout=15)
    time.sleep(1.5)  # one more resync over the final state
    converge = time.monotonic() - started
    repeated = []
    for container_id in fleet.all_ids:
        name = containers.client.containers.get(container_id).name
        for word in ("registered", "deregistered"):
            lines = [
                line
                for line in agent.lines_with(f" {word} ", f"container {name}:")
                if "ERROR" not in line
            ]
            if len(lines) != 1:
                repeated.extend(lines or [f"no {word} line for {name}"])
    reliability_report.add(
        Result(
            "resyncs racing events (start/stop batches, -resync 1)",
            f"{rounds} rounds of {per_round} containers",
            converge,
            final,
            agent.consul_writes(),
            f"{len(repeated)} repeated change line(s); total time, not a convergence delay",
        )
    )
    assert not repeated, "\n".join(repeated)
