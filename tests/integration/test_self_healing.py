"""Self-healing without resyncs (issue 13, items 4-7): the real CLI with `-resync 0`, a Consul
of the test's own (stopped and started again without state on the same port), the real Docker
engine. Nothing here waits for a periodic full reconcile: there is none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from tests.conftest import StartProcess
from tests.helpers import ConsulAgent, ContainerFactory, free_port, wait_until
from tests.helpers_cli import (
    RegistratorProcess,
    kill_consul,
    services_of,
    start_consul_at,
    unique_node,
)


@dataclass
class Healing:
    """A Consul of the test's own that it can stop and start again empty on the same port,
    and one `-resync 0` agent (the CLI) pointed at it."""

    data: Path
    port: int
    start_process: StartProcess
    consul: ConsulAgent = field(init=False)
    node: str = field(default_factory=lambda: unique_node("heal"))

    def __post_init__(self) -> None:
        self.consul = start_consul_at(self.data, self.port)

    def agent(self, *flags: str) -> RegistratorProcess:
        return self.start_process(
            "-resync", "0", *flags, node=self.node, consul=f"consul://127.0.0.1:{self.port}"
        )

    def stop_consul(self) -> None:
        kill_consul(self.consul)

    def start_consul(self) -> None:
        """Without the state it had: a dev agent keeps none."""
        self.consul = start_consul_at(self.data, self.port)

    def services(self, container: Container) -> dict[str, dict[str, Any]]:
        return services_of(self.consul, self.node, container.id)

    def wait_registered(
        self, container: Container, agent: RegistratorProcess, timeout: float = 10
    ) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = wait_until(
            lambda: self.services(container),
            timeout=timeout,
            message=f"{container.name} not registered:\n{agent.stderr()[-2000:]}",
        )
        return found

    def labels(self, **more: str) -> dict[str, str]:
        return {"SERVICE_NAME": f"heal-{self.node}", "SERVICE_PORT": "80", **more}


@pytest.fixture
def healing(tmp_path: Path, start_process: StartProcess) -> Iterator[Healing]:
    setup = Healing(tmp_path / "consul", free_port(), start_process)
    try:
        yield setup
    finally:
        setup.consul.stop()


def test_registration_missed_while_consul_was_down_lands_when_it_returns(
    healing: Healing, containers: ContainerFactory
) -> None:
    agent = healing.agent()
    healing.stop_consul()
    # The start event arrives while Consul is down: the registration fails.
    container = containers.run(labels=healing.labels())
    wait_until(
        lambda: agent.lines_with("looks unreachable"),
        timeout=10,
        message=f"the failed registration was not logged:\n{agent.stderr()[-2000:]}",
    )
    time.sleep(2)  # a few retries into the outage
    healing.start_consul()
    # The retry backoff is at most 8 s this early in the outage.
    healing.wait_registered(container, agent, timeout=20)
    # Converged by the container's own retry: the startup's is the only full reconcile.
    assert agent.metrics()['registrator_reconciles_total{scope="full"}'] == 1


def test_long_healthy_container_stays_passing_past_the_mirror_ttl(
    healing: Healing, containers: ContainerFactory
) -> None:
    agent = healing.agent("-docker-health-ttl", "3")
    container = containers.run(
        labels=healing.labels(),
        healthcheck={
            "test": ["CMD-SHELL", "true"],
            "interval": 1_000_000_000,
            "timeout": 1_000_000_000,
            "retries": 1,
        },
    )
    (service_id,) = healing.wait_registered(container, agent)
    mirror = f"service:{service_id}:docker-health"

    def status() -> str:
        return str(healing.consul.checks().get(mirror, {}).get("Status", ""))

    wait_until(lambda: status() == "passing", timeout=10, message="mirror passing")
    # Docker sends health_status only on a change: from here on, no event comes. Four TTLs
    # later the check is still passing, the agent refreshing it every second.
    seen = set()
    until = time.monotonic() + 12
    while time.monotonic() < until:
        seen.add(status())
        time.sleep(0.25)
    assert seen == {"passing"}, f"the mirror expired in between: {seen}"


def test_consul_restarted_without_state_is_repaired_without_a_resync(
    healing: Healing, containers: ContainerFactory
) -> None:
    agent = healing.agent("-ttl", "6")
    boxes = [containers.run(labels=healing.labels()) for _ in range(2)]
    for box in boxes:
        healing.wait_registered(box, agent)
    healing.stop_consul()
    healing.start_consul()
    assert not any(healing.services(box) for box in boxes)
    # The next heartbeat (every 3 s) answers "Unknown check ID": the agent re-registers.
    for box in boxes:
        healing.wait_registered(box, agent, timeout=15)
    assert len(agent.lines_with("lost its state")) == 1, agent.stderr()[-2000:]


def test_container_removed_in_an_outage_leaves_no_exec_or_error_loop(
    healing: Healing, containers: ContainerFactory
) -> None:
    agent = healing.agent("-ttl", "4", "-log-level", "debug")
    box = containers.run(
        labels=healing.labels(SERVICE_CHECK_SCRIPT="true", SERVICE_CHECK_INTERVAL="1s")
    )
    healing.wait_registered(box, agent)
    healing.stop_consul()
    box.remove(force=True)
    time.sleep(3)  # the destroy event's deregistration fails; retried with backoff
    healing.start_consul()
    back = len(agent.lines())
    time.sleep(10)  # ten script intervals, five heartbeats
    after = agent.lines()[back:]
    assert not healing.services(box)
    errors = [line for line in after if " ERROR " in line]
    assert errors == [], "\n".join(errors)
    # Neither an exec into the removed container nor an update of its checks.
    stale = [line for line in after if "404" in line or "No such container" in line]
    assert len(stale) <= 2, "\n".join(stale)
    assert not [line for line in after if "exec" in line and box.id[:12] in line]
