"""Self-healing without resyncs (issue 13, items 4-7): the real CLI with `-resync 0`, a Consul
of the test's own (stopped and started again without state on the same port), the real Docker
engine. Nothing here waits for a periodic full reconcile: there is none.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import StartProcess
from tests.helpers import ContainerFactory, free_port, wait_until
from tests.helpers_cli import kill_consul, services_of, start_consul_at, unique_node


def labels(node: str, **more: str) -> dict[str, str]:
    return {"SERVICE_NAME": f"heal-{node}", "SERVICE_PORT": "80", **more}


def test_registration_missed_while_consul_was_down_lands_when_it_returns(
    tmp_path: Path, containers: ContainerFactory, start_process: StartProcess
) -> None:
    port = free_port()
    consul = start_consul_at(tmp_path / "consul", port)
    node = unique_node("heal")
    agent = start_process("-resync", "0", node=node, consul=f"consul://127.0.0.1:{port}")
    try:
        kill_consul(consul)
        # The start event arrives while Consul is down: the registration fails.
        container = containers.run(labels=labels(node))
        wait_until(
            lambda: agent.lines_with("looks unreachable"),
            timeout=10,
            message=f"the failed registration was not logged:\n{agent.stderr()[-2000:]}",
        )
        time.sleep(2)  # a few retries into the outage
        consul = start_consul_at(tmp_path / "consul", port)
        wait_until(
            lambda: services_of(consul, node, container.id),
            timeout=20,  # the retry backoff grows to 16 s after 30 s of outage at most
            message=f"not registered after Consul returned:\n{agent.stderr()[-2000:]}",
        )
        # Converged by the container's own retry: the startup's is the only full reconcile.
        assert agent.metrics()['registrator_reconciles_total{scope="full"}'] == 1
    finally:
        consul.stop()


def test_long_healthy_container_stays_passing_past_the_mirror_ttl(
    tmp_path: Path, containers: ContainerFactory, start_process: StartProcess
) -> None:
    port = free_port()
    consul = start_consul_at(tmp_path / "consul", port)
    node = unique_node("heal")
    start_process(
        "-resync",
        "0",
        "-docker-health-ttl",
        "3",
        node=node,
        consul=f"consul://127.0.0.1:{port}",
    )
    try:
        container = containers.run(
            labels=labels(node),
            healthcheck={
                "test": ["CMD-SHELL", "true"],
                "interval": 1_000_000_000,
                "timeout": 1_000_000_000,
                "retries": 1,
            },
        )
        (service_id,) = wait_until(
            lambda: services_of(consul, node, container.id), timeout=10, message="registered"
        )
        mirror = f"service:{service_id}:docker-health"

        def status() -> str:
            return str(consul.checks().get(mirror, {}).get("Status", ""))

        wait_until(lambda: status() == "passing", timeout=10, message="mirror passing")
        # Docker sends health_status only on a change: from here on, no event comes. Four
        # TTLs later the check is still passing, the agent refreshing it every second.
        seen = set()
        until = time.monotonic() + 12
        while time.monotonic() < until:
            seen.add(status())
            time.sleep(0.25)
        assert seen == {"passing"}, f"the mirror expired in between: {seen}"
    finally:
        consul.stop()


def test_consul_restarted_without_state_is_repaired_without_a_resync(
    tmp_path: Path, containers: ContainerFactory, start_process: StartProcess
) -> None:
    port = free_port()
    consul = start_consul_at(tmp_path / "consul", port)
    node = unique_node("heal")
    agent = start_process(
        "-resync", "0", "-ttl", "6", node=node, consul=f"consul://127.0.0.1:{port}"
    )
    try:
        boxes = [containers.run(labels=labels(node)) for _ in range(2)]
        for box in boxes:
            wait_until(lambda b=box: services_of(consul, node, b.id), timeout=10, message="reg")
        kill_consul(consul)
        consul = start_consul_at(tmp_path / "consul", port)
        assert not any(services_of(consul, node, box.id) for box in boxes)
        # The next heartbeat (every 3 s) answers "Unknown check ID": the agent re-registers.
        for box in boxes:
            wait_until(
                lambda b=box: services_of(consul, node, b.id),
                timeout=15,
                message=f"not re-registered:\n{agent.stderr()[-2000:]}",
            )
        assert len(agent.lines_with("lost its state")) == 1, agent.stderr()[-2000:]
    finally:
        consul.stop()


def test_container_removed_in_an_outage_leaves_no_exec_or_error_loop(
    tmp_path: Path, containers: ContainerFactory, start_process: StartProcess
) -> None:
    port = free_port()
    consul = start_consul_at(tmp_path / "consul", port)
    node = unique_node("heal")
    agent = start_process(
        "-resync",
        "0",
        "-ttl",
        "4",
        "-log-level",
        "debug",
        node=node,
        consul=f"consul://127.0.0.1:{port}",
    )
    try:
        box = containers.run(
            labels=labels(node, SERVICE_CHECK_SCRIPT="true", SERVICE_CHECK_INTERVAL="1s")
        )
        wait_until(lambda: services_of(consul, node, box.id), timeout=10, message="registered")
        kill_consul(consul)
        box.remove(force=True)
        time.sleep(3)  # the destroy event's deregistration fails; retried with backoff
        consul = start_consul_at(tmp_path / "consul", port)
        back = len(agent.lines())
        time.sleep(10)  # ten script intervals, five heartbeats
        after = agent.lines()[back:]
        assert not services_of(consul, node, box.id)
        errors = [line for line in after if " ERROR " in line]
        assert errors == [], "\n".join(errors)
        # Neither an exec into the removed container nor an update of its checks.
        stale = [line for line in after if "404" in line or "No such container" in line]
        assert len(stale) <= 2, "\n".join(stale)
        assert not [line for line in after if "exec" in line and box.id[:12] in line]
    finally:
        consul.stop()
