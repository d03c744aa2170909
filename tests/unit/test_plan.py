"""plan.py: every decision the reconciler applies, from tables (no Docker, no Consul)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest

from registrator.connect import sidecar_id
from registrator.model import (
    CheckKind,
    CheckUpdate,
    Container,
    ContainerPort,
    HeldService,
    NetworkAttachment,
    Service,
)
from registrator.payload import held_from_service
from registrator.plan import (
    DRAIN_REASON,
    Holdings,
    Maintenance,
    drain_window,
    drains_on,
    foreign_holders,
    heartbeat_updates,
    keep_maintenance,
    lacks_kill_wrapper,
    maintenance_reasons,
    mirror_health,
    orphans_sidecar,
    plan_container,
    plan_drain,
    plan_shutdown,
    plan_stale_drains,
    plan_undrain,
    probe_command,
    probe_update,
    script_check,
    script_update,
)
from registrator.planner import ContainerPlan, desired_services
from registrator.settings import DeregisterMode
from tests.unit.builders import CONTAINER_ID, make_container, make_context, published

OTHER_ID = "f" * 64


def services_of(container: Container, **options: object) -> tuple[Service, ...]:
    return desired_services(container, make_context(**options)).services


def holding(*services: Service, key: str | None = None) -> dict[str, dict[str, HeldService]]:
    held: dict[str, dict[str, HeldService]] = {}
    for service in services:
        held.setdefault(key or service.container_id, {})[service.id] = held_from_service(service)
    return held


def holdings(held: Mapping[str, Mapping[str, HeldService]], *registered: Service) -> Holdings:
    return Holdings(held, {service.id: service for service in registered})


# --- contested ids ----------------------------------------------------------------------------

SHARED = {"SERVICE_ID": "shared"}


@pytest.mark.parametrize(
    ("holder", "registered_name", "kept", "problem"),
    [
        pytest.param(None, None, True, "", id="nobody holds it: registered"),
        pytest.param(CONTAINER_ID, None, True, "", id="this container holds it: kept"),
        pytest.param(
            OTHER_ID,
            "web-2",
            False,
            "already registered for container web-2; skipped",
            id="another container holds it: waits, named by its container",
        ),
        pytest.param(
            OTHER_ID,
            None,
            False,
            f"already registered for container {OTHER_ID[:12]}; skipped",
            id="holder not registered by this agent run: named by its id",
        ),
    ],
)
def test_contested_id(
    holder: str | None, registered_name: str | None, kept: bool, problem: str
) -> None:
    container = make_container(labels=SHARED)
    held: dict[str, dict[str, HeldService]] = {}
    registered: list[Service] = []
    if holder is not None:
        held = {holder: {"shared": HeldService("shared", holder, "h")}}
    if registered_name is not None:
        other = make_container(id=OTHER_ID, name=registered_name, labels=SHARED)
        registered = list(services_of(other))
    outcome = plan_container(CONTAINER_ID, container, holdings(held, *registered), make_context())
    assert [s.id for s in outcome.services] == (["shared"] if kept else [])
    assert outcome.contested == (() if kept else ("shared",))
    # Held with another hash ("h") by this container: written again, so registered iff kept.
    assert [s.id for s in outcome.plan.register] == (["shared"] if kept else [])
    messages = [p for p in outcome.problems or () if "already registered" in p]
    assert messages == ([] if kept else [f"container web-1: service id 'shared': {problem}"])


# --- a container that stopped -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "exit_code", "kept"),
    [
        pytest.param(DeregisterMode.ALWAYS, 1, False, id="always: exit 1 deregisters"),
        pytest.param(DeregisterMode.ON_SUCCESS, 0, False, id="on-success: exit 0 deregisters"),
        pytest.param(DeregisterMode.ON_SUCCESS, 1, True, id="on-success: exit 1 keeps"),
        pytest.param(DeregisterMode.ON_SUCCESS, 137, False, id="on-success: SIGKILL deregisters"),
    ],
)
def test_stopped_container(mode: DeregisterMode, exit_code: int, kept: bool) -> None:
    running = make_container()
    (service,) = services_of(running)
    stopped = make_container(running=False, exit_code=exit_code)
    outcome = plan_container(
        CONTAINER_ID, stopped, holdings(holding(service), service), make_context(deregister=mode)
    )
    assert outcome.kept is kept
    # Kept: registered again, with its `exited` check (see the table below).
    assert [s.id for s in outcome.plan.register] == ([service.id] if kept else [])
    assert outcome.plan.deregister == (() if kept else (service.id,))


def test_gone_container_deregisters_everything_and_forgets_its_problems() -> None:
    (service,) = services_of(make_container())
    outcome = plan_container(CONTAINER_ID, None, holdings(holding(service)), make_context())
    assert outcome.plan.deregister == (service.id,)
    assert (outcome.problems, outcome.kept, outcome.services) == (None, False, ())


def test_unchanged_container_plans_nothing() -> None:
    container = make_container()
    (service,) = services_of(container)
    outcome = plan_container(
        CONTAINER_ID, container, holdings(holding(service), service), make_context()
    )
    assert outcome.plan.empty and outcome.services == (service,)


# --- Connect sidecars -------------------------------------------------------------------------

SIDECAR = {"SERVICE_CONNECT": "sidecar"}


@pytest.mark.parametrize(
    ("before", "after", "drops"),
    [
        pytest.param(SIDECAR, {}, True, id="sidecar removed from labels: dropped"),
        pytest.param(SIDECAR, {**SIDECAR, "SERVICE_TAGS": "x"}, False, id="sidecar kept"),
        pytest.param(SIDECAR, {"SERVICE_CONNECT": "native"}, True, id="sidecar to native"),
        pytest.param({}, SIDECAR, False, id="sidecar added"),
        pytest.param(None, {}, False, id="first registration"),
    ],
)
def test_orphaned_sidecar(
    before: dict[str, str] | None, after: dict[str, str], drops: bool
) -> None:
    (new,) = services_of(make_container(labels=after))
    old = services_of(make_container(labels=before))[0] if before is not None else None
    assert orphans_sidecar(old, new) is drops
    held = holding(old) if old is not None else {}
    registered = (old,) if old is not None else ()
    outcome = plan_container(
        CONTAINER_ID, make_container(labels=after), holdings(held, *registered), make_context()
    )
    assert dict(outcome.plan.drop_sidecars) == ({new.id: sidecar_id(new.id)} if drops else {})


# --- statuses registrator reports -------------------------------------------------------------


@pytest.mark.parametrize(
    ("health", "output", "expected"),
    [
        pytest.param("healthy", "ok\n", ("passing", "ok\n"), id="healthy"),
        pytest.param("unhealthy", "", ("critical", "Docker reports unhealthy"), id="unhealthy"),
        pytest.param("starting", "", None, id="starting: initial status stays"),
        pytest.param(None, "", None, id="no HEALTHCHECK"),
    ],
)
def test_docker_health_mirror(
    health: str | None, output: str, expected: tuple[str, str] | None
) -> None:
    container = make_container(health=health, health_output=output)
    services = services_of(make_container(health="starting"))
    updates = mirror_health(container, services)
    if expected is None:
        assert updates == ()
        return
    (update,) = updates
    assert (update.status, update.output) == expected
    check = next(c for c in services[0].checks if c.kind is CheckKind.DOCKER_HEALTH)
    assert update.check_id == check.check_id
    assert update.refresh_after == pytest.approx(24 * 3600 / 3)
    # plan_container reports the same statuses for the services it plans.
    assert plan_container(CONTAINER_ID, container, holdings({}), make_context()).check_updates == (
        update,
    )


@pytest.mark.parametrize(
    ("exit_code", "status"),
    [
        pytest.param(0, "passing", id="exit 0"),
        pytest.param(1, "warning", id="exit 1"),
        pytest.param(2, "critical", id="exit 2"),
        pytest.param(None, "critical", id="could not run"),
    ],
)
def test_script_result(exit_code: int | None, status: str) -> None:
    (service,) = services_of(
        make_container(labels={"SERVICE_CHECK_SCRIPT": "true", "SERVICE_CHECK_INTERVAL": "3s"})
    )
    check = script_check(service)
    assert check is not None and check.kind is CheckKind.SCRIPT
    update = script_update(check, exit_code, "out")
    assert (update.check_id, update.status, update.output) == (check.check_id, status, "out")
    assert update.refresh_after == pytest.approx(10.0)  # a third of the 30 s minimum TTL


@pytest.mark.parametrize(
    ("timeout", "killable", "argv"),
    [
        pytest.param(1.0, True, ["timeout", "-s", "KILL", "1", "sleep", "29"], id="1s"),
        pytest.param(1.5, True, ["timeout", "-s", "KILL", "2", "sleep", "29"], id="rounded up"),
        pytest.param(0.2, True, ["timeout", "-s", "KILL", "1", "sleep", "29"], id="at least 1"),
        pytest.param(1.0, False, ["sleep", "29"], id="no timeout in the container"),
    ],
)
def test_probe_command(timeout: float, killable: bool, argv: list[str]) -> None:
    assert probe_command(["sleep", "29"], timeout, killable) == argv


@pytest.mark.parametrize(
    ("exit_code", "output", "lacks"),
    [
        pytest.param(
            126,
            "OCI runtime exec failed: exec failed: unable to start container process: exec: "
            '"timeout": executable file not found in $PATH: unknown',
            True,
            id="dockerd 20.10 answer",
        ),
        pytest.param(127, 'sh: "timeout": not found', True, id="from a shell"),
        pytest.param(
            126, 'exec: "curl": executable file not found in $PATH', False, id="the probe's own"
        ),
        pytest.param(0, '"timeout" not found', False, id="exit 0 is the probe's output"),
    ],
)
def test_lacks_kill_wrapper(exit_code: int, output: str, lacks: bool) -> None:
    assert lacks_kill_wrapper(exit_code, output) is lacks


@pytest.mark.parametrize(
    ("exit_code", "killable", "timed_out", "status", "output"),
    [
        pytest.param(137, True, False, "critical", "timed out after 1 s; killed", id="killed"),
        pytest.param(0, True, False, "passing", "out", id="in time"),
        pytest.param(137, False, False, "critical", "out", id="137 unwrapped: the probe's own"),
        pytest.param(
            0,
            False,
            True,
            "critical",
            "timed out after 1 s; not killed: the container has no `timeout` command, so the "
            "next probe waited for this one to end",
            id="not killable, overran",
        ),
    ],
)
def test_probe_update(
    exit_code: int, killable: bool, timed_out: bool, status: str, output: str
) -> None:
    (service,) = services_of(make_container(labels={"SERVICE_CHECK_SCRIPT": "sleep 29"}))
    check = script_check(service)
    assert check is not None
    update = probe_update(check, exit_code, "out", 1.0, killable, timed_out)
    assert (update.status, update.output) == (status, output)


def test_no_script_no_script_check() -> None:
    (service,) = services_of(make_container())
    assert script_check(service) is None


def test_heartbeats_only_for_registrator_heartbeat_checks() -> None:
    labels = {"SERVICE_CHECK_TTL": "30s", "SERVICE_CHECK_TCP": "true"}
    (service,) = services_of(make_container(labels=labels), ttl=20)
    (update,) = heartbeat_updates([service])
    check = next(c for c in service.checks if c.kind is CheckKind.HEARTBEAT)
    assert update == CheckUpdate(check.check_id, "passing", "registrator is running", 0.0)
    (plain,) = services_of(make_container(labels=labels))
    assert heartbeat_updates([plain]) == ()


# --- maintenance and shutdown -----------------------------------------------------------------


def test_drain_puts_every_held_service_in_maintenance() -> None:
    assert plan_drain({"b": 1, "a": 2}) == Maintenance(
        ("a", "b"), True, "registrator: container is stopping"
    )


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        pytest.param(make_container(), Maintenance(("a", "b"), False), id="survived: back"),
        pytest.param(make_container(running=False), None, id="stopped: stays"),
        pytest.param(None, None, id="gone: stays"),
    ],
)
def test_undrain(container: Container | None, expected: Maintenance | None) -> None:
    assert plan_undrain(container, ["b", "a"]) == expected


@pytest.mark.parametrize(
    ("signal", "stop_signal", "running", "drains"),
    [
        pytest.param("15", "", True, True, id="SIGTERM, the default stop signal"),
        pytest.param("15", "SIGTERM", True, True, id="SIGTERM named"),
        pytest.param("1", "", True, False, id="SIGHUP reload: no maintenance"),
        pytest.param("3", "", True, False, id="SIGQUIT thread dump: no maintenance"),
        pytest.param("9", "", True, False, id="SIGKILL: die follows at once"),
        pytest.param("3", "SIGQUIT", True, True, id="SIGQUIT is this container's stop signal"),
        pytest.param("15", "SIGQUIT", True, False, id="SIGTERM is not its stop signal"),
        pytest.param("2", "INT", True, True, id="bare name"),
        pytest.param("15", "", False, False, id="already stopped"),
    ],
)
def test_drains_on(signal: str, stop_signal: str, running: bool, drains: bool) -> None:
    container = make_container(stop_signal=stop_signal, running=running)
    assert drains_on(signal, container) is drains


def test_drains_on_nothing_without_signal_or_container() -> None:
    assert not drains_on(None, make_container())
    assert not drains_on("15", None)


@pytest.mark.parametrize(
    ("stop_timeout", "window"),
    [
        pytest.param(None, 15.0, id="unset: docker stop's 10 s + grace"),
        pytest.param(45, 50.0, id="--stop-timeout 45"),
        pytest.param(0, 5.0, id="--stop-timeout 0"),
        pytest.param(-1, 15.0, id="negative: the default"),
    ],
)
def test_drain_window(stop_timeout: int | None, window: float) -> None:
    assert drain_window(make_container(stop_timeout=stop_timeout)) == window


def test_shutdown_deregisters_everything_per_container() -> None:
    held = {
        "c1": {"y": HeldService("y", "c1", "h"), "x": HeldService("x", "c1", "h")},
        "c2": {"z": HeldService("z", "c2", "h")},
    }
    plans = plan_shutdown(held)
    assert {key: plan.deregister for key, plan in plans.items()} == {
        "c1": ("x", "y"),
        "c2": ("z",),
    }


# --- a kept container is never passing (issue 12, 1) -------------------------------------------

AGENT_CHECKS = {"SERVICE_CHECK_SCRIPT": "true", "SERVICE_CHECK_HTTP": "/health"}


@pytest.mark.parametrize(
    ("labels", "health", "ttl", "kinds"),
    [
        pytest.param({}, None, 20, {CheckKind.HEARTBEAT}, id="-ttl heartbeat"),
        pytest.param({}, "healthy", 0, {CheckKind.DOCKER_HEALTH}, id="health mirror"),
        pytest.param(AGENT_CHECKS, None, 0, {CheckKind.SCRIPT}, id="script, not the HTTP probe"),
        pytest.param({}, None, 0, set(), id="no check of ours"),
        pytest.param(
            AGENT_CHECKS,
            "unhealthy",
            20,
            {CheckKind.HEARTBEAT, CheckKind.DOCKER_HEALTH, CheckKind.SCRIPT},
            id="all three",
        ),
    ],
)
@pytest.mark.parametrize(
    "registered",
    [
        pytest.param(True, id="registered by this agent run"),
        pytest.param(False, id="after an agent restart"),
    ],
)
def test_kept_container_has_its_agent_checks_critical(
    labels: dict[str, str], health: str | None, ttl: int, kinds: set[CheckKind], registered: bool
) -> None:
    running = make_container(labels=labels, health=health)
    context = make_context(deregister=DeregisterMode.ON_SUCCESS, ttl=ttl)
    (service,) = desired_services(running, context).services
    exited = make_container(
        labels=labels,
        health=health,
        running=False,
        exit_code=3,
        finished_at=FINISHED_AT,
        # Docker drops the published ports of a stopped container; after a restart the agent
        # can only find the checks of ports it still sees.
        ports=running.ports if not registered else (),
    )
    state = holdings(holding(service), *([service] if registered else []))
    outcome = plan_container(CONTAINER_ID, exited, state, context)
    assert outcome.kept
    expected = {c.check_id for c in service.checks if c.kind in kinds} | {exited_id(service)}
    assert {u.check_id for u in outcome.check_updates} == expected
    assert {(u.status, u.output) for u in outcome.check_updates} == {("critical", EXIT_REASON)}


FINISHED_AT = "2026-11-30T03:04:05Z"
EXIT_REASON = f"container exited with code 3 at {FINISHED_AT}"


def exited_id(service: Service) -> str:
    return f"service:{service.id}:exited"


@pytest.mark.parametrize(
    ("labels", "ttl"),
    [
        pytest.param({}, 0, id="no check at all"),
        pytest.param({"SERVICE_CHECK_HTTP": "/health"}, 0, id="only an HTTP check"),
        pytest.param({"SERVICE_CHECK_TCP": "true"}, 0, id="only a TCP check"),
        pytest.param({"SERVICE_CHECK_TTL": "30s"}, 0, id="the application's TTL check"),
        pytest.param({}, 20, id="-ttl heartbeat"),
    ],
)
@pytest.mark.parametrize(
    "registered",
    [
        pytest.param(True, id="registered by this agent run"),
        pytest.param(False, id="after an agent restart"),
    ],
)
def test_kept_service_is_registered_again_with_a_critical_exited_check(
    labels: dict[str, str], ttl: int, registered: bool
) -> None:
    running = make_container(labels=labels)
    context = make_context(deregister=DeregisterMode.ON_SUCCESS, ttl=ttl)
    (service,) = desired_services(running, context).services
    exited = make_container(
        labels=labels, running=False, exit_code=3, finished_at=FINISHED_AT, ports=running.ports
    )
    state = holdings(holding(service), *([service] if registered else []))
    outcome = plan_container(CONTAINER_ID, exited, state, context)
    (marked,) = outcome.plan.register
    assert outcome.kept and outcome.plan.deregister == ()
    assert (marked.id, marked.address, marked.port) == (service.id, service.address, service.port)
    # Every check it had, unchanged, plus the `exited` one: registered critical, saying why.
    assert marked.checks[:-1] == service.checks
    exited_check = marked.checks[-1]
    assert (exited_check.check_id, exited_check.kind) == (exited_id(service), CheckKind.EXITED)
    assert exited_check.fields["Status"] == "critical"
    assert exited_check.fields["Notes"] == EXIT_REASON
    assert CheckUpdate(exited_id(service), "critical", EXIT_REASON, 24 * 3600 / 3) in (
        outcome.check_updates
    )
    # Once Consul holds it so, the next reconcile while it is dead writes nothing more.
    again = plan_container(CONTAINER_ID, exited, holdings(holding(marked), service), context)
    assert again.plan.empty and again.kept
    # Running again: registered as before, without the `exited` check.
    back = plan_container(CONTAINER_ID, running, holdings(holding(marked), service), context)
    assert not back.kept
    assert back.plan.register == (service,)
    assert all(c.kind is not CheckKind.EXITED for c in back.plan.register[0].checks)
    assert exited_id(service) not in {u.check_id for u in back.check_updates}


def test_kept_service_exiting_again_gets_the_new_reason() -> None:
    running = make_container()
    context = make_context(deregister=DeregisterMode.ON_SUCCESS)
    (service,) = desired_services(running, context).services
    first = make_container(running=False, exit_code=3, finished_at=FINISHED_AT)
    (marked,) = plan_container(
        CONTAINER_ID, first, holdings(holding(service), service), context
    ).plan.register
    second = replace(first, exit_code=4, finished_at="2026-11-30T04:00:00Z")
    (remarked,) = plan_container(
        CONTAINER_ID, second, holdings(holding(marked), service), context
    ).plan.register
    assert [c.fields.get("Notes") for c in remarked.checks if c.kind is CheckKind.EXITED] == [
        "container exited with code 4 at 2026-11-30T04:00:00Z"
    ]


def test_kept_service_that_cannot_be_rebuilt_is_left_as_consul_holds_it() -> None:
    # After an agent restart, a stopped container without its published ports: the service
    # Consul holds is not found again, so it is neither rewritten nor deregistered.
    running = make_container()
    context = make_context(deregister=DeregisterMode.ON_SUCCESS)
    (service,) = desired_services(running, context).services
    exited = make_container(running=False, exit_code=3, ports=())
    assert desired_services(replace(exited, running=True), context).services == ()
    outcome = plan_container(CONTAINER_ID, exited, holdings(holding(service)), context)
    assert outcome.kept and outcome.plan.empty and outcome.check_updates == ()


def test_kept_container_checks_of_services_no_longer_held_are_left_alone() -> None:
    context = make_context(deregister=DeregisterMode.ON_SUCCESS, ttl=20)
    exited = make_container(running=False, exit_code=1)
    outcome = plan_container(CONTAINER_ID, exited, holdings({}), context)
    assert outcome.kept and outcome.check_updates == ()


def test_no_heartbeat_for_a_stopped_container() -> None:
    (service,) = services_of(make_container(), ttl=20)
    assert heartbeat_updates([service], stopped={CONTAINER_ID}) == ()
    assert len(heartbeat_updates([service], stopped={OTHER_ID})) == 1


# --- a contested id changes hands at once (issue 12, 6) ----------------------------------------


@pytest.mark.parametrize(
    ("blue", "waiting", "hand_over"),
    [
        pytest.param(None, {OTHER_ID: ("shared",)}, (OTHER_ID,), id="blue gone: green next"),
        pytest.param(
            make_container(running=False, exit_code=0),
            {OTHER_ID: ("shared",)},
            (OTHER_ID,),
            id="blue exited: green next",
        ),
        pytest.param(
            make_container(labels=SHARED), {OTHER_ID: ("shared",)}, (), id="blue runs: keeps it"
        ),
        pytest.param(None, {OTHER_ID: ("other",)}, (), id="green waits for another id"),
        pytest.param(None, {}, (), id="nobody waits"),
    ],
)
def test_releasing_an_id_hands_it_to_its_contenders(
    blue: Container | None, waiting: dict[str, tuple[str, ...]], hand_over: tuple[str, ...]
) -> None:
    (service,) = services_of(make_container(labels=SHARED))
    state = Holdings(holding(service), {service.id: service}, waiting)
    outcome = plan_container(CONTAINER_ID, blue, state, make_context())
    assert outcome.hand_over == hand_over


# --- ids someone else holds in Consul (issue 12, item 4) --------------------------------------

BY_HAND = "a registration not made by registrator (Meta owner=ops)"
OTHER_NODE = "the registrator of node 'node2' (container fedcba987654)"


@pytest.mark.parametrize(
    ("foreign", "own", "written"),
    [
        pytest.param({}, False, True, id="nobody else holds it: registered"),
        pytest.param({"shared": BY_HAND}, False, False, id="registered by hand: it wins"),
        pytest.param({"shared": OTHER_NODE}, False, False, id="another node's registrator wins"),
        pytest.param({"other-id": BY_HAND}, False, True, id="a foreign entry under another id"),
        pytest.param(
            {"shared": BY_HAND}, True, True, id="this container wrote it since the listing"
        ),
    ],
)
def test_foreign_holder_wins(foreign: dict[str, str], own: bool, written: bool) -> None:
    container = make_container(labels=SHARED)
    (service,) = services_of(container)
    held = holding(service) if own else {}
    outcome = plan_container(
        CONTAINER_ID, container, Holdings(held, {}, foreign=foreign), make_context()
    )
    assert [s.id for s in outcome.services] == (["shared"] if written else [])
    assert outcome.foreign == (() if written else ("shared",))
    # Never written, and never deregistered: it is not ours (held unchanged: no write).
    assert bool(outcome.plan.register) is (written and not own)
    assert outcome.plan.deregister == ()
    assert outcome.contested == ()
    messages = [p for p in outcome.problems or () if "Consul already holds" in p]
    assert messages == (
        []
        if written
        else [
            f"container web-1: service id 'shared': Consul already holds it for "
            f"{foreign['shared']}, not for registrator on node 'node1'; not taken over, "
            "registered once that entry is gone"
        ]
    )


OURS = {"external-source": "registrator", "registrator-node": "node1", "registrator-container": "c"}


@pytest.mark.parametrize(
    ("entry", "holder"),
    [
        pytest.param(None, None, id="no entry: free"),
        pytest.param({"ID": "shared", "Meta": OURS}, None, id="this node's registrator: ours"),
        pytest.param(
            {"ID": "shared", "Meta": {**OURS, "registrator-node": "node2"}},
            "the registrator of node 'node2' (container c)",
            id="another node's registrator",
        ),
        pytest.param(
            {"ID": "shared", "Meta": {"owner": "ops"}},
            "a registration not made by registrator (Meta owner=ops)",
            id="by hand, with Meta",
        ),
        pytest.param(
            {"ID": "shared"}, "a registration not made by registrator", id="by hand, no Meta"
        ),
    ],
)
def test_foreign_holders_from_the_agents_entries(
    entry: dict[str, object] | None, holder: str | None
) -> None:
    """What `explain` reports is the agent's rule: the same holders, the same warning."""
    holders = foreign_holders({"shared": entry, "free": None}, "node1")
    assert holders == ({} if holder is None else {"shared": holder})
    container = make_container(labels=SHARED)
    outcome = plan_container(
        CONTAINER_ID, container, Holdings({}, {}, foreign=holders), make_context()
    )
    assert outcome.foreign == (() if holder is None else ("shared",))


@pytest.mark.parametrize(
    ("labels", "status", "notes"),
    [
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_TIMEOUT": "soon"},
            "critical",
            "label SERVICE_CHECK_TIMEOUT: 'soon' is not",
            id="a malformed check key: critical",
        ),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/h", "SERVICE_WEIGHT": "heavy"},
            "warning",
            "label SERVICE_WEIGHT: 'heavy' is not",
            id="another malformed key: warning",
        ),
    ],
)
def test_misconfigured_check_is_reported_in_its_status_with_its_notes(
    labels: dict[str, str], status: str, notes: str
) -> None:
    container = make_container(labels=labels)
    outcome = plan_container(CONTAINER_ID, container, holdings({}), make_context())
    (service,) = outcome.services
    (check,) = [c for c in service.checks if c.kind is CheckKind.MISCONFIGURED]
    assert outcome.check_updates == (
        CheckUpdate(check.check_id, status, str(check.fields["Notes"]), 24 * 3600 / 3),
    )
    assert check.fields["Status"] == status
    assert str(check.fields["Notes"]).startswith(notes)


CHECKS = {
    "_service_maintenance:web": {"ServiceID": "web", "Notes": DRAIN_REASON},
    "_service_maintenance:api": {"ServiceID": "api", "Notes": "operator: disk swap"},
    "service:web:http": {"ServiceID": "web", "Notes": ""},
}


def test_maintenance_reasons() -> None:
    assert maintenance_reasons(CHECKS) == {"web": DRAIN_REASON, "api": "operator: disk swap"}


@pytest.mark.parametrize(
    ("registered", "expected"),
    [
        pytest.param(["web"], (Maintenance(("web",), True, DRAIN_REASON),), id="ours"),
        pytest.param(
            ["api"], (Maintenance(("api",), True, "operator: disk swap"),), id="an operator's"
        ),
        pytest.param(["db"], (), id="not in maintenance"),
    ],
)
def test_keep_maintenance(registered: list[str], expected: tuple[Maintenance, ...]) -> None:
    assert keep_maintenance(registered, maintenance_reasons(CHECKS)) == expected


@pytest.mark.parametrize(
    ("running", "expected"),
    [
        pytest.param({"a", "b"}, Maintenance(("web",), False), id="ours lifted, operator's kept"),
        pytest.param({"b"}, None, id="its container does not run: it is being removed"),
    ],
)
def test_plan_stale_drains(running: set[str], expected: Maintenance | None) -> None:
    held = {
        "a": {"web": held_from_service(services_of(make_container())[0])},
        "b": {"api": held_from_service(services_of(make_container())[0])},
    }
    assert plan_stale_drains(maintenance_reasons(CHECKS), held, running) == expected


# --- sidecars sharing a network stack (--network container:X) ----------------------------------

OWNER = make_container(
    id=OTHER_ID,
    name="app",
    ports=(published(80, 8080), published(9100, 39100)),
    networks=(NetworkAttachment("bridge", "198.18.0.9", "n" * 64),),
    started_at="2026-11-30T03:00:00.5Z",
)


def sidecar(owner: Container | None, **overrides: object) -> Container:
    fields: dict[str, object] = {
        "name": "metrics",
        "labels": {"SERVICE_NAME": "metrics", "SERVICE_PORT": "9100"},
        "ports": (),
        "networks": (),
        "network_mode": f"container:{OTHER_ID}",
        "started_at": "2026-11-30T03:00:01Z",
        "network_owner": owner,
    }
    fields.update(overrides)
    return make_container(**fields)


@pytest.mark.parametrize(
    ("container", "options", "where"),
    [
        pytest.param(sidecar(OWNER), {"internal": True}, ("198.18.0.9", 9100), id="-internal"),
        pytest.param(sidecar(OWNER), {}, ("10.0.0.9", 39100), id="the owner publishes 9100"),
        pytest.param(
            sidecar(replace(OWNER, ports=(published(80, 8080),))),
            {},
            ("198.18.0.9", 9100),
            id="not published: its address, like any SERVICE_PORT without ports",
        ),
        pytest.param(
            sidecar(replace(OWNER, network_mode="host", networks=())),
            {},
            ("10.0.0.9", 9100),
            id="owner on the host network",
        ),
        pytest.param(
            sidecar(OWNER, labels={"SERVICE_NAME": "metrics"}, ports=(ContainerPort(9100, "tcp"),)),
            {},
            ("10.0.0.9", 39100),
            id="EXPOSEd by its image",
        ),
        pytest.param(
            sidecar(replace(OWNER, started_at="2026-11-30T03:00:00.9Z")),
            {"internal": True},
            ("198.18.0.9", 9100),
            id="fractions compare as numbers (.9 before 1)",
        ),
    ],
)
def test_sidecar_sharing_a_stack_is_reached_where_its_owner_is(
    container: Container, options: dict[str, object], where: tuple[str, int]
) -> None:
    result = desired_services(container, make_context(**options))
    assert result.problems == ()
    ((name, address, port),) = [(s.name, s.address, s.port) for s in result.services]
    assert (name, (address, port)) == ("metrics", where)
    assert result.services[0].id == f"{make_context().node}:metrics:9100"


@pytest.mark.parametrize(
    ("container", "reason"),
    [
        pytest.param(sidecar(None), "which does not run", id="owner gone"),
        pytest.param(
            sidecar(replace(OWNER, running=False)), "which does not run", id="owner stopped"
        ),
        pytest.param(
            sidecar(replace(OWNER, started_at="2026-11-30T03:05:00Z")),
            "which restarted after it",
            id="owner restarted after it: left in the old stack",
        ),
    ],
)
def test_sidecar_not_registered_without_its_owners_stack(container: Container, reason: str) -> None:
    result = desired_services(container, make_context(internal=True))
    assert result.services == ()
    (problem,) = result.problems
    assert problem.key == f"--network container:{OTHER_ID[:12]}"
    assert reason in problem.reason


def test_helper_sharing_a_stack_with_nothing_to_register_is_not_warned_about() -> None:
    helper = sidecar(None, labels={})
    assert desired_services(helper, make_context()) == ContainerPlan(())
