"""The Swarm facts a manager can read, refreshed at every full reconcile and on service events.

Workers cannot read services (only managers can), so on a worker this view stays empty and
task containers are planned from what their own inspect says.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from registrator.backends import DockerAPI
from registrator.containers import InspectError, image_exposed_ports
from registrator.docker import DockerError
from registrator.model import Container, ContainerPort, SwarmService
from registrator.status import Status
from registrator.swarm import (
    is_vip_key,
    manager_node_id,
    parse_service,
    task_service_id,
    vip_container,
    vip_key,
)

log = logging.getLogger(__name__)

# Images whose EXPOSEd ports are remembered for -swarm-vip (the oldest goes first).
IMAGE_PORTS_KEPT = 256
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Networks:
    """One `GET /networks` read: VIPs are registered on `names`; `known` tells whether a VIP's
    network was created since (read again then)."""

    names: dict[str, str] = field(default_factory=dict)  # non-ingress network id → name
    known: frozenset[str] = frozenset()  # every network id, ingress included


class SwarmView:
    def __init__(
        self,
        docker: DockerAPI,
        status: Status,
        swarm_vip: bool,
        manager_id: str = "",
        in_swarm: bool = False,
        watch_leader: bool = False,
    ) -> None:
        self.docker = docker
        self.status = status
        self.swarm_vip = swarm_vip
        # Also read leadership without -swarm-vip: the leader's agent reaps lost nodes.
        self.watch_leader = watch_leader
        # The Swarm node id when this engine is a manager (only managers can read services).
        self.manager_id = manager_id
        # Whether the engine was in a swarm at startup; only then is its role re-read at every
        # resync (an engine that joins a swarm later is seen when registrator restarts), so a
        # plain Docker host pays one Docker call per full reconcile, not two.
        self.in_swarm = in_swarm or bool(manager_id)
        self.leader = False
        # False while the last full reconcile could not read Swarm's state: VIP registrations
        # are then left exactly as they are.
        self.readable = True
        # Swarm service id → what a manager said of it (None: no such service).
        self._services: dict[str, SwarmService | None] = {}
        self._stale: set[str] = set()  # changed since read: read again before use
        self._networks = _Networks()
        self._image_ports: dict[str, tuple[ContainerPort, ...]] = {}

    def changed(self, service_id: str) -> bool:
        """A service event: read the service again before its next use. False on a node that
        cannot read services (nothing here depends on them then)."""
        if not self.manager_id:
            return False
        self._stale.add(service_id)
        return True

    async def refresh(self, held_keys: Iterable[str]) -> set[str]:
        """Full reconcile: whether this engine is (still, or now) a Swarm manager; on a
        manager, one read of every service (fresher and cheaper than one read per task), the
        leadership, and the networks a VIP may be registered on.

        `held_keys`: the containers (and VIP keys) this node holds services for. Returns the
        VIP keys to reconcile. A failed read keeps what was known and freezes the VIP
        registrations as they are: a stale port beats dropping registrations over a hiccup
        (a quorum loss, say), and the next resync reads again.
        """
        if not self.in_swarm:
            return set()
        vip_keys_held = {key for key in held_keys if is_vip_key(key)}
        try:
            manager_id = manager_node_id(await self.docker.info())
            if manager_id != self.manager_id:
                self._services.clear()
            self.manager_id = _role_changed(
                "a Swarm manager", self.manager_id, manager_id, "reading Swarm services"
            )
            if not manager_id:
                self.leader = False
                self.readable = True
                return vip_keys_held  # a demoted leader removes what it wrote
            services = {}
            for document in await self.docker.services():
                try:
                    service = parse_service(document)
                except InspectError as err:
                    self.status.error("swarm", f"GET /services: {err}")
                    continue
                services[service.id] = service
            if self.swarm_vip or self.watch_leader:
                status = (await self.docker.node(manager_id)).get("ManagerStatus")
                leader = isinstance(status, dict) and status.get("Leader") is True
                duty = "writing VIP registrations" if self.swarm_vip else "reaping lost nodes"
                self.leader = _role_changed("the Swarm leader", self.leader, leader, duty)
            if self.swarm_vip:
                await self._refresh_networks()
        except DockerError as err:
            self.status.error("swarm", f"full reconcile: cannot read Swarm state: {err}", True)
            self.status.retry_needed = True
            self.readable = False
            return set()
        self.status.answered("swarm")
        self.readable = True
        self._services = dict(services)
        self._stale.clear()
        images = {service.image for service in services.values()}
        self._image_ports = {k: v for k, v in self._image_ports.items() if k in images}
        if not self.swarm_vip:
            return set()
        return {vip_key(service_id) for service_id in services} | vip_keys_held

    async def _refresh_networks(self) -> None:
        usable: dict[str, str] = {}
        known: set[str] = set()
        for network in await self.docker.networks():
            network_id, name = network.get("Id"), network.get("Name")
            if not isinstance(network_id, str) or not isinstance(name, str):
                continue
            known.add(network_id)
            if network.get("Ingress") is not True:
                usable[network_id] = name
        self._networks = _Networks(usable, frozenset(known))

    async def _service(self, service_id: str) -> SwarmService | None:
        """What a manager says of one service; cached until an event or a resync."""
        known = service_id in self._services
        if known and service_id not in self._stale:
            return self._services[service_id]
        try:
            document = await self.docker.service(service_id)
            service = parse_service(document) if document is not None else None
        except InspectError as err:
            self.status.error("swarm", f"service {service_id[:12]}: {err}")
            service = None
        except DockerError as err:
            if not known:
                raise
            # Keep the last answer: dropping a task's routing-mesh port over one failed
            # read would deregister it until the next read works.
            self.status.error("swarm", f"service {service_id[:12]}: {err}", err.transient)
            self.status.retry_needed = True
            return self._services[service_id]
        self.status.answered("swarm")
        self._stale.discard(service_id)
        if service is None:
            # Removed: not remembered, so removed services do not pile up between resyncs.
            self._services.pop(service_id, None)
            return None
        self._services[service_id] = service
        return service

    async def attach(self, container: Container | None) -> Container | None:
        """A task container with what its Swarm service says (published ports), on a manager."""
        if container is None or not self.manager_id or not container.running:
            return container
        service_id = task_service_id(container)
        if not service_id:
            return container
        return replace(container, swarm_service=await self._service(service_id))

    async def vip_container(self, key: str) -> Container | None:
        """-swarm-vip: the service as one container at its VIPs, if this node should write it.

        Only the Swarm leader's agent writes VIP registrations, so several managers running
        registrator do not each register every service; an agent that is not (or no longer)
        the leader gets None here and so removes any it still holds.
        """
        if not (self.swarm_vip and self.manager_id and self.leader):
            return None
        service = await self._service(key.split(":", 1)[1])
        if service is None or service.endpoint_mode != "vip":
            return None
        if not self._networks.known.issuperset(service.virtual_ips):
            await self._refresh_networks()  # a network created since the last listing
        return vip_container(service, self._networks.names, await self._image_exposed(service))

    async def _image_exposed(self, service: SwarmService) -> tuple[ContainerPort, ...]:
        """The ports the service's image EXPOSEs, if this engine has the image."""
        if not service.image:
            return ()
        if service.image not in self._image_ports:
            document = await self.docker.image(service.image)
            if len(self._image_ports) >= IMAGE_PORTS_KEPT:
                # Bounded between resyncs too (-resync 0): every deploy may name a new tag.
                self._image_ports.pop(next(iter(self._image_ports)))
            self._image_ports[service.image] = image_exposed_ports(document)
        return self._image_ports[service.image]


def _role_changed(role: str, before: T, now: T, duty: str) -> T:
    """Log once when this engine gains or loses `role` (and with it `duty`)."""
    if bool(now) != bool(before):
        log.warning(
            "this engine %s %s: %s %s",
            "is now" if now else "is no longer",
            role,
            "starts" if now else "stops",
            duty,
        )
    return now
