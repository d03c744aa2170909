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
        # service id → (payload hash, Consul's reason) of registrations Consul refused.
        self.rejections: dict[str, tuple[str, str]] = {}
        # Containers written for since the current full reconcile listed Consul's services.
        self.applied_since_listing: set[str] = set()

    def holdings(self) -> Holdings:
        """A read-only view for the planner (not a copy: the planner runs synchronously)."""
        return Holdings(self.held, self.registered)

    def owned_service_ids(self) -> list[str]:
        return sorted(sid for held in self.held.values() for sid in held)

    def drop_empty(self) -> None:
        for key in [key for key, held in self.held.items() if not held]:
            self.held.pop(key, None)
