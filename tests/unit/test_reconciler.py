"""The Reconciler against in-memory fakes of our Docker and Consul clients (tests/unit/fakes.py).

Each test drives one situation the integration suite can only hit by luck of timing: calls held
in flight with gates, outages switched on and off. All of them together run in about a second.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from registrator.model import META_CONTAINER
from registrator.reconciler import Reconciler
from registrator.settings import DeregisterMode
from tests.unit.builders import make_context
from tests.unit.fakes import NODE, A, B, FakeConsul, FakeDocker, sid, until


def reconciler(docker: FakeDocker, consul: FakeConsul, **options: object) -> Reconciler:
    return Reconciler(docker, consul, make_context(node=NODE, **options))


async def test_event_storm_is_coalesced_into_one_more_reconcile(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    docker.gates.close("inspect")
    for _ in range(100):
        r.mark(A)
    await docker.gates.entered["inspect"].wait()
    for _ in range(100):
        r.mark(A)
    docker.gates.open("inspect")
    await r.idle()
    # The first reconcile, then one for every mark that arrived while it ran.
    assert docker.calls["inspect"] == 2
    assert consul.registers == [sid("web")]
    assert r.stats.container_reconciles == 2


async def test_storm_over_many_containers_registers_each_once(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    ids = [f"{n:064x}" for n in range(200)]
    for n, container_id in enumerate(ids):
        docker.run(container_id, f"web-{n}")
    r = reconciler(docker, consul)
    for container_id in ids * 3:
        r.mark(container_id)
    await r.idle()
    assert sorted(consul.registers) == sorted(sid(f"web-{n}") for n in range(200))
    assert len(r.owned_service_ids()) == 200


async def test_container_removed_while_its_inspect_is_in_flight(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    docker.gates.close("inspect")
    r.mark(A)  # "start"
    await docker.gates.entered["inspect"].wait()
    docker.remove(A)
    r.mark(A)  # "destroy", while the first inspect still carries the running container
    docker.gates.open("inspect")
    await r.idle()
    assert consul.entries == {}
    assert r.held == {}
    assert r.registered == {}


async def test_resync_listing_consul_while_a_registration_is_in_flight(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    consul.gates.close("register")
    r.mark(A)
    await consul.gates.entered["register"].wait()
    full = asyncio.create_task(r.full_reconcile())
    # The resync lists Consul (without the service) while the registration is in flight.
    await until(lambda: consul.calls.get("services") == 1, "the resync's listing")
    consul.gates.open("register")
    assert await full
    await r.idle()
    # Neither removed as "not in the listing" nor written twice.
    assert consul.registers == [sid("web")]
    assert consul.deregisters == []
    assert set(r.held[A]) == {sid("web")}
    # The next resync, listed after the write, changes nothing.
    assert await r.full_reconcile()
    assert consul.registers == [sid("web")]


async def test_contested_id_stays_with_its_holder_then_changes_hands_at_once(
    docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    docker.run(A, "first", labels={"SERVICE_ID": "shared"})
    docker.run(B, "second", labels={"SERVICE_ID": "shared"})
    r = reconciler(docker, consul)
    with caplog.at_level(logging.WARNING):
        await r.reconcile_container(A)
        for _ in range(3):
            await r.reconcile_container(B)
    assert consul.registers == ["shared"]
    assert consul.entries["shared"]["Meta"][META_CONTAINER] == A
    skipped = [m for m in caplog.messages if "already registered for container first" in m]
    assert len(skipped) == 1, "a contested id is reported once, not on every reconcile"

    # Released: the waiting container takes the id at once, not at the next resync.
    docker.remove(A)
    await r.reconcile_container(A)
    await r.idle()
    assert consul.entries["shared"]["Meta"][META_CONTAINER] == B
    assert consul.registers == ["shared", "shared"]


@pytest.mark.parametrize(
    ("mode", "exit_code", "kept"),
    [
        pytest.param(DeregisterMode.ON_SUCCESS, 1, True, id="on-success: failure keeps"),
        pytest.param(DeregisterMode.ON_SUCCESS, 0, False, id="on-success: success removes"),
        pytest.param(DeregisterMode.ALWAYS, 1, False, id="always: failure removes"),
    ],
)
async def test_stopped_container(
    docker: FakeDocker, consul: FakeConsul, mode: DeregisterMode, exit_code: int, kept: bool
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul, deregister=mode)
    await r.reconcile_container(A)
    docker.exit(A, exit_code)
    await r.reconcile_container(A)
    assert await r.full_reconcile()  # a resync agrees with the event-driven reconcile
    assert (sid("web") in consul.entries) is kept
    assert consul.deregisters == ([] if kept else [sid("web")])


async def test_consul_outage_and_recovery(
    docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    consul.down = True
    with caplog.at_level(logging.DEBUG):
        assert not await r.full_reconcile()
        assert not await r.full_reconcile()
        assert not r.consul_up and r.retry_needed
        down = [rec for rec in caplog.records if "looks unreachable" in rec.getMessage()]
        assert [rec.levelname for rec in down] == ["ERROR"], "one line per outage"
        consul.down = False
        assert await r.full_reconcile()
    assert r.consul_up and not r.retry_needed
    assert caplog.messages.count("Consul reachable again") == 1
    assert list(consul.entries) == [sid("web")]
    assert r.stats.errors["consul"] == 2


async def test_registration_failing_mid_outage_is_retried_by_the_next_resync(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    assert await r.full_reconcile()
    docker.run(B, "api")
    consul.down = True
    await r.reconcile_container(B)
    assert r.retry_needed
    consul.down = False
    assert await r.full_reconcile()
    assert set(consul.entries) == {sid("web"), sid("api")}


async def test_docker_outage_leaves_consul_alone(docker: FakeDocker, consul: FakeConsul) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    assert await r.full_reconcile()
    docker.down = True
    assert not await r.full_reconcile()
    r.mark(A)
    await r.idle()
    assert list(consul.entries) == [sid("web")]
    assert not r.status.up("docker")
    docker.down = False
    r.mark(A)  # the next Docker answer, even a single inspect, ends the outage
    await r.idle()
    assert r.status.up("docker")
    assert await r.full_reconcile()
    assert consul.deregisters == []


async def test_deregister_all_removes_every_owned_service(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    docker.run(B, "api")
    r = reconciler(docker, consul)
    assert await r.full_reconcile()
    await r.deregister_all()
    assert consul.entries == {} and r.owned_service_ids() == []


async def test_drain_and_undrain(docker: FakeDocker, consul: FakeConsul) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    await r.reconcile_container(A)
    assert await r.drain(A, "1") is None  # SIGHUP: a reload, not a stop
    assert await r.drain(A, "15") == 15.0  # its stop signal: docker stop's 10 s + grace
    await r.undrain_if_running(A)  # survived its stop signal
    docker.exit(A, 143)
    assert await r.drain(A, "15") is None  # already stopped: deregistered, nothing to drain
    await r.undrain_if_running(A)  # stopped: left alone until deregistered
    assert consul.maintenance == [(sid("web"), True), (sid("web"), False)]


async def test_kept_container_is_never_passing(docker: FakeDocker, consul: FakeConsul) -> None:
    docker.run(A, "web", labels={"SERVICE_CHECK_SCRIPT": "true"})
    r = reconciler(docker, consul, deregister=DeregisterMode.ON_SUCCESS, ttl=20)
    await r.reconcile_container(A)
    heartbeat = f"service:{sid('web')}:registrator-ttl"
    script = f"service:{sid('web')}:script"
    await r.heartbeat_ttl()
    await until(lambda: (script, "passing", "ok") in consul.check_updates, "a script run")
    assert r.checks.scripts_running() == {sid("web")}

    docker.exit(A, 3)
    await r.reconcile_container(A)
    sent = len(consul.check_updates)
    await r.heartbeat_ttl()
    await asyncio.sleep(0.01)
    assert sid("web") in consul.entries, "kept: -deregister on-success"
    assert r.checks.scripts_running() == set(), "no script runs in a stopped container"
    latest = {check_id: (status, output) for check_id, status, output in consul.check_updates}
    assert latest[heartbeat][0] == latest[script][0] == "critical"
    assert latest[heartbeat][1] == "container exited with code 3 at 2026-11-30T03:04:05Z"
    assert len(consul.check_updates) == sent, "no heartbeat, no script result after the exit"
    # A resync says the same thing once, not again.
    assert await r.full_reconcile()
    assert len(consul.check_updates) == sent


async def test_event_driven_first_write_asks_consul_and_a_foreign_holder_wins(
    docker: FakeDocker, consul: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    consul.entries["db-manual"] = {
        "ID": "db-manual",
        "Service": "db",
        "Address": "192.0.2.71",
        "Port": 4711,
        "Meta": {"owner": "ops"},
    }
    docker.run(A, "web", labels={"SERVICE_ID": "db-manual", "SERVICE_NAME": "db"})
    r = reconciler(docker, consul)
    with caplog.at_level(logging.WARNING):
        r.mark(A)
        await r.idle()
        await r.full_reconcile()
        await r.full_reconcile()
    assert consul.registers == []
    assert consul.entries["db-manual"]["Meta"] == {"owner": "ops"}
    held_by_ops = [m for m in caplog.messages if "Consul already holds it" in m]
    assert held_by_ops == [
        "container web: service id 'db-manual': Consul already holds it for a registration "
        f"not made by registrator (Meta owner=ops), not for registrator on node {NODE!r}; "
        "not taken over, registered once that entry is gone"
    ]
    # Removed by its owner: the next full reconcile registers ours, without a look-up.
    del consul.entries["db-manual"]
    looked_up = consul.calls["service"]
    await r.full_reconcile()
    assert consul.registers == ["db-manual"]
    assert consul.calls["service"] == looked_up
    # Our container removed: ours is deregistered.
    docker.remove(A)
    r.mark(A)
    await r.idle()
    assert consul.deregisters == ["db-manual"]


async def test_unchanged_full_reconcile_and_known_ids_cost_no_look_up(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    r = reconciler(docker, consul)
    r.mark(A)
    await r.idle()
    assert consul.calls["service"] == 1  # the first write of the id
    await r.full_reconcile()
    r.mark(A)
    await r.idle()
    await r.full_reconcile()
    assert consul.calls["service"] == 1
    assert consul.registers == [sid("web")]


async def test_unchanged_resync_writes_nothing(docker: FakeDocker, consul: FakeConsul) -> None:
    labels = {"SERVICE_CHECK_SCRIPT": "true", "SERVICE_CHECK_TCP": "true"}
    docker.run(A, "web", labels=labels)
    docker.run(B, "api")
    docker.documents[B]["State"]["Health"] = {"Status": "healthy", "Log": []}
    r = reconciler(docker, consul, ttl=20)
    assert await r.full_reconcile()
    await until(lambda: consul.calls.get("update_check", 0) >= 2, "mirror and script results")
    await r.close()  # the script loop, which reports on its own schedule
    writes, inspects = consul.writes, docker.calls["inspect"]
    for _ in range(3):
        assert await r.full_reconcile()
    assert consul.writes == writes
    # B has a HEALTHCHECK: its health is not in the list and not every engine sends health
    # events, so it is looked at at every resync; A, without one, is not inspected again.
    assert docker.calls["inspect"] == inspects + 3, "only the HEALTHCHECK container again"


async def test_reregistration_keeps_maintenance_ours_and_operators(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    docker.run(B, "api")
    r = reconciler(docker, consul)
    await r.reconcile_container(A)
    await r.reconcile_container(B)
    await r.drain(A, "15")
    await consul.service_maintenance(sid("api"), True, "operator: disk swap")
    # New labels: both are re-registered with ?replace-existing-checks, which drops them.
    docker.run(A, "web", labels={"SERVICE_TAGS": "v2"})
    docker.run(B, "api", labels={"SERVICE_TAGS": "v2"})
    await r.reconcile_container(A)
    await r.reconcile_container(B)
    assert consul.registers.count(sid("web")) == 2
    assert consul.in_maintenance == {
        sid("web"): "registrator: container is stopping",
        sid("api"): "operator: disk swap",
    }


async def test_first_full_reconcile_lifts_only_the_drains_a_previous_run_left(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "web")
    docker.run(B, "api")
    previous = reconciler(docker, consul)
    await previous.full_reconcile()
    await previous.drain(A, "15")  # ... and the agent restarts before lifting it
    await consul.service_maintenance(sid("api"), True, "operator: disk swap")
    await reconciler(docker, consul).full_reconcile()
    assert consul.in_maintenance == {sid("api"): "operator: disk swap"}


async def test_owner_events_replan_the_containers_sharing_its_stack(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    docker.run(A, "app")
    docker.run(B, "metrics", labels={"SERVICE_PORT": "80"})
    side = docker.documents[B]
    side["HostConfig"]["NetworkMode"] = f"container:{A}"
    side["NetworkSettings"].update(Ports={}, Networks={})
    side["Config"]["ExposedPorts"] = {}
    side["State"]["StartedAt"] = "2026-11-28T03:59:00Z"  # after the owner
    r = reconciler(docker, consul)
    await r.full_reconcile()
    # Reached where its owner publishes 80: the same host port (only the owner can publish).
    assert consul.entries[sid("metrics")]["Port"] == 8080
    docker.exit(A, 0)
    r.mark(A)  # the owner's `die`: nothing happened to the sidecar itself
    await r.idle()
    assert sid("metrics") not in consul.entries


async def test_kept_container_that_fails_again_is_critical_again(
    docker: FakeDocker, consul: FakeConsul
) -> None:
    """Once the container runs again nothing of its `exited` check is kept in memory, and a
    second failure is reported critical again."""
    docker.run(A, "web")
    r = reconciler(docker, consul, deregister=DeregisterMode.ON_SUCCESS)
    await r.reconcile_container(A)
    exited = f"service:{sid('web')}:exited"

    def exited_updates() -> list[str]:
        return [status for check_id, status, _ in consul.check_updates if check_id == exited]

    docker.exit(A, 3)
    await r.reconcile_container(A)
    assert exited_updates() == ["critical"]

    docker.run(A, "web")  # started again: registered without the exited check
    await r.reconcile_container(A)
    assert exited not in r.checks._sent, "the exited check's last status is not kept"
    docker.exit(A, 3)
    await r.reconcile_container(A)
    assert exited_updates() == ["critical", "critical"]
