"""Says each recurring problem once: a container's label problems, Consul's ACL refusals and
rejections of a service, and Consul having lost this node's state.

A resync every few seconds meets the same problems again; repeating them would bury the one
line that matters. What was said is remembered per container or service (in the ledger for
refusals and rejections, so that it goes with the container).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Set

from registrator.consul import ConsulError
from registrator.ledger import Ledger
from registrator.model import Service
from registrator.payload import payload_hash
from registrator.status import Stats

# The reconciler's logger, as before the split: operators filter on it (docs/operations.md).
log = logging.getLogger("registrator.reconciler")


class Reports:
    def __init__(self, ledger: Ledger, stats: Stats) -> None:
        self._ledger = ledger
        self._stats = stats
        # container id → the label problems logged for it (only containers with problems).
        self._problems: dict[str, frozenset[str]] = {}
        self._state_lost_said = False  # until the next full reconcile lists Consul
        # Called when Consul turns out to have lost this node's registrations (the agent
        # asks for a full reconcile, which re-registers them); set by the Agent.
        self.on_consul_state_lost: Callable[[], None] = lambda: None

    def problems(self, container_id: str, problems: tuple[str, ...] | None, gone: bool) -> None:
        """Log each metadata problem of a container once, not on every resync: a new problem
        is logged, the ones already logged are not repeated. `problems` None: the planner
        did not look at the container's labels (they are kept as they were, unless `gone`)."""
        if problems is None:
            if gone:
                self._problems.pop(container_id, None)
            return
        current = frozenset(problems)
        previous = self._problems.get(container_id, frozenset())
        if previous == current:
            return
        # Only containers with problems are remembered: an empty set for each of hundreds of
        # healthy containers was ~0.2 KB apiece.
        if current:
            self._problems[container_id] = current
        else:
            self._problems.pop(container_id, None)
        for problem in sorted(current - previous):
            log.warning("%s", problem)

    def keep_only(self, container_ids: Set[str]) -> None:
        """After a full reconcile: forget the problems of containers that no longer exist."""
        for key in [key for key in self._problems if key not in container_ids]:
            self._problems.pop(key, None)

    def refused(
        self, container_id: str, service_id: str, name: str, what: str, err: ConsulError
    ) -> None:
        """An ACL refusal (HTTP 401/403) of the `what` ("registration") of a service of
        container `name`: retried with backoff, logged once per reason."""
        self._stats.errors["consul_forbidden"] += 1
        message = str(err)
        if self._ledger.refuse(container_id, service_id, message) != message:
            log.error(
                "Consul refused the %s of service %s of container %s (ACL token lacks "
                "permission); retrying until the policy or the token changes: %s",
                what,
                service_id,
                name,
                message,
            )

    def rejected(self, container_id: str, service: Service, err: ConsulError) -> None:
        """Consul refused the registration as invalid (HTTP 400): not resent until it changes."""
        message = str(err)
        self._stats.errors["consul_rejected"] += 1
        previous = self._ledger.rejections.get(service.id)
        self._ledger.reject(container_id, service.id, (payload_hash(service), message))
        if previous is None or previous[1] != message:
            log.warning(
                "Consul rejected service %s of container %s; it stays unregistered until "
                "its labels change: %s",
                service.id,
                service.container_name,
                message,
            )

    def consul_listed(self) -> None:
        """A full reconcile listed Consul's services: a loss found later is said again."""
        self._state_lost_said = False

    def unknown_check(self, check_id: str) -> None:
        """A TTL update answered "unknown check": Consul lost its state (restarted without
        data). A full reconcile lists what it holds now and registers what is missing."""
        if not any(
            check.check_id == check_id
            for service in self._ledger.registered.values()
            for check in service.checks
        ):
            return  # a late update of a service just deregistered: nothing was lost
        if not self._state_lost_said:
            self._state_lost_said = True
            log.warning(
                "Consul does not know check %s: it lost its state (restarted without data?); "
                "re-registering this node's services",
                check_id,
            )
        self.on_consul_state_lost()
