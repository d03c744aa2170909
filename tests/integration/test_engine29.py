"""The agent against Docker Engine 29.7.2 daemons of its own: a raised API floor, and the
engine upgraded (and its floor changed) under a running agent.

Engine 29.0 refused API versions below 1.44, and operators raise the floor with
DOCKER_MIN_API_VERSION; an agent that always asked for 1.43 exited at once and, as a global
service, crash-looped. And a daemon upgraded under a running agent answers the version the
agent negotiated before with HTTP 400 "client version ... is too old", forever unless the agent
negotiates again.

Each test starts dedicated daemons on a socket of its own (own data and exec roots, so their own
containerd; no iptables; a default bridge of their own; storage vfs in a temporary folder),
never the lane's daemon and never the machine's 20.10. The Engine 29 binaries are the lane's
cached build (REGISTRATOR_TEST_DOCKERD29, set by scripts/test); the "before the upgrade" engine
is Debian's dockerd 20.10 (API 1.41), which the machine has anyway. Their networks use
198.18.36.0/23, their default bridge 198.18.38.0/24.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.types import IPAMConfig, IPAMPool

from tests.e2e.support import exclusive
from tests.helpers import LABEL, wait_until
from tests.integration.conftest import StartAgent

pytestmark = [
    pytest.mark.docker,
    pytest.mark.engines(
        "docker29", reason="starts its own Engine 29.7.2 daemons from the docker29 lane's build"
    ),
]

ENGINE29_DIR = os.environ.get("REGISTRATOR_TEST_DOCKERD29", "")
DOCKERD20 = shutil.which("dockerd") or "/usr/sbin/dockerd"
# One /24 per daemon generation, so two bridges never hold the same subnet on the host.
SUBNETS = ("198.18.36.0/24", "198.18.37.0/24")
# Their default bridge. Not `--bridge none`: a daemon started so deletes the host's docker0
# (it tidies up "its" default bridge), which is the machine's 20.10 daemon's.
BRIDGE, BRIDGE_CIDR = "rt29b0", "198.18.38.1/24"


@dataclass
class Daemon:
    """One dockerd on `socket`; `start` again after `stop` is a restart (or an upgrade when the
    binary changes), as an operator would do it."""

    root: Path
    socket: Path
    process: subprocess.Popen[bytes] | None = None
    bridges: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self, engine: str, min_api_version: str | None = None) -> None:
        data_root = self.root / f"data-{engine}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        if min_api_version:
            env["DOCKER_MIN_API_VERSION"] = min_api_version
        argv = [
            "--host", self.host,
            "--data-root", str(data_root),
            "--exec-root", str(self.root / f"x{engine}"),
            "--pidfile", str(self.root / f"{engine}.pid"),
            "--bridge", BRIDGE,
            "--iptables=false", "--ip6tables=false",
            "--storage-driver", "vfs",
        ]  # fmt: skip
        if engine == "29":
            binary = str(Path(ENGINE29_DIR) / "dockerd")
            env["PATH"] = f"{ENGINE29_DIR}:{env.get('PATH', '')}"  # its docker-proxy
            argv += [
                "--add-runtime", f"runc13={ENGINE29_DIR}/runc", "--default-runtime", "runc13",
                "--seccomp-profile", "unconfined",
            ]  # fmt: skip
        else:
            binary = DOCKERD20
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode:
            subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", BRIDGE_CIDR, "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        log = (self.root / f"dockerd-{engine}.log").open("ab")
        self.process = subprocess.Popen(
            [binary, *argv], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        wait_until(
            self._answers,
            timeout=60,
            interval=0.2,
            message=f"dockerd {engine} did not answer on {self.socket}:\n{self.log_tail(engine)}",
        )

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"dockerd exited with {self.process.returncode}")
        try:
            with contextlib.closing(docker.DockerClient(base_url=self.host, timeout=5)) as client:
                return bool(client.ping())
        except docker.errors.DockerException:
            return False

    def log_tail(self, engine: str) -> str:
        path = self.root / f"dockerd-{engine}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def client(self) -> docker.DockerClient:
        # version="auto": docker-py asks for what the daemon speaks (its default is 1.44+).
        return docker.DockerClient(base_url=self.host, version="auto", timeout=30)

    def prepare(self, lane: docker.DockerClient, image: str, subnet: str) -> str:
        """Loads the test image from the lane's engine and creates a network; its name."""
        client = self.client()
        try:
            client.images.load(b"".join(lane.images.get(image).save(named=True)))
            name = f"rt-engine29-{secrets.token_hex(3)}"
            gateway = subnet.rsplit(".", 1)[0] + ".1"
            network = client.networks.create(
                name,
                driver="bridge",
                labels={LABEL: "1"},
                ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=subnet, gateway=gateway)]),
            )
            self.bridges.append(f"br-{network.id[:12]}")
            return name
        finally:
            client.close()

    def run(self, image: str, network: str, service: str) -> str:
        """A labelled idle container on `network`; its id."""
        client = self.client()
        try:
            container = client.containers.run(
                image,
                ["sh", "-c", "trap 'exit 0' TERM; sleep 86400 & wait"],
                name=f"rt-engine29-{secrets.token_hex(3)}",
                labels={"SERVICE_NAME": service, "SERVICE_PORT": "80", LABEL: "1"},
                network=network,
                detach=True,
            )
            return str(container.id)
        finally:
            client.close()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    if not ENGINE29_DIR or not (Path(ENGINE29_DIR) / "dockerd").exists():
        pytest.fail(
            "REGISTRATOR_TEST_DOCKERD29 must name the Engine 29 build (scripts/test sets it in the"
            " docker29 lane from scripts/lib/build-dockerd29.sh)",
            pytrace=False,
        )
    # Fixed subnets: one test of this module at a time on the machine.
    with exclusive("engine29-dedicated"):
        # Short: the daemon's and containerd's unix socket paths must fit in 108 bytes.
        root = Path(tempfile.mkdtemp(prefix="r29-", dir="/tmp"))
        found = Daemon(root=root, socket=root / "d.sock")
        try:
            yield found
        finally:
            found.stop()
            for bridge in [*found.bridges, BRIDGE]:
                subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
            # vfs layers and containerd state: nothing in them is worth keeping.
            subprocess.run(["rm", "-rf", str(root)], check=False)


async def test_agent_registers_with_engine29_refusing_api_below_1_44(
    daemon: Daemon, start_agent: StartAgent, docker_client: docker.DockerClient, test_image: str
) -> None:
    daemon.start("29", min_api_version="1.44")
    network = daemon.prepare(docker_client, test_image, SUBNETS[1])
    # The floor is real: what the agent used to ask for is refused.
    old = docker.DockerClient(base_url=daemon.host, version="1.43", timeout=10)
    with pytest.raises(docker.errors.APIError, match="too old"), contextlib.closing(old):
        old.info()

    running = await start_agent("-internal", environ={"DOCKER_HOST": daemon.host})
    assert running.docker.api_version == (1, 55)
    name = f"floor-{secrets.token_hex(3)}"
    container_id = daemon.run(test_image, network, name)
    found = await running.wait_registered(running.service_id(_name(daemon, container_id), 80))
    (entry,) = found.values()
    assert entry["Service"] == name
    assert str(entry["Address"]).startswith("198.18.37.")


async def test_engine_upgraded_and_floor_changed_under_a_running_agent(
    daemon: Daemon, start_agent: StartAgent, docker_client: docker.DockerClient, test_image: str
) -> None:
    # Before: Debian's 20.10 (API 1.41), which the agent speaks at 1.41.
    daemon.start("20")
    old_network = daemon.prepare(docker_client, test_image, SUBNETS[0])
    running = await start_agent("-internal", "-resync", "0", environ={"DOCKER_HOST": daemon.host})
    assert running.docker.api_version == (1, 41)
    before = daemon.run(test_image, old_network, f"before-{secrets.token_hex(3)}")
    before_id = running.service_id(_name(daemon, before), 80)
    await running.wait_registered(before_id)

    # The upgrade: 20.10 stopped, Engine 29.7.2 on the same socket, refusing anything below
    # 1.44. Its own data root: the old container is gone with the old engine.
    daemon.stop()
    daemon.start("29", min_api_version="1.44")
    network = daemon.prepare(docker_client, test_image, SUBNETS[1])
    after = daemon.run(test_image, network, f"after-{secrets.token_hex(3)}")
    after_id = running.service_id(_name(daemon, after), 80)
    # -resync 0: only the event stream's reconnect (which must renegotiate past the 400)
    # and the full reconcile it triggers can get here.
    await running.wait_registered(after_id, timeout=60)
    await running.wait_deregistered(before_id, timeout=60)
    assert running.docker.api_version == (1, 55)

    # A different floor again (Engine 29's default, 1.40) after a restart: still following.
    daemon.stop()
    daemon.start("29", min_api_version="1.40")
    again = daemon.run(test_image, network, f"again-{secrets.token_hex(3)}")
    again_id = running.service_id(_name(daemon, again), 80)
    await running.wait_registered(again_id, timeout=60)
    # No restart policy: the restart stopped `after`, and the agent saw that too.
    await running.wait_deregistered(after_id, timeout=60)
    assert not running.task.done()


def _name(daemon: Daemon, container_id: str) -> str:
    client = daemon.client()
    try:
        return str(client.containers.get(container_id).name)
    finally:
        client.close()
