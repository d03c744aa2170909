"""The image's entrypoint (docker/entrypoint.py): which socket's group, which files to copy.

tests/e2e/test_image.py runs the built image as root to see it drop privileges for real.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("registrator_entrypoint", ENTRYPOINT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


entrypoint = _load()


@pytest.mark.parametrize(
    ("argv", "environ", "socket"),
    [
        pytest.param(
            ["-docker-host", "unix:///sockets/d.sock"], {}, "/sockets/d.sock", id="flag"
        ),
        pytest.param(
            ["--docker-host=unix:///sockets/d.sock"], {}, "/sockets/d.sock", id="flag with ="
        ),
        pytest.param([], {"DOCKER_HOST": "unix:///env/d.sock"}, "/env/d.sock", id="DOCKER_HOST"),
        pytest.param(
            ["-docker-host", "unix:///flag.sock"], {"DOCKER_HOST": "unix:///env.sock"},
            "/flag.sock", id="the flag beats DOCKER_HOST, as in the agent",
        ),
        pytest.param(
            ["explain", "web", "-docker-host", "unix:///x.sock"], {}, "/x.sock",
            id="explain's options follow the container",
        ),
        pytest.param([], {"DOCKER_HOST": "tcp://10.0.0.1:2375"}, "", id="TCP: no socket"),
    ],
)  # fmt: skip
def test_socket_is_the_one_the_agent_will_use(
    argv: list[str], environ: dict[str, str], socket: str
) -> None:
    options = entrypoint.read_options(argv, environ)
    assert options is not None
    assert options.socket == socket


def test_default_socket_when_nothing_is_configured() -> None:
    options = entrypoint.read_options([], {})
    assert options is not None
    expected = "/var/run/docker.sock"
    if not Path(expected).exists() and Path("/tmp/docker.sock").exists():
        expected = "/tmp/docker.sock"  # gliderlabs' mount point, as the agent falls back to
    assert options.socket == expected


def test_files_the_agent_reads_come_from_flags_and_environment() -> None:
    options = entrypoint.read_options(
        ["-consul-token-file", "/run/secrets/token", "-consul-client-cert", "/tls/cert.pem"],
        {"CONSUL_CLIENT_KEY": "/tls/key.pem"},
    )
    assert options is not None
    assert options.files == (
        ("CONSUL_HTTP_TOKEN_FILE", "-consul-token-file", "/run/secrets/token"),
        ("CONSUL_CLIENT_KEY", "-consul-client-key", "/tls/key.pem"),
        ("CONSUL_CLIENT_CERT", "-consul-client-cert", "/tls/cert.pem"),
    )


def test_options_the_agent_refuses_are_left_to_the_agent() -> None:
    assert entrypoint.read_options(["-resync", "abc"], {}) is None


@pytest.mark.parametrize(
    ("argv", "flags", "expected"),
    [
        (["consul://c:8500"], ["-x", "1"], ["consul://c:8500", "-x", "1"]),
        (["-a", "--", "consul://c"], ["-x", "1"], ["-a", "-x", "1", "--", "consul://c"]),
        ([], [], []),
    ],
)
def test_with_flags_adds_overrides_before_the_end_of_options(
    argv: list[str], flags: list[str], expected: list[str]
) -> None:
    assert entrypoint.with_flags(argv, flags) == expected


@pytest.mark.skipif(os.getuid() != 0, reason="chown to the agent's uid needs root")
def test_private_copies_belong_to_the_agent_and_nobody_else(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    flags = entrypoint.private_copies(
        [("CONSUL_HTTP_TOKEN_FILE", "-consul-token-file", str(secret))], parents=[str(tmp_path)]
    )
    assert flags[0] == "-consul-token-file"
    copy = Path(flags[1])
    assert copy.read_text() == "s3cret"
    info = copy.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (entrypoint.AGENT_UID, 0o400)
    directory = copy.parent.stat()
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (entrypoint.AGENT_UID, 0o700)


def test_private_copies_fail_with_every_place_tried(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="nonexistent"):
        entrypoint.private_copies(
            [("CONSUL_CLIENT_KEY", "-consul-client-key", str(tmp_path))],
            parents=[str(tmp_path / "nonexistent")],
        )
