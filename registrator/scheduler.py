"""Per-container scheduling: work on one container is serialised, different containers proceed
concurrently, and marks that arrive while a container is being reconciled coalesce into one
more reconcile (level-triggered: the next one reads the truth anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable


class KeyedLock:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it.

    Containers come and go by the thousand on a busy host; a plain dict of locks would
    only grow.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Scheduler:
    """Runs `work(key)` for marked keys: one worker per key while it has marks pending."""

    def __init__(self, work: Callable[[str], Awaitable[None]]) -> None:
        self._work = work
        self.locks = KeyedLock()
        self._dirty: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}

    def mark(self, key: str) -> None:
        self._dirty.add(key)
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._drain(key))

    async def _drain(self, key: str) -> None:
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                await self._work(key)
        finally:
            self._workers.pop(key, None)

    async def idle(self) -> None:
        """Wait until every marked key has been worked on (for shutdown and tests)."""
        while self._workers:
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)

    @property
    def pending(self) -> int:
        """Keys marked or being worked on."""
        return len(self._workers)
