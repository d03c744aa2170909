"""Shared by the modules that drive the docker CLI (the e2e modules and the Swarm integration
tests): running commands, a swarm to deploy to, overlay subnets, and machine-wide locks."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# Swarm's pool for overlays it numbers itself (ingress); tests' overlays get explicit /24s from
# OVERLAY_POOL.
SWARM_ADDR_POOL = "198.18.128.0/17"
OVERLAY_POOL = ipaddress.IPv4Network("198.18.192.0/18")

# The docker29 lane's engine runs beside the machine's 20.10, which may be a swarm manager at
# the same time (another test run): its swarm takes other ports for the manager API and the
# VXLAN data path, so neither listener nor VXLAN device collides.
_LANE_SWARM_PORTS = (
    ["--listen-addr", "127.0.0.1:2378", "--data-path-port", "4790"]
    if os.environ.get("REGISTRATOR_TEST_ENGINE") == "docker29"
    else []
)


def _gossip_port_free() -> None:
    """Engine 29's swarm gossip (memberlist) always binds 7946 on the advertise address; while
    another engine's swarm holds it, overlay names and VIPs silently stop working. Say so."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", 7946))
        except OSError as err:
            raise AssertionError(
                "127.0.0.1:7946 is taken (another engine's swarm, e.g. the 20.10 daemon's): the"
                f" docker29 lane's swarm cannot gossip, and its port is fixed ({err})"
            ) from None


CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "registrator-tests"


def run(args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    """Runs a command; returns stdout, or fails the test with the command's output."""
    done = subprocess.run(
        list(args),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def run_quietly(args: Sequence[str], timeout: float = 120) -> str | None:
    """Runs a clean-up command; returns its error text instead of raising."""
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return f"{' '.join(args)}: timed out after {timeout} s"
    return None if done.returncode == 0 else f"{' '.join(args)}: {done.stderr.strip()}"


def docker_json(*args: str) -> Any:
    return json.loads(run(["docker", *args]))


@contextlib.contextmanager
def exclusive(name: str) -> Iterator[None]:
    """Holds a machine-wide lock (a file under the tests' cache) for the block.

    Modules that use fixed subnets or interface names take it, so two runs on one machine
    wait for each other instead of colliding.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def swarm_manager() -> Iterator[None]:
    """This engine as a swarm manager for the block: initialised here (and left at the end)
    only if it was not in a swarm already, and left only if nobody (a demo started meanwhile)
    still runs services on it."""
    state = run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]).strip()
    created = False
    if state == "inactive" and _LANE_SWARM_PORTS:
        _gossip_port_free()
    if state == "inactive":
        run(
            ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1",
             "--default-addr-pool", SWARM_ADDR_POOL, *_LANE_SWARM_PORTS]
        )  # fmt: skip
        created = True
    elif state != "active":
        raise AssertionError(f"swarm state is {state!r}")
    if "true" not in run(["docker", "info", "--format", "{{.Swarm.ControlAvailable}}"]):
        raise AssertionError("this engine is a swarm worker; the tests need a manager")
    try:
        yield
    finally:
        if created and not run(["docker", "service", "ls", "-q"]).strip():
            run(["docker", "swarm", "leave", "--force"])


def free_overlay_subnet() -> ipaddress.IPv4Network:
    """A /24 of OVERLAY_POOL that no network on this engine uses."""
    used = []
    for network in docker_json(
        "network", "inspect", *run(["docker", "network", "ls", "-q"]).split()
    ):
        for pool in (network.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(KeyError, ValueError):
                used.append(ipaddress.ip_network(pool["Subnet"], strict=False))
    for subnet in OVERLAY_POOL.subnets(new_prefix=24):
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError(f"no free /24 left in {OVERLAY_POOL}")
