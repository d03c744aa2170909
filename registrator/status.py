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
        # Backends that answer but refuse our ACL token (HTTP 401/403) → Consul's reason.
        self._forbidden: dict[str, str] = {}
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

    def forbidden(self, kind: str, message: str) -> None:
        """`kind` answered but refused (ACL): not an outage. Logged once per reason; an
        operator can widen the policy or rotate the token, so callers retry later."""
        self.stats.errors[kind] += 1
        self._seen.add(kind)
        self._down.discard(kind)
        if self._forbidden.get(kind) != message:
            self._forbidden[kind] = message
            log.error(
                "%s; %s refuses the ACL token: retrying at each reconcile until the policy "
                "or the token changes",
                message,
                _BACKEND_NAMES.get(kind, kind),
            )
        else:
            log.debug("%s", message)

    def allowed(self, kind: str) -> None:
        """A call that `kind` refused before is accepted now (policy widened, token rotated)."""
        if self._forbidden.pop(kind, None) is not None:
            log.info("%s accepts the ACL token again", _BACKEND_NAMES.get(kind, kind))

    def state(self, kind: str) -> tuple[str, str]:
        """("up" | "unreachable" | "forbidden" | "unknown", reason) for /health."""
        if kind in self._forbidden:
            return "forbidden", self._forbidden[kind]
        if kind in self._down:
            return "unreachable", ""
        return ("up", "") if kind in self._seen else ("unknown", "")

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
        """Answered once, no transient failure since its last answer, and not refusing us."""
        return kind in self._seen and kind not in self._down and kind not in self._forbidden
