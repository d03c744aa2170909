"""What this node holds in Consul, as far as the agent knows: rebuilt from Consul's own list at
every full reconcile, kept up to date by every write in between.
"""

from __future__ import annotations

from registrator.model import HeldService, Service
from registrator.plan import Holdings


class Ledger:
    def __init__(self) -> None:
        # container id (or VIP key) → service id → what Consul holds for it.
        self.held: dict[str, dict[str, HeldService]] = {}
        # service id → the Service we registered, for check updates and script runners.
        self.registered: dict[str, Service] = {}
        # service id → (payload hash, Consul's reason) of registrations Consul refused as
        # invalid (HTTP 400): resending the same payload cannot help.
        self.rejections: dict[str, tuple[str, str]] = {}
        # service id → Consul's reason for an ACL refusal (HTTP 401/403) of a write for it:
        # retried, since an operator can widen the policy; kept to log it once per reason.
        self.refused: dict[str, str] = {}
        # container id → the service ids of the three maps above it has entries in, so that
        # everything about a container is released when it goes, Consul's state or not.
        self.by_container: dict[str, set[str]] = {}
        # Containers written for since the current full reconcile listed Consul's services.
        self.applied_since_listing: set[str] = set()
        # container id → contested ids it waits for; containers kept while stopped.
        self.waiting: dict[str, tuple[str, ...]] = {}
        self.stopped: set[str] = set()
        # service id → who else holds it in Consul: from the last full reconcile's listing,
        # and from the look-up before the first write of an id (applier.look_up_holders).
        self.foreign: dict[str, str] = {}

    def holdings(self) -> Holdings:
        """A read-only view for the planner (not a copy: the planner runs synchronously)."""
        return Holdings(self.held, self.registered, self.waiting, self.stopped, self.foreign)

    def remember(self, key: str, service: Service) -> None:
        """Consul holds `service` for container `key` as we registered it."""
        self.registered[service.id] = service
        self.rejections.pop(service.id, None)
        self.refused.pop(service.id, None)
        self.by_container.setdefault(key, set()).add(service.id)

    def reject(self, key: str, service_id: str, memo: tuple[str, str]) -> None:
        self.rejections[service_id] = memo
        self.by_container.setdefault(key, set()).add(service_id)

    def refuse(self, key: str, service_id: str, reason: str) -> str | None:
        """Note an ACL refusal; returns the reason noted before (None: new)."""
        previous = self.refused.get(service_id)
        self.refused[service_id] = reason
        self.by_container.setdefault(key, set()).add(service_id)
        return previous

    def services_of(self, key: str) -> set[str]:
        """The service ids container `key` has any entry for (registered, rejected, refused)."""
        return set(self.by_container.get(key, ()))

    def release(self, key: str, service_id: str) -> Service | None:
        """Forget every note about one service of `key`; returns the Service it had."""
        self.rejections.pop(service_id, None)
        self.refused.pop(service_id, None)
        ids = self.by_container.get(key)
        if ids is not None:
            ids.discard(service_id)
            if not ids:
                self.by_container.pop(key, None)
        return self.registered.pop(service_id, None)

    def note(self, key: str, contested: tuple[str, ...], kept: bool) -> None:
        """Remember what a reconcile found: the ids `key` waits for, and whether it is kept."""
        if contested:
            self.waiting[key] = contested
        else:
            self.waiting.pop(key, None)
        if kept:
            self.stopped.add(key)
        else:
            self.stopped.discard(key)

    def owned_service_ids(self) -> list[str]:
        return sorted(sid for held in self.held.values() for sid in held)

    def drop_empty(self, present: set[str]) -> None:
        """After a full reconcile: forget containers that hold nothing, and the waiting and
        stopped notes of containers that no longer exist (`present`: every key reconciled)."""
        for key in [key for key, held in self.held.items() if not held]:
            self.held.pop(key, None)
        for key in [key for key in self.waiting if key not in present]:
            self.waiting.pop(key, None)
        self.stopped &= present
