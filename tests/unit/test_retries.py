"""retries.Retries on its own: when a container is marked again without an event.

The sleep is a gate the test opens, so "pending" is a state the test holds, not a race.
"""

from __future__ import annotations

import asyncio

import pytest

from registrator.retries import Retries
from registrator.timing import Timing
from tests.unit.fakes import A, B, until


class Sleeps:
    """A Timing.sleep that records each delay and returns only once the test opens it."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.gate = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await self.gate.wait()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def retries(sleeps: Sleeps, marks: list[str]) -> Retries:
    return Retries(marks.append, Timing(write_retry=(1.0, 4.0), sleep=sleeps))


async def failed_reconcile(r: Retries, container_id: str) -> None:
    r.started(container_id)
    r.unfinished(container_id)
    r.done(container_id)
    await asyncio.sleep(0)  # the retry task reaches its sleep


async def test_unfinished_work_is_marked_again_after_a_growing_backoff(sleeps: Sleeps) -> None:
    marks: list[str] = []
    r = retries(sleeps, marks)
    sleeps.gate.set()
    for n in range(1, 5):
        await failed_reconcile(r, A)
        await until(lambda n=n: len(marks) == n, f"retry {n}")
    # Doubling from 1 s, capped at 4 s, each with up to a quarter of jitter.
    bounds = [(1.0, 1.25), (2.0, 2.5), (4.0, 5.0), (4.0, 5.0)]
    assert [lo <= delay <= hi for delay, (lo, hi) in zip(sleeps.delays, bounds, strict=True)] == [
        True
    ] * 4
    assert marks == [A] * 4
    r.started(A)
    r.done(A)  # finished: the next failure starts the backoff over
    await failed_reconcile(r, A)
    await until(lambda: len(marks) == 5, "retry after a finished reconcile")
    assert 1.0 <= sleeps.delays[-1] <= 1.25
    await r.close()


async def test_one_retry_pending_per_container_and_a_finished_reconcile_cancels_it(
    sleeps: Sleeps,
) -> None:
    marks: list[str] = []
    r = retries(sleeps, marks)
    await failed_reconcile(r, A)
    await failed_reconcile(r, A)  # a second failure while the first retry waits
    await failed_reconcile(r, B)
    assert len(sleeps.delays) == 2
    r.started(A)
    r.done(A)
    sleeps.gate.set()
    await until(lambda: marks == [B], "B's retry")
    await asyncio.sleep(0.01)
    assert marks == [B]
    await r.close()


async def test_refresh_marks_a_little_after_the_shortest_delay_and_an_empty_list_cancels(
    sleeps: Sleeps,
) -> None:
    marks: list[str] = []
    r = retries(sleeps, marks)
    r.refresh(A, [30.0, 10.0])
    r.refresh(B, [20.0])
    await asyncio.sleep(0)
    assert sleeps.delays == [pytest.approx(10.5), pytest.approx(21.0)]
    r.refresh(A, [])
    sleeps.gate.set()
    await until(lambda: marks == [B], "B's refresh")
    await asyncio.sleep(0.01)
    assert marks == [B]
    await r.close()


async def test_close_cancels_everything_pending(sleeps: Sleeps) -> None:
    marks: list[str] = []
    r = retries(sleeps, marks)
    await failed_reconcile(r, A)
    r.refresh(B, [5.0])
    await r.close()
    sleeps.gate.set()
    await asyncio.sleep(0.01)
    assert marks == []
