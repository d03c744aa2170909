"""dockerd itself restarted under the agent: the event stream reconnects and nothing is missed.

Runs only against a daemon that `scripts/test` started (its pid file under .cache/docker), the
one CI always has: restarting a daemon someone else manages (systemd, Docker Desktop) is not a
test's business. Containers with `restart: always` come back with new random host ports, and
one with no restart policy stays down, so the agent must both re-register with the new ports
and deregister what did not come back: both only visible after the reconnect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest

from registrator.model import META_CONTAINER
from tests.helpers import ConsulAgent, ContainerFactory, wait_until
from tests.helpers_cli import RegistratorProcess, owned_services, unique_node

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = REPO / ".cache" / "docker"
PID_FILE = STATE_DIR / "dockerd.pid"
ENSURE_DOCKER = REPO / "scripts" / "lib" / "ensure-docker.sh"


def daemon_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def restart_dockerd(pid: int) -> float:
    """SIGTERM dockerd, wait for it to exit, start it again the way scripts/test does."""
    os.kill(pid, signal.SIGTERM)
    wait_until(
        lambda: not Path(f"/proc/{pid}").exists(),
        timeout=60,
        interval=0.2,
        message="dockerd did not exit within 60 s of SIGTERM",
    )
    down_at = time.monotonic()
    subprocess.run([str(ENSURE_DOCKER), str(STATE_DIR)], check=True, timeout=120)
    return down_at


@pytest.mark.engines(
    "docker20",
    reason="restarts the 20.10 daemon scripts/test started (.cache/docker); Engine 29 restarted"
    " under a running agent is tests/integration/test_engine29.py",
)
def test_agent_follows_a_dockerd_restart(
    consul: ConsulAgent,
    containers: ContainerFactory,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    pid = daemon_pid()
    if pid is None:
        pytest.skip(f"dockerd was not started by scripts/test (no live pid in {PID_FILE})")
    node = unique_node("restart")
    # -resync 0: only the reconnect (and the full reconcile it triggers) can catch up.
    agent = RegistratorProcess.start(
        tmp_path, "-resync", "0", node=node, consul=f"consul://{consul.http_addr}"
    )
    try:
        agent.wait_ready()
        survivors = [
            containers.run(
                f"survivor{i}",
                labels={"SERVICE_NAME": f"restart-{node}"},
                ports={"80/tcp": None},
                restart_policy={"Name": "always"},
            )
            for i in range(2)
        ]
        casualty = containers.run(
            "casualty", labels={"SERVICE_NAME": f"restart-{node}"}, ports={"80/tcp": None}
        )
        everyone = {c.id for c in [*survivors, casualty]}

        def registered() -> dict[str, int]:
            return {
                entry["Meta"][META_CONTAINER]: entry["Port"]
                for entry in owned_services(consul, node).values()
                if META_CONTAINER in entry["Meta"]  # not the node's own heartbeat service
            }

        wait_until(
            lambda: set(registered()) == everyone,
            timeout=20,
            message="containers were not registered before the restart",
        )

        down_at = restart_dockerd(pid)

        def host_port(container_id: str) -> int | None:
            try:
                attrs = docker_client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                return None
            if not attrs["State"]["Running"]:
                return None
            bindings = (attrs["NetworkSettings"]["Ports"] or {}).get("80/tcp") or []
            return int(bindings[0]["HostPort"]) if bindings else None

        def converged() -> bool:
            expected = {c.id: host_port(c.id) for c in survivors}
            return None not in expected.values() and registered() == expected

        wait_until(
            converged,
            timeout=60,
            interval=0.5,
            message=f"after the dockerd restart: registered {registered()}",
            ignore=(docker.errors.APIError, OSError),
        )
        converge_seconds = time.monotonic() - down_at
        assert casualty.id not in registered()
        assert agent.returncode is None, "the agent exited when dockerd went away"
        assert agent.lines_with("reconnecting") or agent.lines_with("event stream"), agent.stderr()
        print(f"converged {converge_seconds:.1f} s after dockerd was back")
    finally:
        agent.terminate()
