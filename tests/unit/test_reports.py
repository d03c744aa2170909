"""reports.Reports on its own: each recurring problem is said once, and said again only when it
changes or its container's memory of it went."""

from __future__ import annotations

import logging

import pytest

from registrator.consul import ConsulError
from registrator.ledger import Ledger
from registrator.model import Check, CheckKind, Service
from registrator.reports import Reports
from registrator.status import Stats
from tests.unit.fakes import A, B

HEARTBEAT = "service:web:ttl"


def service(service_id: str = "web") -> Service:
    return Service(
        id=service_id,
        name="web",
        address="10.0.0.5",
        port=8080,
        tags=(),
        meta={},
        container_id=A,
        container_name="web",
        checks=(Check(HEARTBEAT, CheckKind.HEARTBEAT, "heartbeat"),),
    )


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [record.getMessage() for record in caplog.records]
    caplog.clear()
    return lines


# One container's reconciles in order: (its problems, gone), then what is logged.
PROBLEM_STEPS = [
    pytest.param([((("p1", "p2"), False), ["p1", "p2"])], id="new problems, sorted"),
    pytest.param([((("p1",), False), ["p1"]), ((("p1",), False), [])], id="same: nothing"),
    pytest.param(
        [((("p1", "p2"), False), ["p1", "p2"]), ((("p1", "p3"), False), ["p3"])],
        id="only the new one of a changed set",
    ),
    pytest.param(
        [((("p1",), False), ["p1"]), (((), False), []), ((("p1",), False), ["p1"])],
        id="fixed, then broken again: said again",
    ),
    pytest.param(
        [((("p1",), False), ["p1"]), ((None, False), []), ((("p1",), False), [])],
        id="not looked at (a listing before it started): still remembered",
    ),
    pytest.param(
        [((("p1",), False), ["p1"]), ((None, True), []), ((("p1",), False), ["p1"])],
        id="gone: forgotten",
    ),
]


@pytest.mark.parametrize("steps", PROBLEM_STEPS)
def test_problems_are_said_once_per_change(
    steps: list[tuple[tuple[tuple[str, ...] | None, bool], list[str]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports = Reports(Ledger(), Stats())
    caplog.set_level(logging.WARNING)
    for (problems, gone), expected in steps:
        reports.problems(A, problems, gone)
        assert said(caplog) == expected


def test_keep_only_forgets_the_problems_of_containers_that_went(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports = Reports(Ledger(), Stats())
    caplog.set_level(logging.WARNING)
    reports.problems(A, ("pa",), False)
    reports.problems(B, ("pb",), False)
    reports.keep_only({A})
    said(caplog)
    reports.problems(A, ("pa",), False)
    reports.problems(B, ("pb",), False)
    assert said(caplog) == ["pb"]


def test_refusal_is_said_once_per_reason_and_counted_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = Stats()
    reports = Reports(Ledger(), stats)
    caplog.set_level(logging.WARNING)
    denied = ConsulError("PUT register: HTTP 403: Permission denied", status=403)
    other = ConsulError("PUT register: HTTP 403: ACL not found", status=403)
    lines = []
    for err in (denied, denied, other, other):
        reports.refused(A, "web", "web", "registration", err)
        lines.append(len(said(caplog)))
    assert lines == [1, 0, 1, 0]
    assert stats.errors["consul_forbidden"] == 4


def test_rejection_is_said_once_per_reason_and_noted_for_its_container(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger()
    reports = Reports(ledger, Stats())
    caplog.set_level(logging.WARNING)
    err = ConsulError("PUT register: HTTP 400: Invalid check", status=400, transient=False)
    reports.rejected(A, service(), err)
    reports.rejected(A, service(), err)
    assert len(said(caplog)) == 1
    assert ledger.rejections["web"][1] == str(err) and ledger.services_of(A) == {"web"}


def test_unknown_check_of_ours_asks_for_a_full_reconcile_and_is_said_once_per_listing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger()
    ledger.remember(A, service())
    reports = Reports(ledger, Stats())
    asked: list[bool] = []
    reports.on_consul_state_lost = lambda: asked.append(True)
    caplog.set_level(logging.WARNING)
    reports.unknown_check("service:someone-else:ttl")  # not ours (any more): nothing lost
    assert (asked, said(caplog)) == ([], [])
    reports.unknown_check(HEARTBEAT)
    reports.unknown_check(HEARTBEAT)
    assert len(asked) == 2 and len(said(caplog)) == 1
    reports.consul_listed()
    reports.unknown_check(HEARTBEAT)
    assert len(asked) == 3 and len(said(caplog)) == 1
