"""Self-healing without a resync (issue 13, items 4-8), against the in-memory fakes.

Every agent here runs with `-resync 0`: what converges, converges by itself. Time is scaled:
the Timing's sleep and clock run SCALE times faster than the wall clock, so the default
backoffs and a TTL of seconds play out in milliseconds, and the delays the shell waits are the
real defaults.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from registrator.agent import Agent
from registrator.consul import ConsulClient, ConsulError
from registrator.model import CheckKind, SwarmService
from registrator.option_values import ConsulEndpoint
from registrator.reconciler import Reconciler
from registrator.settings import Settings
from registrator.status import Status
from registrator.swarm_view import IMAGE_PORTS_KEPT, SwarmView
from registrator.timing import Timing
from tests.unit.builders import make_context
from tests.unit.fakes import NODE, A, B, FakeConsul, FakeDocker, sid, until

SCALE = 100.0


async def _scaled_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds / SCALE)


SCALED = Timing(
    shutdown_idle=0.5,
    shutdown_deregister=0.5,
    clock=lambda: time.monotonic() * SCALE,
    sleep=_scaled_sleep,
)

Start = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def start(docker: FakeDocker, consul: FakeConsul) -> AsyncIterator[Start]:
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(**options: object) -> Agent:
        settings = Settings(**{"resync": 0, "retry_interval": 1, "node_ttl": 0, **options})  # type: ignore[arg-type]
        agent = Agent(settings, docker, consul, SCALED)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        running.append((stop, task))
        await until(lambda: agent.ready or task.done(), "the agent to be ready")
        return agent

    yield start
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 2)


def reconciler(docker: FakeDocker, consul: FakeConsul, **options: object) -> Reconciler:
    return Reconciler(docker, consul, make_context(node=NODE, **options), timing=SCALED)


def healthy(docker: FakeDocker, container_id: str, name: str) -> None:
    docker.run(container_id, name)
    docker.documents[container_id]["State"]["Health"] = {
        "Status": "healthy",
        "Log": [{"ExitCode": 0, "Output": "ok"}],
    }


def check_of(r: Reconciler, service_id: str, kind: CheckKind) -> str:
    return next(c.check_id for c in r.registered[service_id].checks if c.kind is kind)


# --- 4: a failed write is retried with backoff, not left for a resync ---------------------


async def test_registration_failed_during_an_event_lands_once_consul_answers(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    consul.down = True
    r.mark(A)
    # The first write of a new id starts with a look-up of who holds it (issue 12 item 4): while
    # Consul is down, that is the call each retry makes.
    await until(lambda: consul.calls.get("service", 0) >= 3, "registration retried")
    consul.down = False
    await until(lambda: sid("web") in consul.entries, "registered after the outage", 5)
    await r.idle()
    attempts = consul.calls["register"]
    await asyncio.sleep(0.2)  # 20 s scaled: nothing left to retry
    assert consul.calls["register"] == attempts
    assert r.stats.full_reconciles == 0
    await r.close()


async def test_deregistration_failed_during_an_event_lands_once_consul_answers(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    await r.reconcile_container(A)
    consul.down = True
    docker.remove(A)
    r.mark(A)
    await until(lambda: consul.calls.get("deregister", 0) >= 2, "deregistration retried")
    consul.down = False
    await until(lambda: not consul.entries, "deregistered after the outage", 5)
    assert r.held == {} and r.registered == {}
    await r.close()


async def test_retry_backoff_grows(docker: FakeDocker, consul: FakeConsul) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    consul.down = True
    r.mark(A)
    await asyncio.sleep(0.5)  # 50 s scaled: 1 + 2 + 4 + 8 + 16 s of backoff, and a bit
    # Doubling from 1 s (plus jitter): 5 or 6 attempts in 50 s, not one a second.
    assert 3 <= consul.calls["service"] <= 7  # the look-up before the first write of an id
    await r.close()


# --- 5: the health mirror is refreshed before its TTL runs out ----------------------------


async def test_long_healthy_container_stays_passing_past_the_mirror_ttl(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    healthy(docker, A, "web")
    r = reconciler(docker, consul, docker_health_ttl=3)
    await r.reconcile_container(A)
    check = check_of(r, sid("web"), CheckKind.DOCKER_HEALTH)
    started = time.monotonic()
    await asyncio.sleep(0.1)  # 10 s scaled: more than three TTLs, and no Docker event
    elapsed = (time.monotonic() - started) * SCALE
    sent = [u for u in consul.check_updates if u[0] == check]
    assert all(status == "passing" for _, status, _ in sent)
    # Refreshed every third of the TTL (1 s): about ten writes in 10 s (fewer on a loaded
    # host, whose sleeps overshoot), never more than one a second.
    assert 4 <= len(sent) <= elapsed + 1
    await r.close()


async def test_mirror_refresh_stops_when_the_container_goes(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    healthy(docker, A, "web")
    r = reconciler(docker, consul, docker_health_ttl=3)
    await r.reconcile_container(A)
    docker.remove(A)
    await r.reconcile_container(A)
    inspects = docker.calls["inspect"]
    await asyncio.sleep(0.05)
    assert docker.calls["inspect"] == inspects, "no refresh of a gone container"
    await r.close()


# --- 6: Consul losing its state is noticed by a TTL update and repaired --------------------


async def test_consul_restarted_without_data_is_repaired_without_resync(
    start: Start, docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    docker.run(A, "web")
    docker.run(B, "api")
    agent = await start(ttl=30, ttl_refresh=10)
    assert set(consul.entries) == {sid("web"), sid("api")}
    with caplog.at_level(logging.INFO):
        consul.lose_state()
        await until(lambda: len(consul.entries) == 2, "services registered again", 5)
    assert agent.reconciler is not None and agent.settings.resync == 0
    lost = [m for m in caplog.messages if "lost its state" in m]
    assert len(lost) == 1, lost
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


# --- 7: state goes with its container ---------------------------------------------------


async def test_container_removed_in_an_outage_then_consul_back_empty_stops_every_loop(
    start: Start, docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    labels = {"SERVICE_CHECK_SCRIPT": "true", "SERVICE_CHECK_INTERVAL": "1s"}
    docker.run(A, "web", labels=labels)
    agent = await start(ttl=30, ttl_refresh=10)
    r = agent.reconciler
    assert r is not None
    await until(lambda: A in docker.execs, "the script ran")
    with caplog.at_level(logging.DEBUG):
        consul.down = True
        docker.remove(A)
        docker.emit("destroy", A)
        await until(lambda: not r.checks.scripts_running(), "script runner stopped")
        consul.lose_state()
        consul.down = False
        await until(lambda: not r.held and not r.registered, "container released", 5)
        execs = len(docker.execs)
        updates = consul.calls.get("update_check", 0)
        await asyncio.sleep(0.2)  # 20 s scaled: 20 script intervals, 2 heartbeats
    assert len(docker.execs) == execs, "no exec into the removed container"
    assert consul.calls.get("update_check", 0) == updates, "no heartbeat for it"
    assert r.ledger.by_container == {} and r.ledger.rejections == {}
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) <= 1, errors  # the one "Consul looks unreachable"


async def test_script_runner_of_a_container_gone_unnoticed_stops_at_the_first_404(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    labels = {"SERVICE_CHECK_SCRIPT": "true", "SERVICE_CHECK_INTERVAL": "1s"}
    docker.run(A, "web", labels=labels)
    r = reconciler(docker, consul)
    await r.reconcile_container(A)
    await until(lambda: A in docker.execs, "the script ran")
    docker.remove(A)  # no event (a missed destroy)
    await until(lambda: not consul.entries, "deregistered after the exec's 404")
    await r.idle()
    assert not r.checks.scripts_running() and r.registered == {}
    assert docker.execs.count(A) >= 1
    execs = len(docker.execs)
    await asyncio.sleep(0.05)
    assert len(docker.execs) == execs
    await r.close()


async def test_rejection_memo_goes_with_its_container(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)

    async def refuse(body: object) -> None:
        raise ConsulError("PUT /v1/agent/service/register: HTTP 400: Invalid check", 400, False)

    consul.register = refuse  # type: ignore[method-assign]
    await r.reconcile_container(A)
    assert sid("web") in r.ledger.rejections
    docker.remove(A)
    await r.reconcile_container(A)
    assert r.ledger.rejections == {} and r.ledger.by_container == {}
    await r.close()


# --- 8: ACL refusals are retried, logged once, and not an outage ---------------------------


async def test_registration_refused_by_acl_lands_after_the_policy_widens(
    docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    consul.forbidden = {"register": (f"{NODE}:web",)}
    with caplog.at_level(logging.DEBUG):
        r.mark(A)
        await until(lambda: consul.calls.get("register", 0) >= 4, "registration retried")
        consul.forbidden = {}  # the operator widened the policy
        await until(lambda: sid("web") in consul.entries, "registered without new labels", 5)
    refused = [rec for rec in caplog.records if "refused the registration" in rec.getMessage()]
    assert len(refused) == 1, "logged once, not once per retry"
    assert not [m for m in caplog.messages if "unreachable" in m]
    assert "Consul accepts service" in caplog.text
    assert r.ledger.refused == {} and r.consul_up
    await r.close()


async def test_listing_refused_by_acl_is_forbidden_not_unreachable(
    docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    consul.forbidden = {"services": ("",)}
    with caplog.at_level(logging.DEBUG):
        assert not await r.full_reconcile()
        assert not await r.full_reconcile()
        state, reason = r.status.state("consul")
        assert state == "forbidden" and "403" in reason
        assert not r.consul_up
        consul.forbidden = {}
        assert await r.full_reconcile()
    assert r.status.state("consul") == ("up", "")
    assert not [m for m in caplog.messages if "unreachable" in m]
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refuses the ACL token" in errors[0].getMessage()
    assert caplog.messages.count("Consul accepts the ACL token again") == 1


async def test_deregistration_refused_by_acl_backs_off_quietly(
    docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    assert await r.full_reconcile()
    consul.forbidden = {"deregister": ("",)}
    docker.remove(A)
    with caplog.at_level(logging.DEBUG):
        # A resync with a refused deregistration is not a failed one: the agent does not
        # run the next full reconcile a few seconds later.
        assert await r.full_reconcile()
        assert not r.retry_needed
        await asyncio.sleep(0.3)  # 30 s scaled
    attempts = consul.calls["deregister"]
    assert 2 <= attempts <= 7, "retried with a doubling backoff, not every second"
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, [rec.getMessage() for rec in errors]
    consul.forbidden = {}
    await until(lambda: not consul.entries, "deregistered once allowed", 5)
    await r.close()


def test_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    client = ConsulClient(ConsulEndpoint("http", "127.0.0.1", 8500), token_file=str(token_file))
    assert client.token() == "first"
    rotated = tmp_path / "token.new"
    rotated.write_text("second\n")
    rotated.replace(token_file)  # the usual rotation: a rename over the old file
    assert client.token() == "second"
    token_file.write_text("")  # a half-written file keeps the token read last
    assert client.token() == "second"
    token_file.unlink()
    assert client.token() == "second"


async def test_image_ports_remembered_for_swarm_vips_are_bounded(docker: FakeDocker) -> None:
    view = SwarmView(docker, Status(), swarm_vip=True, manager_id="m1", in_swarm=True)
    for deploy in range(IMAGE_PORTS_KEPT + 50):  # a new tag at every deploy, no resync
        await view._image_exposed(SwarmService("s1", "web", image=f"web:{deploy}"))
    assert len(view._image_ports) == IMAGE_PORTS_KEPT
    assert f"web:{IMAGE_PORTS_KEPT + 49}" in view._image_ports


async def test_check_update_refused_by_acl_is_logged_once(
    docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    healthy(docker, A, "web")
    r = reconciler(docker, consul, docker_health_ttl=3)
    await r.reconcile_container(A)
    consul.forbidden = {"update_check": ("",)}
    with caplog.at_level(logging.DEBUG):
        await asyncio.sleep(0.05)  # 5 s scaled: several refreshes
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and "HTTP 403" in errors[0].getMessage()
    assert consul.calls["update_check"] >= 3
    await r.close()


async def test_late_update_of_a_service_just_deregistered_is_not_a_lost_state(
    docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    healthy(docker, A, "web")
    r = reconciler(docker, consul)
    requested: list[bool] = []
    r.on_consul_state_lost = lambda: requested.append(True)
    await r.reconcile_container(A)
    check = check_of(r, sid("web"), CheckKind.DOCKER_HEALTH)
    docker.remove(A)
    await r.reconcile_container(A)
    consul.check_ids.clear()
    r.checks.on_unknown_check(check)
    assert requested == [] and "lost its state" not in caplog.text
    await r.close()
