"""What every benchmark needs: labelled containers, real Consul agents, the real registrator
agent as a subprocess, async Docker/Consul clients for timing, /proc sampling, tables.

Everything created in Docker carries `registrator-bench=1`, the run's id and the owner
(host:pid), and is removed when the run ends, whether it ends normally, by an exception, by
Ctrl-C or SIGTERM. Leftovers of a run that was killed outright (SIGKILL) are removed by the
next run, which recognises them by their owner's dead pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
import docker.errors

from tests.helpers import ConsulAgent, free_port, make_consul_agent

REPO = Path(__file__).resolve().parent.parent
PYCACHE = REPO / ".cache" / "bench" / "pycache"


def compile_agent() -> None:
    """Write the bytecode of everything the agent imports into PYCACHE before any agent
    starts, so even the first one runs like an installed agent (see AgentProcess). With a
    prefix, Python looks for all bytecode there, the standard library's included: hence an
    import of the agent's modules rather than compileall of the package alone."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    environ["PYTHONPATH"] = str(REPO)
    subprocess.run(
        [sys.executable, "-c", "import registrator.cli, registrator.http"],
        cwd=REPO,
        env=environ,
        check=True,
    )


LABEL = "registrator-bench"
RUN_LABEL = "registrator-bench.run"
OWNER_LABEL = "registrator-bench.owner"
ROLE_LABEL = "registrator-bench.role"
DEFAULT_IMAGE = "registrator-test/busybox:latest"
IMAGE_ENV = "REGISTRATOR_TEST_IMAGE"
CONTAINER_PORT = 80
# The bench network: a subnet of 198.18.0.0/15 (the range this project's Docker uses) clear of
# dockerd's bridge (198.18.0.0/24), the e2e macvlan and DinD subnets (198.18.60.0/22), the test
# pool (198.18.64.0/18) and the default pool (198.19.0.0/16). A /20 holds 4094 containers; the
# default bridge's /24 could not hold 500.
NETWORK_CANDIDATES = ("198.18.16.0/20", "198.18.32.0/20")
SETUP_THREADS = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(Exception):
    """A benchmark could not be carried out (a timeout, a component that did not start)."""


# --------------------------------------------------------------------------------------------
# Numbers and tables


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def markdown(self) -> str:
        lines = [
            f"#### {self.title}",
            "",
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join("---" for _ in self.headers) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    def text(self) -> str:
        widths = [
            max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
            for i, h in enumerate(self.headers)
        ]
        out = [self.title, "=" * len(self.title)]
        out.append("  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)))
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        out += [f"  * {note}" for note in self.notes]
        return "\n".join(out)


@dataclass
class Goal:
    benchmark: str
    goal: str
    measured: str
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


# --------------------------------------------------------------------------------------------
# /proc sampling


@dataclass(frozen=True)
class ProcStat:
    cpu_seconds: float
    rss_mb: float
    hwm_mb: float
    threads: int


def proc_stat(pid: int) -> ProcStat | None:
    """CPU time (user+system), RSS, peak RSS and threads of one process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    values: dict[str, int] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM", "Threads"}:
            values[key] = int(rest.split()[0])
    return ProcStat(
        cpu_seconds=cpu,
        rss_mb=values.get("VmRSS", 0) / 1024,
        hwm_mb=values.get("VmHWM", 0) / 1024,
        threads=values.get("Threads", 0),
    )


def system_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(p) for p in parts]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / CLK_TCK


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
    return found


@dataclass
class Footprint:
    """What a ProcSampler saw over its window."""

    seconds: float
    cpu_seconds: float
    rss_start_mb: float
    rss_end_mb: float
    rss_max_mb: float
    hwm_mb: float
    threads_max: int

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0


class ProcSampler:
    """Samples one process's /proc every `interval` seconds in an asyncio task."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self._samples: list[tuple[float, ProcStat]] = []
        self._task: asyncio.Task[None] | None = None

    def _take(self) -> None:
        stat = proc_stat(self.pid)
        if stat is not None:
            self._samples.append((time.monotonic(), stat))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._take()

    def start(self) -> None:
        self._samples.clear()
        self._take()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> Footprint:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._take()
        if len(self._samples) < 2:
            raise BenchError(f"process {self.pid} went away while sampled")
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        return Footprint(
            seconds=t1 - t0,
            cpu_seconds=last.cpu_seconds - first.cpu_seconds,
            rss_start_mb=first.rss_mb,
            rss_end_mb=last.rss_mb,
            rss_max_mb=max(s.rss_mb for _, s in self._samples),
            hwm_mb=last.hwm_mb,
            threads_max=max(s.threads for _, s in self._samples),
        )


class CpuBreakdown:
    """CPU seconds of a few named processes and of the whole machine between two points."""

    def __init__(self, processes: Mapping[str, Iterable[int]]) -> None:
        self.processes = {name: list(pids) for name, pids in processes.items()}
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self._busy0 = 0.0

    def _cpu(self) -> dict[str, float]:
        result = {}
        for name, pids in self.processes.items():
            stats = [proc_stat(pid) for pid in pids]
            result[name] = sum(s.cpu_seconds for s in stats if s is not None)
        return result

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = system_busy_seconds()
        self._start = self._cpu()

    def stop(self) -> tuple[float, float, dict[str, float]]:
        """(wall seconds, machine busy CPU seconds, CPU seconds per process name)."""
        end = self._cpu()
        wall = time.monotonic() - self._t0
        busy = system_busy_seconds() - self._busy0
        return wall, busy, {name: end[name] - self._start.get(name, 0.0) for name in end}


# --------------------------------------------------------------------------------------------
# Async clients used for timing (the same library, aiohttp, the agent itself uses)


class AsyncDocker:
    def __init__(self, socket_path: str, api_version: str) -> None:
        self.socket_path = socket_path
        self.prefix = f"/v{api_version}"
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path, limit=64),
                timeout=aiohttp.ClientTimeout(total=60),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        url = f"http://docker{self.prefix}{path}"
        async with self.session.request(method, url, **kwargs) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text.strip().startswith(("{", "[")) else text)

    async def start(self, container_id: str) -> None:
        status, body = await self.call("POST", f"/containers/{container_id}/start")
        if status not in (204, 304):
            raise BenchError(f"start {container_id[:12]}: HTTP {status}: {body}")

    async def kill(self, container_id: str) -> None:
        status, body = await self.call("POST", f"/containers/{container_id}/kill")
        if status not in (204, 409):
            raise BenchError(f"kill {container_id[:12]}: HTTP {status}: {body}")

    async def timed_inspect(self, container_id: str) -> float:
        started = time.perf_counter()
        status, _ = await self.call("GET", f"/containers/{container_id}/json")
        elapsed = time.perf_counter() - started
        if status != 200:
            raise BenchError(f"inspect {container_id[:12]}: HTTP {status}")
        return elapsed


class StartEvents:
    """Follows Docker's `start` events of this run's containers; remembers each one's own
    `timeNano`, the clock every latency here starts from."""

    def __init__(self, docker_client: AsyncDocker, run_id: str) -> None:
        self._docker = docker_client
        self._run_id = run_id
        self.times: dict[str, int] = {}
        self._waiters: dict[str, list[asyncio.Future[int]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow())
        await asyncio.wait_for(self._connected.wait(), timeout=10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        filters = {
            "type": ["container"],
            "event": ["start"],
            "label": [f"{RUN_LABEL}={self._run_id}"],
        }
        url = f"http://docker{self._docker.prefix}/events"
        async with self._docker.session.get(
            url,
            params={"filters": json.dumps(filters)},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        ) as resp:
            self._connected.set()
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    container_id = str(event.get("id") or event.get("Actor", {}).get("ID"))
                    time_nano = int(event["timeNano"])
                    self.times[container_id] = time_nano
                    for waiter in self._waiters.pop(container_id, []):
                        if not waiter.done():
                            waiter.set_result(time_nano)

    async def wait_for(self, container_id: str, timeout: float = 10.0) -> int:  # noqa: ASYNC109
        if container_id in self.times:
            return self.times[container_id]
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(container_id, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BenchError(f"no start event for {container_id[:12]} within {timeout} s") from None


class AsyncConsul:
    def __init__(self, http_addr: str) -> None:
        self.base = f"http://{http_addr}"
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body, params=params) as resp:
            text = await resp.text()
            if text.strip().startswith(("{", "[")):
                return resp.status, json.loads(text)
            return resp.status, text

    async def timed_register(self, body: Mapping[str, Any]) -> float:
        """One bare `PUT /v1/agent/service/register`, as the agent sends it; its latency."""
        started = time.perf_counter()
        status, text = await self.call(
            "PUT",
            "/v1/agent/service/register",
            body=dict(body),
            params={"replace-existing-checks": "true"},
        )
        elapsed = time.perf_counter() - started
        if status != 200:
            raise BenchError(f"register {body.get('ID')}: HTTP {status}: {text}")
        return elapsed

    async def deregister(self, service_id: str) -> None:
        await self.call("PUT", f"/v1/agent/service/deregister/{quote(service_id)}")

    async def has_service(self, service_id: str) -> bool:
        status, _ = await self.call("GET", f"/v1/agent/service/{quote(service_id)}")
        return status == 200

    async def wait_service(
        self,
        service_id: str,
        present: bool = True,
        interval: float = 0.005,
        timeout: float = 15.0,  # noqa: ASYNC109
    ) -> float:
        """Poll the agent's view of one service every `interval` until it is (or is no
        longer) there; returns time.time() when the answer that showed it arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.has_service(service_id)
            now = time.time()
            if found == present:
                return now
            if time.monotonic() > deadline:
                state = "appear" if present else "go away"
                raise BenchError(f"service {service_id} did not {state} within {timeout} s")
            await asyncio.sleep(interval)

    async def services(self, filter_expr: str = "") -> dict[str, Any]:
        params = {"filter": filter_expr} if filter_expr else None
        status, body = await self.call("GET", "/v1/agent/services", params=params)
        if status != 200 or not isinstance(body, dict):
            raise BenchError(f"GET /v1/agent/services: HTTP {status}")
        return body

    async def count_node_services(self, node: str, name_prefix: str = "") -> int:
        """Services the agent of `node` registered, optionally only those whose name starts
        with `name_prefix` (containers of other users of the daemon get registered too)."""
        expression = f'Meta["registrator-node"] == "{node}"'
        if name_prefix:
            expression += f' and Service matches "^{name_prefix}"'
        return len(await self.services(expression))

    async def wait_count(
        self,
        node: str,
        count: int,
        timeout: float,  # noqa: ASYNC109
        interval: float = 0.25,
        name_prefix: str = "",
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            have = await self.count_node_services(node, name_prefix)
            if have >= count:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"node {node}: {have} of {count} services after {timeout} s")
            await asyncio.sleep(interval)


def quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


# --------------------------------------------------------------------------------------------
# The agent under test, as a subprocess


class AgentProcess:
    """`python -m registrator` against one Consul agent, with its own node name so nothing
    else's registrations are touched, and /health + /metrics on a free port."""

    def __init__(
        self,
        consul: ConsulAgent,
        node: str,
        log_path: Path,
        docker_host: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.consul = consul
        self.node = node
        self.log_path = log_path
        self.http_port = free_port()
        args = [
            sys.executable, "-m", "registrator",
            "-node", node,
            "-internal",
            "-explicit",
            "-retry-attempts", "5",
            "-retry-interval", "500",
            "-http-addr", f"127.0.0.1:{self.http_port}",
            *extra_args,
            f"consul://{consul.http_addr}",
        ]  # fmt: skip
        setpriv = shutil.which("setpriv")
        if setpriv:  # the agent must not outlive a bench run that is killed outright
            args = [setpriv, "--pdeathsig", "KILL", "--", *args]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRATOR_")}
        if docker_host:
            environ["DOCKER_HOST"] = docker_host
        environ["PYTHONPATH"] = str(REPO)
        # Bytecode as an installed agent has it (pip and the image compile it at install):
        # compiling the package's source at startup leaves ~1.2 MB more RSS. Kept under
        # .cache/ rather than in __pycache__ folders of the checkout; see compile_agent().
        environ.pop("PYTHONDONTWRITEBYTECODE", None)
        environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                args,
                cwd=REPO,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench, which stops the agent
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def _get(self, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise BenchError(f"agent exited ({self.process.returncode}); see {self.log_path}")
            with contextlib.suppress(OSError):
                status, _ = await asyncio.to_thread(self._get, "/health")
                if status == 200:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"agent not ready within {timeout} s; see {self.log_path}")
            await asyncio.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        """The agent's /metrics as {name{labels}: value}."""
        _, text = self._get("/metrics")
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------------------------
# The environment


@dataclass(frozen=True)
class BenchContainer:
    id: str
    name: str
    service_name: str

    def service_id(self, node: str) -> str:
        """The id the agent gives this container's service (`<node>:<name>:<port>`)."""
        return f"{node}:{self.name}:{CONTAINER_PORT}"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(labels: Mapping[str, str]) -> bool:
    host, _, pid = labels.get(OWNER_LABEL, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BenchEnv:
    """One benchmark run's resources. Use as a context manager: leaving it removes them."""

    def __init__(self, work_root: Path | None = None) -> None:
        self.run_id = secrets.token_hex(3)
        self.work = (work_root or REPO / ".cache" / "bench") / self.run_id
        self.work.mkdir(parents=True, exist_ok=True)
        self.image = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
        self.client = docker.from_env(timeout=120, max_pool_size=SETUP_THREADS * 2)
        self.api_version = str(self.client.api.api_version)
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if not host.startswith("unix://"):
            raise BenchError(f"DOCKER_HOST={host}: the benchmarks need a local unix socket")
        self.docker_socket = host[len("unix://") :]
        self.pool = ThreadPoolExecutor(SETUP_THREADS, thread_name_prefix="bench-setup")
        self.network = ""
        self.consuls: list[ConsulAgent] = []
        self.agents: list[AgentProcess] = []
        self._previous_sigterm: Any = None

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> BenchEnv:
        def on_sigterm(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        # Also when started in the background by a shell, which leaves SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            try:
                self.client.images.get(self.image)
            except docker.errors.ImageNotFound:
                raise BenchError(
                    f"image {self.image} is missing; scripts/test builds it "
                    "(scripts/lib/build-test-images.sh)"
                ) from None
            self.remove_stale()
            self.network = self._create_network()
            compile_agent()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        # SIGTERM and Ctrl-C during cleanup must not leave containers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self.cleanup()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)

    def cleanup(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.stop()
        for consul in self.consuls:
            with contextlib.suppress(Exception):
                consul.stop()
        # Consul's data directories (~200 MB after a burst); its logs stay beside them.
        for data in self.work.glob("consul-*/data-*"):
            shutil.rmtree(data, ignore_errors=True)
        try:
            removed = self.remove_run_containers()
        except docker.errors.DockerException as err:
            print(f"cleanup: Docker did not answer ({err}); the next run removes what is left")
            return
        network = "-"
        if self.network:
            network = self.network if self._remove_network(self.network) else "none"
        print(f"cleanup: removed {removed} bench containers; removed network: {network}")

    def _remove_network(self, name: str, timeout: float = 15.0) -> bool:
        """Remove a bench network, retrying while dockerd still counts endpoints.

        dockerd 20.10 can keep a stale endpoint count after hundreds of containers are
        removed at once, and then refuses for good ("has active endpoints") until it restarts;
        such a network is left in place and reused by the next run (`_create_network`).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.api.remove_network(name)
                return True
            except docker.errors.NotFound:
                return True
            except docker.errors.APIError as err:
                if "active endpoints" not in str(err) or time.monotonic() > deadline:
                    print(f"cleanup: network {name} stays (reused by the next run): {err}")
                    return False
            time.sleep(1)

    def remove_stale(self) -> None:
        """Remove what killed bench runs left behind (their owner process is gone)."""
        # The low-level list: the high-level one inspects each container and fails when one
        # goes away meanwhile.
        stale = [
            str(c["Id"])
            for c in self.client.api.containers(all=True, filters={"label": LABEL})
            if not _owner_alive(c.get("Labels") or {})
        ]
        if stale:
            print(f"removing {len(stale)} containers left by earlier bench runs")
            list(self.pool.map(self._remove, stale))
        for network in self.client.api.networks(filters={"label": LABEL}):
            if not _owner_alive(network.get("Labels") or {}):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    self.client.api.remove_network(network["Id"])

    def _remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            try:
                self.client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.APIError as err:
                if "already in progress" not in str(err):
                    raise

    def remove_run_containers(self) -> int:
        ids = [
            c["Id"]
            for c in self.client.api.containers(
                all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"}
            )
        ]
        # A fresh pool: this also runs after the setup pool was shut down.
        with ThreadPoolExecutor(SETUP_THREADS) as pool:
            list(pool.map(self._remove, ids))
        return len(ids)

    def labels(self, role: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            LABEL: "1",
            RUN_LABEL: self.run_id,
            OWNER_LABEL: _owner(),
            ROLE_LABEL: role,
            **(extra or {}),
        }

    def _create_network(self) -> str:
        # A bench network dockerd refused to delete (see _remove_network) is reused.
        for network in self.client.api.networks(filters={"label": LABEL}):
            if network.get("Driver") == "bridge":
                print(f"reusing bench network {network['Name']} left by an earlier run")
                return str(network["Name"])
        used = []
        for network in self.client.networks.list():
            for pool in (network.attrs.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(KeyError, ValueError):
                    used.append(ipaddress.ip_network(pool["Subnet"], strict=False))
        for candidate in NETWORK_CANDIDATES:
            subnet = ipaddress.ip_network(candidate)
            if any(subnet.overlaps(other) for other in used):
                continue
            name = f"rb-{self.run_id}"
            ipam = docker.types.IPAMConfig(
                pool_configs=[
                    docker.types.IPAMPool(subnet=str(subnet), gateway=str(next(subnet.hosts())))
                ]
            )
            try:
                self.client.networks.create(
                    name, driver="bridge", ipam=ipam, labels=self.labels("network")
                )
            except docker.errors.APIError as err:
                if "overlap" in str(err).lower():
                    continue
                raise
            return name
        raise BenchError(f"no free subnet among {NETWORK_CANDIDATES}")

    # --- containers -----------------------------------------------------------------------

    def _create_one(self, role: str, name: str, service_name: str) -> BenchContainer:
        api = self.client.api
        created = api.create_container(
            self.image,
            command=["sleep", "3600"],  # bounded even if everything else fails
            name=name,
            labels=self.labels(role, {"SERVICE_NAME": service_name}),
            ports=[CONTAINER_PORT],  # ExposedPorts: what -internal registers
            host_config=api.create_host_config(network_mode=self.network),
        )
        return BenchContainer(id=str(created["Id"]), name=name, service_name=service_name)

    async def create(self, role: str, count: int, start: bool = False) -> list[BenchContainer]:
        """`count` containers named rb-<run>-<role>-<i> with SERVICE_NAME=bench-<role>-<i>,
        created (and started, if asked) `SETUP_THREADS` at a time."""
        loop = asyncio.get_running_loop()

        def one(index: int) -> BenchContainer:
            container = self._create_one(
                role, f"rb-{self.run_id}-{role}-{index}", f"bench-{role}-{index}"
            )
            if start:
                self.client.api.start(container.id)
            return container

        futures = [loop.run_in_executor(self.pool, one, i) for i in range(count)]
        return list(await asyncio.gather(*futures))

    async def remove(self, containers: Iterable[BenchContainer]) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._remove, c.id) for c in containers)
        )

    def container_name(self, container_id: str) -> str:
        """The container's name, or its short id if it is gone already."""
        try:
            return str(self.client.api.inspect_container(container_id)["Name"]).lstrip("/")
        except docker.errors.NotFound:
            return container_id[:12] + " (gone)"

    def running_containers(self) -> int:
        """Containers running on the daemon right now, ours and anyone else's."""
        return len(self.client.api.containers())

    # --- Consul and the agent -------------------------------------------------------------

    def consul(self, name: str) -> ConsulAgent:
        agent = make_consul_agent(self.work / f"consul-{name}", node_name=f"bench-consul-{name}")
        self.consuls.append(agent)
        return agent

    def stop_consul(self, agent: ConsulAgent) -> None:
        agent.stop()
        with contextlib.suppress(ValueError):
            self.consuls.remove(agent)

    def node_name(self, phase: str) -> str:
        return f"bench-{self.run_id}-{phase}"

    def agent(
        self,
        consul: ConsulAgent,
        phase: str,
        extra_args: Sequence[str] = (),
        docker_host: str | None = None,
    ) -> AgentProcess:
        agent = AgentProcess(
            consul,
            self.node_name(phase),
            self.work / f"agent-{phase}.log",
            docker_host=docker_host,
            extra_args=extra_args,
        )
        self.agents.append(agent)
        return agent

    def async_docker(self) -> AsyncDocker:
        return AsyncDocker(self.docker_socket, self.api_version)


def registered_times(log_path: Path) -> dict[str, float]:
    """service id -> time.time() of the agent's "registered <id> ..." line (text log format,
    local time, millisecond resolution): when Consul had answered the agent's PUT."""
    found: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 6)
        if len(parts) < 6 or parts[4] != "registered":
            continue
        with contextlib.suppress(ValueError):
            stamp = datetime.datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f")
            found[parts[5]] = stamp.timestamp()
    return found


def registration_like(
    service_id: str, name: str, address: str, node: str = "bench-bare"
) -> dict[str, Any]:
    """A registration body of exactly the shape the agent sends for a bench container (built
    with the agent's own payload code), owned by a node no agent runs as, so no agent's
    reconcile ever removes it."""
    from registrator.model import META_CONTAINER, META_NODE, META_SOURCE, OWNER_SOURCE, Service
    from registrator.payload import registration

    container_id = secrets.token_hex(32)
    service = Service(
        id=service_id,
        name=name,
        address=address,
        port=CONTAINER_PORT,
        tags=(),
        meta={META_SOURCE: OWNER_SOURCE, META_NODE: node, META_CONTAINER: container_id},
        container_id=container_id,
        container_name=service_id,
    )
    return registration(service)
