"""When a container is reconciled again without an event: after its own backoff when a write did
not land, and before a mirrored HEALTHCHECK's TTL runs out.

Both keep `-resync 0` converging: a write refused while Consul was down is tried again, and a
health status Docker does not repeat (it sends health_status only on a change) is sent again
before Consul's TTL check expires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from registrator.timing import Backoff, Timing


class Retries:
    """Marks containers again later through `mark` (the reconciler's trigger)."""

    def __init__(self, mark: Callable[[str], None], timing: Timing) -> None:
        self._mark = mark
        self._timing = timing
        # Containers whose current reconcile left a write undone (Consul down, an ACL refusal).
        self._unfinished: set[str] = set()
        self._retries: dict[str, tuple[Backoff, asyncio.Task[None]]] = {}
        # Containers with a mirrored HEALTHCHECK: marked again before its TTL runs out.
        self._refreshes: dict[str, asyncio.Task[None]] = {}

    def started(self, container_id: str) -> None:
        """A reconcile of the container begins: nothing of it is undone yet."""
        self._unfinished.discard(container_id)

    def unfinished(self, container_id: str) -> None:
        """A write (or the read before it) failed: the container is retried after `done`."""
        self._unfinished.add(container_id)

    def done(self, container_id: str) -> None:
        """The reconcile ended: retry it after its own backoff if it left work undone (one
        retry pending at a time, the backoff growing until a reconcile finishes), else
        cancel the pending retry and start the backoff over."""
        entry = self._retries.get(container_id)
        if container_id not in self._unfinished:
            self._retries.pop(container_id, None)
            if entry is not None and not entry[1].done():
                entry[1].cancel()
            return
        if entry is not None and not entry[1].done():
            return
        backoff = entry[0] if entry else self._timing.backoff(self._timing.write_retry)
        task = asyncio.create_task(self._mark_later(container_id, backoff.next()))
        self._retries[container_id] = (backoff, task)

    def refresh(self, container_id: str, delays: list[float]) -> None:
        """Mark the container again a little after the shortest of `delays` (seconds: the
        `refresh_after` of its check updates); none, or an empty list, cancels it."""
        previous = self._refreshes.pop(container_id, None)
        if previous is not None and not previous.done():
            previous.cancel()
        if not delays:
            return
        # A little after the refresh time, so that the check runner finds it has passed.
        delay = min(delays) * 1.05
        self._refreshes[container_id] = asyncio.create_task(self._mark_later(container_id, delay))

    async def _mark_later(self, container_id: str, delay: float) -> None:
        await self._timing.sleep(delay)
        self._mark(container_id)

    async def close(self) -> None:
        tasks = [task for _, task in self._retries.values()] + list(self._refreshes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
