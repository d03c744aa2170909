"""Sampling profiles of the agent: py-spy for the subprocess, pyinstrument in-process.

py-spy attaches to the running agent (no code change, no restart) with `--nonblocking`, so
the agent is not paused for each sample; only samples of threads doing work are kept, so the
shares are shares of the agent's CPU time, not of wall time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.env import BenchError, Table


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class PySpy:
    """`py-spy record` on one process until stop(); raw (collapsed) stacks to `output`."""

    def __init__(self, pid: int, output: Path, rate: int = 250) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise BenchError("py-spy is not installed (pip install -e '.[bench]')")
        self._log = self.output.with_suffix(".log").open("wb")
        self._process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.output),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(0.5)  # attaching takes a moment; do not miss the start of the window
        if self._process.poll() is not None:
            raise BenchError(f"py-spy exited at once; see {self.output.with_suffix('.log')}")

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        self._process = None


_IDLE_LEAVES = ("EpollSelector.select (", "select (stdlib/selectors.py)")


def _function(frame: str) -> str:
    """`full_reconcile (registrator/reconciler.py:150)` → `full_reconcile (reconciler.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    marker = "site-packages/"
    if marker in path:
        path = path.split(marker, 1)[1]
    elif "/lib/python" in path:
        path = "stdlib/" + path.rsplit("/", 1)[-1]
    else:
        path = path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] if "/" in path else path
    return f"{name} ({path})"


def summarize_collapsed(path: Path, title: str, top: int = 12) -> Table:
    """Top functions by self and by inclusive samples, from py-spy's raw output."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    total = 0
    idle = 0
    if path.exists():
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [f for f in stack.split(";") if " (" in f]
            if not frames:
                continue
            functions = [_function(f) for f in frames]
            if functions[-1].startswith(_IDLE_LEAVES):
                idle += count  # waiting in epoll: py-spy --nonblocking cannot always tell
                continue
            total += count
            self_counts[functions[-1]] += count
            for function in set(functions):
                total_counts[function] += count
    table = Table(title, ["function", "self %", "inclusive %"])
    if total == 0:
        table.notes.append("no samples (the process was idle, or py-spy could not attach)")
        return table
    shown = [f for f, _ in self_counts.most_common(top)]
    # Then the agent's own functions by inclusive time (the root frames above them, which are
    # in every sample, say nothing).
    shown += [
        f
        for f, count in total_counts.most_common()
        if f not in shown and "registrator/" in f and count < 0.8 * total
    ][:top]
    for function in shown:
        table.add(
            function,
            f"{100 * self_counts[function] / total:.1f}",
            f"{100 * total_counts[function] / total:.1f}",
        )
    table.notes.append(
        f"{total} busy samples ({idle} more waiting in epoll left out); "
        f"raw stacks: {os.path.relpath(path)}"
    )
    return table
