"""Reading containers from Docker, with a cache of the last inspect of each.

A full reconcile lists every container; a container whose listed state matches its cached
inspect needs no new inspect. Events drop a container's entry (it changed), a Docker reconnect
drops all of them (events may have been missed). Also which containers share another's network
stack (`--network container:X`): they are reached at X's address, so X changing changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from registrator.backends import DockerAPI
from registrator.containers import InspectError, parse_container
from registrator.model import Container
from registrator.status import Status
from registrator.swarm import task_service_id


@dataclass
class _Cached:
    state: str
    container: Container


class Inspects:
    def __init__(self, docker: DockerAPI, status: Status) -> None:
        self.docker = docker
        self.status = status
        self._cache: dict[str, _Cached] = {}
        # `--network container:X`: X's id → the containers sharing its stack.
        self._stack_dependents: dict[str, set[str]] = {}
        self._stack_owner: dict[str, str] = {}  # the reverse: container → X's id

    def forget(self, container_id: str) -> None:
        self._cache.pop(container_id, None)

    def clear(self) -> None:
        self._cache.clear()

    def tasks_of(self, service_id: str) -> list[str]:
        """The cached containers that are tasks of Swarm service `service_id`."""
        return [
            cid
            for cid, cached in self._cache.items()
            if task_service_id(cached.container) == service_id
        ]

    def stack_dependents(self, container_id: str) -> list[str]:
        """The containers last read as sharing this container's network stack (sorted)."""
        return sorted(self._stack_dependents.get(container_id, ()))

    async def list_states(self) -> dict[str, str]:
        """Every container's id → its State in a fresh listing. Raises DockerError."""
        listed = await self.docker.list_containers()
        return {str(item["Id"]): str(item.get("State", "")) for item in listed}

    async def with_network_owner(self, key: str, container: Container | None) -> Container | None:
        """`container` (just read for `key`) with the container whose network stack it shares,
        read now; and remember the pair, so that a change of the owner reaches `key`.
        Raises DockerError."""
        previous = self._stack_owner.pop(key, None)
        if previous is not None:
            dependents = self._stack_dependents.get(previous, set())
            dependents.discard(key)
            if not dependents:
                self._stack_dependents.pop(previous, None)
        if container is None or not container.network_owner_ref:
            return container
        owner = await self.read(container.network_owner_ref, None, True, True)
        if owner is not None:
            self._stack_owner[key] = owner.id
            self._stack_dependents.setdefault(owner.id, set()).add(key)
        return replace(container, network_owner=owner)

    async def read(
        self, container_id: str, list_state: str | None, force: bool, holds_services: bool
    ) -> Container | None:
        """The container, or None if it is gone or needs no look.

        `list_state`: its State in the last listing (None: not listed, or no listing).
        Raises DockerError when Docker cannot be read.
        """
        cached = self._cache.get(container_id)
        # Exited/created containers need a look only if they hold services: -deregister
        # on-success needs the exit code, and a list taken just before the container started
        # still says "created" while an event has already registered it. If an inspect made
        # since disagrees with the list, the list is stale, so look instead of deregistering;
        # events drop that cache, so holding services is reason enough to look.
        if (
            list_state is not None
            and list_state not in {"running", "paused", "restarting"}
            and (cached is None or cached.state == list_state)
            and not holds_services
        ):
            self._cache.pop(container_id, None)
            return None
        # A container with a HEALTHCHECK is looked at again on every full reconcile: its health
        # is not in the list, and not every engine sends health events (Podman 4.3.1 sends one
        # per probe, some versions none), so a resync is what keeps the mirror right there.
        if (
            cached is not None
            and not force
            and cached.state == list_state
            and cached.container.health is None
        ):
            return cached.container
        document = await self.docker.inspect(container_id)
        self.status.answered("docker")
        if document is None:
            self._cache.pop(container_id, None)
            return None
        try:
            container = parse_container(document)
        except InspectError as err:
            self.status.error("docker", f"container {container_id[:12]}: {err}")
            return None
        self._cache[container_id] = _Cached(list_state_of(container), container)
        return container


def list_state_of(container: Container) -> str:
    """The word `docker ps` shows in State, to compare a cached inspect with a fresh list."""
    if container.paused:
        return "paused"
    if container.restarting:
        return "restarting"
    return "running" if container.running else "exited"
