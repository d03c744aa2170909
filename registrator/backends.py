"""The two clients as the shell sees them: what reconciler, Swarm view, check runner and agent
call on Docker and Consul. DockerClient and ConsulClient satisfy these; unit tests hand in small
in-memory fakes of them instead (tests/unit/fakes.py).

Errors: DockerError / ConsulError, whose `transient` says whether a retry may help.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from registrator.docker import ExecResult
from registrator.option_values import ConsulEndpoint


class DockerAPI(Protocol):
    """Docker Engine API reads (https://docs.docker.com/engine/api/), plus exec."""

    @property
    def host(self) -> str: ...

    async def negotiate(self) -> str: ...

    async def info(self) -> dict[str, Any]: ...

    async def list_containers(self) -> list[dict[str, Any]]: ...

    async def inspect(self, container_id: str) -> dict[str, Any] | None: ...

    async def service(self, service_id: str) -> dict[str, Any] | None: ...

    async def services(self) -> list[dict[str, Any]]: ...

    async def networks(self) -> list[dict[str, Any]]: ...

    async def node(self, node_id: str) -> dict[str, Any]: ...

    async def nodes(self) -> list[dict[str, Any]]: ...

    async def image(self, reference: str) -> dict[str, Any] | None: ...

    def events(self, since: str | None) -> AsyncIterator[dict[str, Any]]: ...

    async def exec_run(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - bounds the exec, not this call's caller
    ) -> ExecResult: ...


class ConsulAPI(Protocol):
    """Consul agent HTTP API (https://developer.hashicorp.com/consul/api-docs/agent)."""

    endpoint: ConsulEndpoint
    writes: int  # write requests sent, for /metrics

    async def agent_self(self) -> dict[str, Any]: ...

    async def services(self) -> dict[str, dict[str, Any]]: ...

    async def service(self, service_id: str) -> dict[str, Any] | None: ...
    async def checks(self) -> dict[str, dict[str, Any]]: ...

    async def register(self, body: Mapping[str, Any]) -> None: ...

    async def deregister(self, service_id: str) -> None: ...

    async def update_check(self, check_id: str, status: str, output: str) -> None: ...

    async def service_maintenance(self, service_id: str, enable: bool, reason: str) -> None: ...
