"""Small in-memory fakes of OUR client interfaces (registrator.backends.DockerAPI / ConsulAPI),
for unit tests of the Reconciler and the Agent. Not fakes of HTTP: they answer what our clients
would return, documents built from the captured `docker inspect` fixtures.

`gate(name)` makes the next calls of one method wait until the test opens it, to put a call
"in flight" at a chosen moment; `down` makes every call fail like a refused connection.
FakeConsul's `forbidden` (method name → service id prefixes) answers 403 as an ACL policy
without service:write on those prefixes would; `lose_state()` is a Consul restarted without
data (its TTL updates then answer 404 "Unknown check ID", as Consul's do).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from registrator.consul import ConsulError
from registrator.docker import DockerError, ExecResult
from registrator.option_values import ConsulEndpoint
from tests.unit.builders import inspect_document

NODE = "node1"
A = "a" * 64  # container ids
B = "b" * 64


def sid(name: str) -> str:
    """The id registrator gives the service of container `name` built by container_document."""
    return f"{NODE}:{name}:80"


def container_document(
    container_id: str,
    name: str,
    labels: Mapping[str, str] | None = None,
    running: bool = True,
    exit_code: int = 0,
) -> dict[str, Any]:
    """A `docker inspect` answer: the captured bridge container publishing 80 on 8080."""
    document = inspect_document("bridge-published")
    document["Id"] = container_id
    document["Name"] = f"/{name}"
    document["Config"]["Labels"] = dict(labels or {})
    document["Config"]["Env"] = []
    state = document["State"]
    state.update(Running=running, ExitCode=exit_code, Status="running" if running else "exited")
    return document


class Gates:
    """Per-method gates: a closed gate holds calls until opened; `entered` says one arrived."""

    def __init__(self) -> None:
        self._gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}

    def close(self, name: str) -> None:
        self._gates[name] = asyncio.Event()
        self.entered[name] = asyncio.Event()

    def open(self, name: str) -> None:
        self._gates.pop(name).set()

    async def pass_(self, name: str) -> None:
        gate = self._gates.get(name)
        if gate is not None:
            self.entered[name].set()
            await gate.wait()


class FakeDocker:
    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.gates = Gates()
        self.down = False
        self.calls: dict[str, int] = {}
        self._events: asyncio.Queue[dict[str, Any] | Exception | None] = asyncio.Queue()
        self.execs: list[str] = []  # container ids exec'd into
        self.since: list[str | None] = []  # the `since` of each events() call

    # --- test controls ------------------------------------------------------------------

    def run(self, container_id: str, name: str, **kwargs: Any) -> None:
        self.documents[container_id] = container_document(container_id, name, **kwargs)

    def exit(self, container_id: str, exit_code: int) -> None:
        state = self.documents[container_id]["State"]
        state.update(
            Running=False,
            ExitCode=exit_code,
            Status="exited",
            FinishedAt="2026-11-30T03:04:05.123456789Z",
        )
        # Docker drops the published ports (and the address) of a stopped container.
        self.documents[container_id]["NetworkSettings"]["Ports"] = {}

    def remove(self, container_id: str) -> None:
        self.documents.pop(container_id, None)

    def emit(self, action: str, container_id: str, **attributes: str) -> None:
        self._events.put_nowait(
            {
                "Type": "container",
                "Action": action,
                "Actor": {"ID": container_id, "Attributes": attributes},
                "timeNano": 1_700_000_000_000_000_000,
            }
        )

    def break_stream(self) -> None:
        self._events.put_nowait(DockerError("GET /events: connection reset"))

    # --- DockerAPI ----------------------------------------------------------------------

    async def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        await self.gates.pass_(name)
        if self.down:
            raise DockerError(f"{name}: connection refused")

    @property
    def host(self) -> str:
        return "unix:///fake/docker.sock"

    async def negotiate(self) -> str:
        await self._call("negotiate")
        return "1.43"

    async def info(self) -> dict[str, Any]:
        await self._call("info")
        return {"Name": NODE, "Swarm": {"LocalNodeState": "inactive"}}

    async def list_containers(self) -> list[dict[str, Any]]:
        await self._call("list_containers")
        return [
            {"Id": cid, "State": document["State"]["Status"]}
            for cid, document in self.documents.items()
        ]

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        # The answer is read when the call starts: a removal while it is in flight is not seen.
        document = copy.deepcopy(self.documents.get(container_id))
        await self._call("inspect")
        return document

    async def service(self, service_id: str) -> dict[str, Any] | None:
        await self._call("service")
        return None

    async def services(self) -> list[dict[str, Any]]:
        await self._call("services")
        return []

    async def networks(self) -> list[dict[str, Any]]:
        await self._call("networks")
        return []

    async def node(self, node_id: str) -> dict[str, Any]:
        await self._call("node")
        return {}

    async def image(self, reference: str) -> dict[str, Any] | None:
        await self._call("image")
        return None

    async def events(self, since: str | None) -> AsyncIterator[dict[str, Any]]:
        self.since.append(since)
        await self._call("events")
        yield {"Type": "registrator", "Action": "subscribed"}
        while True:
            item = await self._events.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def exec_run(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - mirrors DockerClient.exec_run
    ) -> ExecResult:
        await self._call("exec_run")
        self.execs.append(container_id)
        if container_id not in self.documents:
            raise DockerError(
                f"POST /containers/{container_id}/exec: HTTP 404: No such container",
                status=404,
                transient=False,
            )
        return ExecResult(0, "ok")


class FakeConsul:
    def __init__(self) -> None:
        self.endpoint = ConsulEndpoint("http", "127.0.0.1", 8500)
        self.writes = 0
        self.entries: dict[str, dict[str, Any]] = {}  # as GET /v1/agent/services answers
        self.check_updates: list[tuple[str, str, str]] = []
        self.maintenance: list[tuple[str, bool]] = []
        self.in_maintenance: dict[str, str] = {}  # service id → reason
        self.registers: list[str] = []
        self.deregisters: list[str] = []
        self.check_ids: set[str] = set()  # check ids the agent holds
        self.gates = Gates()
        self.down = False
        self.forbidden: dict[str, tuple[str, ...]] = {}
        self.calls: dict[str, int] = {}

    def lose_state(self) -> None:
        self.entries.clear()
        self.check_ids.clear()

    async def _call(self, name: str, write: bool = False, target: str = "") -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        await self.gates.pass_(name)
        if self.down:
            raise ConsulError(f"{name}: connection refused")
        prefixes = self.forbidden.get(name)
        if prefixes is not None and target.startswith(prefixes):
            raise ConsulError(
                f"{name}: HTTP 403: Permission denied: token lacks permission", 403, False
            )
        self.writes += write

    async def agent_self(self) -> dict[str, Any]:
        await self._call("agent_self")
        return {"Config": {"NodeName": NODE}, "Member": {"Addr": "192.0.2.10"}}

    async def services(self) -> dict[str, dict[str, Any]]:
        await self._call("services")
        return copy.deepcopy(self.entries)

    async def service(self, service_id: str) -> dict[str, Any] | None:
        await self._call("service")
        return copy.deepcopy(self.entries.get(service_id))

    async def checks(self) -> dict[str, dict[str, Any]]:
        """Only the maintenance checks (what the agent reads checks for)."""
        await self._call("checks")
        return {
            f"_service_maintenance:{service_id}": {"ServiceID": service_id, "Notes": reason}
            for service_id, reason in self.in_maintenance.items()
        }

    async def register(self, body: Mapping[str, Any]) -> None:
        await self._call("register", write=True, target=body["ID"])
        # As the real agent with ?replace-existing-checks: maintenance is dropped.
        self.in_maintenance.pop(body["ID"], None)
        self.registers.append(body["ID"])
        self.check_ids.update(check["CheckID"] for check in body.get("Checks", ()))
        self.entries[body["ID"]] = {
            "ID": body["ID"],
            "Service": body["Name"],
            "Address": body["Address"],
            "Port": body["Port"],
            "Tags": list(body.get("Tags", [])),
            "Meta": dict(body["Meta"]),
        }

    async def deregister(self, service_id: str) -> None:
        await self._call("deregister", write=True, target=service_id)
        self.deregisters.append(service_id)
        self.entries.pop(service_id, None)

    async def update_check(self, check_id: str, status: str, output: str) -> None:
        await self._call("update_check", write=True)
        if check_id not in self.check_ids:
            raise ConsulError(
                f'PUT /v1/agent/check/update/{check_id}: HTTP 404: Unknown check ID "{check_id}"',
                404,
                False,
            )
        self.check_updates.append((check_id, status, output))

    async def service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        await self._call("service_maintenance", write=True)
        self.maintenance.append((service_id, enable))
        if enable:
            self.in_maintenance[service_id] = reason
        else:
            self.in_maintenance.pop(service_id, None)


async def until(predicate: Callable[[], bool], what: str, seconds: float = 2.0) -> None:
    """Poll `predicate` on the event loop until it holds; fail naming `what` after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for: {what}")
        await asyncio.sleep(0.002)
