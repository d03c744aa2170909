"""event_stream.EventStream on its own: reconnects, resumes from the last event, says each change
of the stream's state once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from registrator.event_stream import EventStream
from registrator.events import since_from_time_nano
from registrator.status import Status
from registrator.timing import Timing
from tests.unit.fakes import A, FakeDocker, until

FAST = Timing(event_backoff=(0.001, 0.005))


async def test_reconnects_resumes_from_the_last_event_and_logs_only_state_changes(
    docker: FakeDocker, caplog: pytest.LogCaptureFixture
) -> None:
    status = Status()
    stream = EventStream(docker, status, FAST)
    subscribed: list[int] = []
    events: list[dict[str, Any]] = []
    caplog.set_level(logging.INFO, logger="registrator")
    task = asyncio.create_task(stream.follow(lambda: subscribed.append(len(events)), events.append))
    try:
        await until(lambda: subscribed == [0], "the first subscription")
        docker.emit("start", A)
        await until(lambda: len(events) == 1, "the event delivered")
        assert (status.stats.events, docker.since) == (1, [None])
        docker.down = True
        docker.break_stream()
        await until(lambda: docker.calls["events"] >= 4, "several failed reconnects")
        assert not status.up("docker")
        docker.down = False
        await until(lambda: subscribed == [0, 1], "subscribed again")
        # Resumed from the event seen, not from now: what happened meanwhile is replayed.
        assert set(docker.since[1:]) == {since_from_time_nano(1_700_000_000_000_000_000)}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "registrator.agent"]
    # The repeated failures while Docker was down are one "failed" line, not one per attempt.
    assert lines == [
        "following Docker events",
        "Docker event stream failed: GET /events: connection reset; reconnecting",
        "following Docker events",
    ]
