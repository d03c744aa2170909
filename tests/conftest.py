"""Fixtures for the integration and e2e tests: a real Consul agent and real Docker containers.

Fixtures are lazy, so unit tests that use none of them need neither Consul nor Docker. The
machinery behind them (agent startup, container and network factories) is in tests/helpers.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors
import pytest

from tests.helpers import (
    DEFAULT_TEST_IMAGE,
    TEST_IMAGE_ENV,
    ConsulAgent,
    ContainerFactory,
    NetworkFactory,
    find_consul_bin,
    make_consul_agent,
    remove_stale_resources,
)
from tests.helpers_cli import RegistratorProcess

_CONSUL_FIXTURES = {"consul_bin", "consul_agent", "consul", "consul_factory"}
_DOCKER_FIXTURES = {"docker_client", "test_image", "containers", "docker_network"}

# The engine lane (scripts/test sets it with DOCKER_HOST): docker20, docker29 or podman.
ENGINE = os.environ.get("REGISTRATOR_TEST_ENGINE") or "docker20"
ENGINES = ("docker20", "docker29", "podman")
_deselected_by_engine: list[tuple[str, str]] = []


# trylast: after -m and -k have deselected, so the summary lists only what the engine took away.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Mark by fixture use, so `-m "not docker"` works without every test remembering a marker.
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _CONSUL_FIXTURES:
            item.add_marker(pytest.mark.consul)
        if names & _DOCKER_FIXTURES:
            item.add_marker(pytest.mark.docker)
    # `@pytest.mark.engines("docker20", reason=...)`: a test that cannot apply to the other
    # engines is deselected in their lanes, and the summary says which and why.
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("engines")
        if marker is None or ENGINE in marker.args:
            kept.append(item)
            continue
        unknown = set(marker.args) - set(ENGINES)
        if unknown:
            raise pytest.UsageError(f"{item.nodeid}: unknown engines {sorted(unknown)}")
        reason = marker.kwargs.get("reason")
        if not reason:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.engines needs a reason=")
        dropped.append(item)
        _deselected_by_engine.append((item.nodeid, str(reason)))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _deselected_by_engine:
        terminalreporter.section(f"not for the {ENGINE} engine (deselected)")
        for nodeid, reason in _deselected_by_engine:
            terminalreporter.write_line(f"{nodeid}: {reason}")


# --------------------------------------------------------------------------------------------
# Consul


@pytest.fixture(scope="session")
def consul_bin() -> str:
    path = find_consul_bin()
    if not path:
        pytest.fail(
            "no consul binary: set CONSUL_BIN or put consul on PATH "
            "(scripts/test builds one with scripts/lib/build-consul.sh)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def consul_agent(
    consul_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsulAgent]:
    """One `consul agent -dev` for the whole session; tests should use `consul` instead."""
    try:
        agent = make_consul_agent(tmp_path_factory.mktemp("consul"), consul_bin=consul_bin)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def consul(consul_agent: ConsulAgent) -> ConsulAgent:
    """The session's Consul agent, emptied of every service, check and KV entry."""
    if not consul_agent.is_running():
        pytest.fail(
            f"the session's consul agent exited (code {consul_agent.process.returncode}); "
            f"log {consul_agent.log_path}:\n{consul_agent.log_tail()}",
            pytrace=False,
        )
    consul_agent.reset()
    return consul_agent


@pytest.fixture
def consul_factory(consul_bin: str, tmp_path: Path) -> Iterator[Callable[..., ConsulAgent]]:
    """Starts extra agents (ACLs, TLS, ...): `consul_factory(extra_args=[...], config={...})`.

    Takes the keyword arguments of `tests.helpers.make_consul_agent`; every agent is stopped at
    teardown.
    """
    agents: list[ConsulAgent] = []

    def start(
        extra_args: Sequence[str] = (), config: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> ConsulAgent:
        agent = make_consul_agent(
            tmp_path / f"consul-{len(agents)}",
            extra_args,
            config,
            consul_bin=kwargs.pop("consul_bin", consul_bin),
            **kwargs,
        )
        agents.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop()


# --------------------------------------------------------------------------------------------
# Docker


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client for the local Docker engine.

    Leftovers of earlier killed runs are removed here, when a session first needs Docker, rather
    than in an autouse fixture: a unit-test-only run must work without a Docker daemon.
    """
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"the Docker daemon does not answer (DOCKER_HOST={os.environ.get('DOCKER_HOST')!r}): "
            f"{exc}\nStart it with `scripts/lib/ensure-docker.sh .cache/docker`, or run the suite"
            " through scripts/test, which does.",
            pytrace=False,
        )
    remove_stale_resources(client)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def test_image(docker_client: docker.DockerClient) -> str:
    image = os.environ.get(TEST_IMAGE_ENV, DEFAULT_TEST_IMAGE)
    try:
        docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        pytest.fail(
            f"test image {image!r} is missing: run scripts/test (or"
            " scripts/lib/build-test-images.sh) to build it",
            pytrace=False,
        )
    return image


@pytest.fixture
def docker_network(
    docker_client: docker.DockerClient, request: pytest.FixtureRequest
) -> Iterator[NetworkFactory]:
    factory = NetworkFactory(docker_client, request.node.nodeid, request.node.name)
    try:
        yield factory
    finally:
        factory.remove_all()


@pytest.fixture
def containers(
    docker_client: docker.DockerClient,
    test_image: str,
    docker_network: NetworkFactory,
    request: pytest.FixtureRequest,
) -> Iterator[ContainerFactory]:
    # Depending on docker_network makes pytest tear this fixture down first, so the containers
    # are gone before their networks are removed.
    factory = ContainerFactory(docker_client, test_image, request.node.nodeid, request.node.name)
    try:
        yield factory
    finally:
        errors = factory.remove_all()
        if errors:
            pytest.fail("could not remove test containers:\n" + "\n".join(errors), pytrace=False)


# --------------------------------------------------------------------------------------------
# registrator as a real process


class StartProcess(Protocol):
    def __call__(
        self,
        *flags: str,
        node: str,
        consul: str,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> RegistratorProcess: ...


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[StartProcess]:
    """Factory: `registrator FLAGS` as a real process, ready unless `wait=False`; every
    process still running at teardown is killed."""
    started: list[RegistratorProcess] = []

    def start(
        *flags: str,
        node: str,
        consul: str,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> RegistratorProcess:
        agent = RegistratorProcess.start(tmp_path, *flags, node=node, consul=consul, env=env)
        started.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    yield start
    for agent in started:
        agent.kill()
