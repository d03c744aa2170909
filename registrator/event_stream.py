"""Follows Docker's event stream for as long as the agent runs: reconnects with backoff, resumes
from the last event's time, and logs only changes of the stream's state.

Whatever ends a session (dockerd restarting, a socket error, a proxy timing out), the next one
starts from the last event seen; events may still have been missed in between, so every new
subscription is announced (`on_subscribed`) and the agent answers it with a full reconcile.
What an event means is events.py's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from registrator.backends import DockerAPI
from registrator.docker import DockerError
from registrator.events import is_subscribed, since_from_time_nano
from registrator.status import Status
from registrator.timing import Timing

# The agent's logger, as before this module existed: operators read the stream's state there
# (docs/operations.md).
log = logging.getLogger("registrator.agent")


class EventStream:
    def __init__(self, docker: DockerAPI, status: Status, timing: Timing) -> None:
        self._docker = docker
        self._status = status
        self._timing = timing
        self._since: str | None = None  # the last event's time, to resume from
        self._state = ""  # "up", "closed" or "error": only changes are logged

    async def follow(
        self, on_subscribed: Callable[[], None], on_event: Callable[[dict[str, Any]], None]
    ) -> None:
        """Call `on_event` with each event, and `on_subscribed` each time a (new) subscription
        is in place; never returns (cancel it)."""
        backoff = self._timing.backoff(self._timing.event_backoff)
        while True:
            try:
                async for event in self._docker.events(self._since):
                    if is_subscribed(event):
                        # Subscribed before listing: nothing that happens from here on can
                        # be missed by the full reconcile that follows.
                        self._status.answered("docker", announce=False)
                        backoff.reset()
                        on_subscribed()
                        self._log("up", "following Docker events")
                        continue
                    self._seen(event)
                    on_event(event)
                self._log("closed", "Docker closed the event stream; reconnecting")
            except DockerError as err:
                self._status.lost("docker")
                self._log("error", "Docker event stream failed: %s; reconnecting", err)
            await self._timing.sleep(backoff.next())

    def _seen(self, event: dict[str, Any]) -> None:
        stats = self._status.stats
        stats.events += 1
        time_nano = event.get("timeNano")
        if isinstance(time_nano, int):
            self._since = since_from_time_nano(time_nano)
            stats.last_event_lag = time.time() - time_nano / 1e9

    def _log(self, state: str, message: str, *args: object) -> None:
        if state != self._state:
            self._state = state
            (log.info if state == "up" else log.warning)(message, *args)
