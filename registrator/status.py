"""What the agent counts, and whether Docker and Consul answer: one tracker for the whole shell.

The reconciler, the check runner, the Swarm view and the agent's event loop all report here, so
/health, /metrics and the "unreachable" / "reachable again" log lines have one source.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# "swarm": a manager's service reads, which can fail (no quorum, a demoted node) while the
# rest of Docker answers; kept apart so one does not end the other's outage in the logs.
_BACKEND_NAMES = {"docker": "Docker", "consul": "Consul", "swarm": "Swarm service reads"}


@dataclass
class Stats:
    """Counters the metrics endpoint and the benchmarks read."""

    events: int = 0
    container_reconciles: int = 0
    full_reconciles: int = 0
    registrations: int = 0
    deregistrations: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_full_seconds: float = 0.0
    last_event_lag: float = 0.0


class Status:
    """Counters, plus which backends ("docker", "consul", "swarm") are in an outage."""

    def __init__(self) -> None:
        self.stats = Stats()
        # Backends that failed transiently and have not answered since.
        self._down: set[str] = set()
        # Backends that answered at least once (at startup): before that nothing is "up".
        self._seen: set[str] = set()
        # A transient failure left work undone: the next full reconcile should come soon.
        self.retry_needed = False

    def error(self, kind: str, message: str, transient: bool = False) -> None:
        """Count and log a failure; transient ones once per outage, not once per retry."""
        self.stats.errors[kind] += 1
        if not transient:
            log.error("%s", message)
        elif kind in self._down:
            log.debug("%s", message)  # still the same outage: said so already
        else:
            self._down.add(kind)
            log.error(
                "%s; %s looks unreachable: retrying quietly until it answers",
                message,
                _BACKEND_NAMES.get(kind, kind),
            )

    def answered(self, kind: str, announce: bool = True) -> None:
        """A call to `kind` worked: end its outage, if there was one, with one line
        (`announce` False: the caller says it in its own words)."""
        self._seen.add(kind)
        if kind in self._down:
            self._down.discard(kind)
            if announce:
                log.info("%s reachable again", _BACKEND_NAMES.get(kind, kind))

    def lost(self, kind: str) -> None:
        """`kind` failed in a way the caller has already logged (the Docker event stream)."""
        self._down.add(kind)

    def up(self, kind: str) -> bool:
        """Answered once, and no transient failure since its last answer."""
        return kind in self._seen and kind not in self._down
