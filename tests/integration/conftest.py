"""Runs the registrator agent in-process against the real Docker engine and the real Consul agent.

`start_agent(*flags, node=...)` parses gliderlabs-style flags with the package's own parser
(`registrator.arguments.parse_args`), builds the real Docker and Consul clients and runs
`Agent.run(stop)` as a task on the test's event loop until `agent.ready`. Every agent gets a
`-node` of its own (`it-<random>` unless the test passes one), so concurrent tests and test
sessions sharing the Docker engine never own the same services. Service ids are therefore
`<node>:<container-name>:<port>`.

Everything a test asserts about is filtered to its own node or its own containers: another
session on the same dockerd may run labelled containers at any time, and the agent under test
registers those too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import pytest

from registrator.agent import Agent
from registrator.arguments import parse_args
from registrator.consul import ConsulClient
from registrator.docker import DockerClient
from registrator.model import META_CONTAINER, META_NODE
from registrator.settings import Settings
from tests.helpers import ConsulAgent, ConsulHTTPError, async_wait_until

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# The agent acts on an event within a second; this much only absorbs a heavily loaded host
# (other sessions share the Docker engine), and is paid only when a test fails.
EVENT_TIMEOUT = 20.0

# Only what the agent needs from the environment: any REGISTRATOR_* or CONSUL_* variable of the
# developer's shell must not change what a test runs.
_PASSED_ENV = ("DOCKER_HOST",)


def unique_node() -> str:
    return f"it-{secrets.token_hex(4)}"


def agent_environ() -> dict[str, str]:
    return {name: os.environ[name] for name in _PASSED_ENV if os.environ.get(name)}


@dataclass
class RunningAgent:
    """One in-process agent, plus read helpers scoped to what it owns."""

    node: str
    settings: Settings
    agent: Agent
    docker: DockerClient
    consul_client: ConsulClient
    consul: ConsulAgent
    stop_event: asyncio.Event
    task: asyncio.Task[None]
    closed: bool = field(default=False)

    # -- reads ------------------------------------------------------------------------------

    def owned(self) -> dict[str, dict[str, Any]]:
        """Services in the Consul agent whose ownership meta names this agent's node."""
        return {
            sid: entry
            for sid, entry in self.consul.services().items()
            if (entry.get("Meta") or {}).get(META_NODE) == self.node
        }

    def of_containers(self, *container_ids: str) -> dict[str, dict[str, Any]]:
        """This node's services for the given containers (full ids), by service id."""
        wanted = set(container_ids)
        return {
            sid: entry
            for sid, entry in self.owned().items()
            if (entry.get("Meta") or {}).get(META_CONTAINER) in wanted
        }

    def service_id(self, container_name: str, port: int | str) -> str:
        return f"{self.node}:{container_name}:{port}"

    # -- waits ------------------------------------------------------------------------------

    def _alive(self) -> None:
        """Fails at once, with the agent's own error, if it ended while a test waits on it."""
        if self.task.done() and not self.closed:
            self.task.result()  # re-raises what ended it
            raise AssertionError(f"agent {self.node} returned while the test still needed it")

    async def wait_registered(
        self,
        *service_ids: str,
        timeout: float = EVENT_TIMEOUT,  # noqa: ASYNC109 - same meaning as async_wait_until
    ) -> dict[str, dict[str, Any]]:
        """Waits until every id is in Consul; returns those entries."""

        def present() -> dict[str, dict[str, Any]] | None:
            self._alive()
            services = self.consul.services()
            if all(sid in services for sid in service_ids):
                return {sid: services[sid] for sid in service_ids}
            return None

        found = await async_wait_until(
            present,
            timeout=timeout,
            message=f"node {self.node}: services {sorted(service_ids)} were not registered; "
            f"this node has {sorted(self.owned())}",
        )
        assert found is not None
        return found

    async def wait_deregistered(
        self,
        *service_ids: str,
        timeout: float = EVENT_TIMEOUT,  # noqa: ASYNC109 - same meaning as async_wait_until
    ) -> None:
        def gone() -> bool:
            self._alive()
            return not set(service_ids) & set(self.consul.services())

        await async_wait_until(
            gone,
            timeout=timeout,
            message=f"node {self.node}: services {sorted(service_ids)} are still registered",
        )

    async def full_reconcile(self) -> None:
        """Runs one full reconcile that starts now (they are serialised), and checks it worked.

        The barrier for "nothing happened": once it returns, every container that existed
        before the call has been compared with Consul at least once after it.
        """
        assert self.agent.reconciler is not None
        assert await self.agent.reconciler.full_reconcile(), "full reconcile reported failure"

    # -- lifecycle --------------------------------------------------------------------------

    async def stop(self) -> None:
        """A clean shutdown, as after SIGTERM."""
        if self.closed:
            return
        self.stop_event.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=STOP_TIMEOUT)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            raise AssertionError(
                f"agent {self.node} did not stop within {STOP_TIMEOUT} s"
            ) from None
        finally:
            await self._close()

    async def kill(self) -> None:
        """Abandons the agent without a shutdown request: the nearest to SIGKILL in-process.

        Its task is cancelled (no stop event, so no -deregister-on-exit) and its connections are
        dropped; whatever it registered stays in Consul.
        """
        if self.closed:
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=STOP_TIMEOUT)
        await self._close()

    async def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.docker.close()
        await self.consul_client.close()


class StartAgent(Protocol):
    async def __call__(
        self,
        *flags: str,
        node: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> RunningAgent: ...


@pytest.fixture
async def start_agent(consul: ConsulAgent) -> AsyncIterator[StartAgent]:
    """Factory: `await start_agent("-internal", "-resync", "1")` → a ready RunningAgent.

    Flags are gliderlabs/registrator command-line flags; `-node` and the Consul URI of the
    session's Consul agent are added. Every agent still running at teardown is stopped cleanly.
    """
    started: list[RunningAgent] = []

    async def start(
        *flags: str, node: str | None = None, environ: Mapping[str, str] | None = None
    ) -> RunningAgent:
        node = node or unique_node()
        argv = [
            # Consul and Docker are up; a test must fail fast instead of retrying forever.
            "-retry-attempts",
            "5",
            "-retry-interval",
            "200",
            *flags,
            "-node",
            node,
            f"consul://{consul.http_addr}",
        ]
        command = parse_args(argv, agent_environ() if environ is None else environ)
        assert command.action == "run", argv
        settings = command.settings
        docker = DockerClient(settings.docker_host)
        consul_client = ConsulClient(settings.consul, token=settings.consul_token)
        agent = Agent(settings, docker, consul_client)
        stop_event = asyncio.Event()
        task = asyncio.create_task(agent.run(stop_event), name=f"agent {node}")
        running = RunningAgent(
            node=node,
            settings=settings,
            agent=agent,
            docker=docker,
            consul_client=consul_client,
            consul=consul,
            stop_event=stop_event,
            task=task,
        )
        started.append(running)

        def ready_or_dead() -> bool:
            return agent.ready or task.done()

        await async_wait_until(
            ready_or_dead,
            timeout=READY_TIMEOUT,
            message=f"agent {node} ({' '.join(argv)}) did not become ready",
        )
        if task.done():
            # Re-raises what ended the agent (e.g. StartupError) with its traceback.
            task.result()
            raise AssertionError(f"agent {node} returned before it was ready")
        return running

    try:
        yield start
    finally:
        errors: list[str] = []
        for running in reversed(started):
            try:
                await running.stop()
            except Exception as exc:  # report every agent, not just the first failure
                errors.append(f"{running.node}: {type(exc).__name__}: {exc}")
        # What the agents registered stays in the session's Consul agent after they stop; remove
        # it, so the next test's `consul` reset starts from services nobody else depends on.
        for node in {running.node for running in started}:
            errors.extend(remove_services_of_node(consul, node))
        if errors:
            pytest.fail("agents did not stop cleanly:\n" + "\n".join(errors), pytrace=False)


def remove_services_of_node(consul: ConsulAgent, node: str) -> list[str]:
    """Deregisters every service whose ownership meta names `node`; returns failures.

    Sidecar proxies copy their parent's Meta and go away with it, so a 404 for one is success.
    """
    errors = []
    owned = [
        (bool(entry.get("Kind")), sid)
        for sid, entry in consul.services().items()
        if (entry.get("Meta") or {}).get(META_NODE) == node
    ]
    for _, service_id in sorted(owned):
        try:
            consul.put(f"/v1/agent/service/deregister/{quote(service_id, safe='')}")
        except ConsulHTTPError as exc:
            if exc.status != 404:
                errors.append(f"{node}: deregister {service_id}: {exc}")
    return errors
