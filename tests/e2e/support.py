"""Shared by the e2e modules: running CLI commands, and machine-wide locks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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
