"""Every delay the shell waits, and the clock it reads, in one value tests can shrink.

Request retries inside the clients stay with tenacity; these are the agent's own waits: the
startup retry interval (-retry-interval), backoff after a failed full reconcile or a broken
event stream, the drain window's scale, the shutdown budget, and the check runner's clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Timing:
    event_backoff: tuple[float, float] = (0.5, 30.0)  # first, longest (seconds)
    reconcile_backoff: tuple[float, float] = (0.5, 5.0)
    # The drain window (plan.drain_window: the container's stop timeout) is multiplied by
    # this; unit tests shrink it.
    drain_scale: float = 1.0
    shutdown_idle: float = 3.0  # in-flight reconciles may finish within this
    shutdown_deregister: float = 1.5  # -deregister-on-exit may take this long
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)

    def backoff(self, bounds: tuple[float, float]) -> Backoff:
        return Backoff(bounds[0], bounds[1])


class Backoff:
    """Doubling delays with a quarter of jitter, from `first` up to `longest`; reset() after
    a healthy run."""

    def __init__(self, first: float, longest: float) -> None:
        self.first = first
        self.longest = longest
        self._current = first

    def next(self) -> float:
        delay = self._current + random.uniform(0, self._current / 4)
        self._current = min(self._current * 2, self.longest)
        return delay

    def reset(self) -> None:
        self._current = self.first
