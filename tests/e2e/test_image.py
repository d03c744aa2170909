"""Issue 13, item 10: the image's entrypoint, run as root the way a gliderlabs stack file runs it.

The image is built by scripts/lib/build-images.sh (as for the other e2e modules). Each case runs
`docker run --rm --network none IMAGE ...` and reads what the entrypoint printed before it
exec'd registrator as uid 10001:

- the supplementary group is the group of the socket the agent will use (`-docker-host` beats
  `DOCKER_HOST`, as in the agent), not of whatever socket happens to exist;
- a socket owned by group 0 gets a warning, never the root group silently;
- a token file only root can read is copied for the agent before privileges are dropped, and
  the agent then works with it (explain reads it, and reaches Docker through the socket group).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.e2e.support import CACHE, run
from tests.helpers import ContainerFactory

REPO = Path(__file__).resolve().parents[2]
BUILD_IMAGES = REPO / "scripts" / "lib" / "build-images.sh"
ENTRYPOINT = REPO / "docker" / "entrypoint.py"

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="sockets owned by other groups need root")


@pytest.fixture(scope="module")
def image() -> str:
    run([str(BUILD_IMAGES)], timeout=900)
    tag = (CACHE / "images" / "registrator-build-tag").read_text().strip()
    # Another checkout on this machine may have built the shared tag since: say so plainly.
    inside = run(
        ["docker", "run", "--rm", "--entrypoint", "cat", tag, "/opt/registrator/entrypoint.py"]
    )
    assert inside == ENTRYPOINT.read_text(), f"{tag} was built from another checkout; run again"
    return tag


def unix_socket(path: Path, gid: int) -> Path:
    """A listening unix socket owned by group `gid` (nothing ever connects to it)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    _listeners.append(server)
    os.chown(path, 0, gid)
    path.chmod(0o660)
    return path


_listeners: list[socket.socket] = []


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "sockets"
    folder.mkdir()
    try:
        yield folder
    finally:
        for listener in _listeners:
            listener.close()
        _listeners.clear()


def docker_run(
    image: str, *args: str, options: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    name = f"rt-image-{secrets.token_hex(4)}"
    try:
        return subprocess.run(
            ["docker", "run", "--rm", "--name", name, "--network", "none", *options, image, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def entrypoint_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("registrator entrypoint:")]


@pytest.mark.parametrize(
    ("args", "environment", "group"),
    [
        pytest.param(
            ["-docker-host", "unix:///sockets/flag.sock"], {}, 4242, id="-docker-host flag"
        ),
        pytest.param([], {"DOCKER_HOST": "unix:///sockets/env.sock"}, 4343, id="DOCKER_HOST"),
        pytest.param(
            ["-docker-host", "unix:///sockets/flag.sock"],
            {"DOCKER_HOST": "unix:///sockets/env.sock"},
            4242,
            id="the flag beats DOCKER_HOST, as in the agent",
        ),
    ],
)
def test_socket_group_is_the_group_of_the_socket_the_agent_will_use(
    image: str, sockets: Path, args: list[str], environment: dict[str, str], group: int
) -> None:
    unix_socket(sockets / "flag.sock", 4242)
    unix_socket(sockets / "env.sock", 4343)
    options = ["-v", f"{sockets}:/sockets"]
    for name, value in environment.items():
        options += ["-e", f"{name}={value}"]
    done = docker_run(image, *args, "--version", options=options)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("registrator ")
    assert entrypoint_lines(done) == [
        f"registrator entrypoint: running as uid 10001, gid 10001, groups [{group}] (not root)"
    ]


def test_a_socket_owned_by_root_group_is_warned_about(image: str, sockets: Path) -> None:
    unix_socket(sockets / "root.sock", 0)
    done = docker_run(
        image,
        "-docker-host",
        "unix:///sockets/root.sock",
        "--version",
        options=["-v", f"{sockets}:/sockets"],
    )
    assert done.returncode == 0, done.stderr
    warning, identity = entrypoint_lines(done)
    assert "WARNING" in warning and "group 0 (root)" in warning and 'user: "10001:0"' in warning
    assert identity.endswith("groups [0] (not root)")


@pytest.mark.parametrize(
    ("how", "where"),
    [
        pytest.param("flag", "/secrets/token", id="-consul-token-file"),
        pytest.param("env", "/secrets/token", id="CONSUL_HTTP_TOKEN_FILE"),
    ],
)
def test_a_root_only_token_file_is_readable_by_the_agent(
    image: str, tmp_path: Path, containers: ContainerFactory, how: str, where: str
) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    token = secrets_dir / "token"
    token.write_text("a-token\n")
    token.chmod(0o600)  # root only, as a Docker secret file mounted from the host may be
    target = containers.run("explained", labels={"SERVICE_NAME": "explained"}, network_mode="none")
    options = [
        "-v", "/var/run/docker.sock:/var/run/docker.sock:ro",
        "-v", f"{secrets_dir}:/secrets:ro",
    ]  # fmt: skip
    args = ["explain", target.name]
    if how == "flag":
        args += ["-consul-token-file", where]
    else:
        options += ["-e", f"CONSUL_HTTP_TOKEN_FILE={where}"]
    done = docker_run(image, *args, "consul://127.0.0.1:1", options=options)
    # explain read the token (a config error would exit 2) and Docker (through the socket's
    # group) as uid 10001; Consul is unreachable on purpose, which explain reports and survives.
    assert done.returncode == 0, done.stderr
    assert f'"container": "{target.name}"' in done.stdout
    copied = [line for line in entrypoint_lines(done) if "cannot be read by uid 10001" in line]
    assert len(copied) == 1 and where in copied[0] and "needs a restart" in copied[0], done.stderr
