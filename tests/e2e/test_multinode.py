"""End to end on a real three-node swarm: three Docker engines on this machine, each in a
container of its own (Docker-in-Docker), forming a swarm of their own. deploy/'s stack files,
our image, registrator as a global service: every task must be registered by the agent of the
node it runs on, and one node's agent going away must remove nothing of the other nodes.

Layout (everything in 198.18.60.0/22, this module's range):

    host --- bridge network 198.18.61.0/24 (outer engine) --- node1 .11 (manager), node2 .12,
                                                              node3 .13 (workers)
    inner swarm: address pool 198.18.62.0/24 in /26s (ingress), our overlay 198.18.62.64/26;
    each inner engine's own bridges: docker0 198.18.63.0/26, docker_gwbridge from
    198.18.63.64/26 (node-local, so the same on every node)

Each inner engine listens on a unix socket in a host folder bind-mounted into its container,
so `docker -H unix://<folder>/docker.sock` on the host drives it. `--privileged` does not work
on this machine ("unable to apply caps"); the flags in DIND_RUN_FLAGS (from
/work/shared/ENVIRONMENT.md) do. Storage is vfs on a tmpfs: nothing is left on disk.

Consul is one server on node1 (deploy/consul-stack.yml: manager constraint, host-mode ports),
reached from the host at node1's bridge address. The fixed addresses make two runs on one
machine collide, so a file lock serialises this module; leftovers of a killed run are removed
under it first. The inner engines run nothing of anybody else, so nothing needs filtering.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from registrator.model import META_CONTAINER, META_NODE
from tests.e2e.support import CACHE, exclusive, run, run_quietly
from tests.helpers import LABEL, OWNER_LABEL, TEST_LABEL, wait_until

pytestmark = [
    pytest.mark.docker,
    pytest.mark.engines(
        "docker20",
        reason="its inner nodes are Debian's 20.10 in Docker-in-Docker; running the outer engine"
        " as 29 or Podman would test the same inner engines again",
    ),
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BUILD_IMAGES = REPO / "scripts" / "lib" / "build-images.sh"
STAMP_DIR = CACHE / "images"

DIND_IMAGE = "registrator-test/dind:latest"
CONSUL_IMAGE = "registrator-test/consul:1.14.0"
WEB_IMAGE = "registrator-test/web:latest"
API_IMAGE = "registrator-test/http-echo:latest"
NODE_LABEL = "registrator-test.multinode"
PREFIX = "rtmn"  # node names, stacks, the socket folder

BRIDGE_SUBNET = "198.18.61.0/24"
BRIDGE_GATEWAY = "198.18.61.1"
NODE_IPS = ("198.18.61.11", "198.18.61.12", "198.18.61.13")
SWARM_POOL = "198.18.62.0/24"
SWARM_POOL_MASK = "26"
OVERLAY_SUBNET = "198.18.62.64/26"
INNER_BIP = "198.18.63.1/26"
INNER_LOCAL_POOL = "base=198.18.63.64/26,size=27"
CONSUL_HTTP_PORT = 8500

DIND_RUN_FLAGS = (
    "--cap-add=ALL", "--cap-drop=SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "--device-cgroup-rule", "a *:* rwm",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup",
    "--tmpfs", "/run",
    "--tmpfs", "/var/lib/docker:exec",
)  # fmt: skip

WEB_REPLICAS = 6
API_REPLICAS = 2
RESYNC = 2  # seconds between the agents' full reconciles (set through the stack override)
CONVERGE = 90.0  # catalog changes; a new registrator task needs its image's start-up first

# What the tests add to deploy/'s stack files (`docker stack deploy -c FILE -c OVERRIDE`).
REGISTRATOR_OVERRIDE = f"""\
version: "3.9"
services:
  registrator:
    environment:
      REGISTRATOR_RESYNC: "{RESYNC}"
"""
APPLICATION_OVERRIDE = f"""\
version: "3.9"
services:
  web-service:
    deploy:
      replicas: {WEB_REPLICAS}
      placement:
        max_replicas_per_node: 3
"""

# Run inside a registrator task: its /metrics, at the address the stack gave it.
METRICS_SCRIPT = """\
import os, urllib.request
host, _, port = os.environ.get("REGISTRATOR_HTTP_ADDR", "127.0.0.1:9876").rpartition(":")
host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
print(urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=4).read().decode())
"""


def parallel(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls) or 1) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


# --------------------------------------------------------------------------------------------
# Tearing a node down without leaks


def empty_inner_engine(sock: str) -> list[str]:
    """Leaves the swarm and removes every container of an inner engine; returns their ids.

    Done before the node's container goes: the inner engine then removes its containers'
    cgroups, which live in the host's hierarchy (it sees the host's /sys/fs/cgroup).
    """
    host = f"unix://{sock}"
    if not os.path.exists(sock) or run_quietly(["docker", "-H", host, "version"], 10):
        return []
    run_quietly(["docker", "-H", host, "swarm", "leave", "--force"], 60)
    ids = subprocess.run(
        ["docker", "-H", host, "ps", "-aq", "--no-trunc"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout.split()  # fmt: skip
    if ids:
        run_quietly(["docker", "-H", host, "rm", "-f", *ids], 120)
    return ids


def remove_cgroups_of(container_ids: Sequence[str]) -> None:
    """rmdir cgroups an inner engine left behind (empty by then; best effort)."""
    for cid in container_ids:
        for path in Path("/sys/fs/cgroup").glob(f"*/docker/{cid}"):
            with contextlib.suppress(OSError):
                path.rmdir()


def remove_nodes(names: Sequence[str], socks: Sequence[str]) -> list[str]:
    """Empties each inner engine, then removes the node containers; returns problems."""
    inner = parallel([functools.partial(empty_inner_engine, sock) for sock in socks])
    problems = []
    if names:
        problem = run_quietly(["docker", "rm", "-f", "-v", *names], 120)
        if problem and "No such container" not in problem:
            problems.append(problem)
    remove_cgroups_of([cid for ids in inner for cid in ids])
    return problems


def remove_leftovers() -> None:
    """What a killed earlier run of this module left behind (called under the lock)."""
    names = run(
        ["docker", "ps", "-a", "--filter", f"label={NODE_LABEL}", "--format", "{{.Names}}"]
    ).split()
    socks = []
    for name in names:
        for mount in json.loads(run(["docker", "inspect", name]))[0]["Mounts"]:
            if mount["Destination"] == "/sock":
                socks.append(os.path.join(mount["Source"], "docker.sock"))
    remove_nodes(names, socks)
    for sock in socks:
        # <sock_root>/nN/docker.sock, with sock_root a mkdtemp named after the module's prefix.
        root = Path(sock).parent.parent
        if root.name.startswith(PREFIX):
            shutil.rmtree(root, ignore_errors=True)
    for network in run(
        ["docker", "network", "ls", "-q", "--filter", f"label={NODE_LABEL}"]
    ).split():
        run_quietly(["docker", "network", "rm", network])


# --------------------------------------------------------------------------------------------
# The cluster


@dataclass(frozen=True)
class Task:
    container: str  # full container id
    node: str  # hostname of the node it runs on
    address: str  # its address on our overlay


@dataclass
class Cluster:
    prefix: str
    socks: list[str]  # per node, host path of its engine's socket
    nodes: list[str]  # hostnames (= container names), node1 first
    env: dict[str, str]  # for `docker stack deploy` against node1
    timings: dict[str, float] = field(default_factory=dict)
    _node_names: dict[str, str] = field(default_factory=dict)

    @property
    def overlay(self) -> str:
        return f"{self.prefix}-overlay"

    @property
    def web(self) -> str:
        return f"{self.prefix}-apps_web-service"

    @property
    def api(self) -> str:
        return f"{self.prefix}-apps_api-service"

    @property
    def registrator(self) -> str:
        return f"{self.prefix}-reg_registrator"

    def docker(self, node: int | str, *args: str, timeout: float = 120) -> str:
        """`docker ARGS` against one inner engine (index, or hostname)."""
        index = self.nodes.index(node) if isinstance(node, str) else node
        return run(["docker", "-H", f"unix://{self.socks[index]}", *args], timeout=timeout)

    def consul(self, path: str) -> Any:
        url = f"http://{NODE_IPS[0]}:{CONSUL_HTTP_PORT}/{path.lstrip('/')}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=5) as answer:
            return json.loads(answer.read() or b"null")

    def entries(self, *names: str) -> dict[str, dict[str, Any]]:
        """The Consul server agent's services named `names`, by id (every registrator in the
        swarm registers with this one agent)."""
        services: dict[str, dict[str, Any]] = self.consul("/v1/agent/services")
        return {sid: s for sid, s in services.items() if s["Service"] in names}

    def node_name(self, node_id: str) -> str:
        if node_id not in self._node_names:
            info = json.loads(self.docker(0, "node", "inspect", node_id))[0]
            self._node_names[node_id] = info["Description"]["Hostname"]
        return self._node_names[node_id]

    def tasks(self, service: str) -> list[Task]:
        """Running tasks of `service`, with the node each runs on (the manager's view)."""
        ids = self.docker(
            0, "service", "ps", "-q", "--filter", "desired-state=running", service
        ).split()
        if not ids:
            return []
        result = []
        for task in json.loads(self.docker(0, "inspect", *ids)):
            status = task["Status"]
            container = (status.get("ContainerStatus") or {}).get("ContainerID")
            if status["State"] != "running" or not container:
                continue
            address = next(
                (
                    a["Addresses"][0].split("/")[0]
                    for a in task.get("NetworksAttachments") or []
                    if a["Network"]["Spec"]["Name"] == self.overlay
                ),
                None,
            )
            assert address, f"task {task['ID']} has no address on {self.overlay}"
            result.append(Task(container, self.node_name(task["NodeID"]), address))
        return result

    def running_containers(self, node: int | str, service: str) -> set[str]:
        """Container ids of `service` running on one node, as that node's engine lists them."""
        return set(
            self.docker(
                node, "ps", "-q", "--no-trunc",
                "--filter", f"label=com.docker.swarm.service.name={service}",
            ).split()
        )  # fmt: skip

    def full_reconciles(self, node: int | str) -> int:
        """How many full reconciles the registrator task on `node` has finished."""
        (container,) = self.running_containers(node, self.registrator)
        metrics = self.docker(node, "exec", container, "python3", "-c", METRICS_SCRIPT)
        found = re.search(r'^registrator_reconciles_total\{scope="full"\} (\S+)$', metrics, re.M)
        assert found, metrics
        return int(float(found.group(1)))


def registered_as_tasks(
    cluster: Cluster, name: str, tasks: Sequence[Task], port: int
) -> dict[str, tuple[str, str, int]] | None:
    """The entries of `name`, by container, if they are exactly `tasks`: one each, owned by
    the node the task runs on, at its overlay address. None otherwise."""
    entries = cluster.entries(name).values()
    held: dict[str, tuple[str, str, int]] = {}
    for entry in entries:
        meta = entry.get("Meta") or {}
        held[str(meta.get(META_CONTAINER))] = (
            str(meta.get(META_NODE)),
            entry["Address"],
            entry["Port"],
        )
    want = {t.container: (t.node, t.address, port) for t in tasks}
    # Equal dicts from as many entries as tasks: one entry per task, none extra.
    return held if len(entries) == len(want) and held == want else None


def wait_registered(cluster: Cluster, name: str, service: str, count: int, port: int) -> None:
    def check() -> bool:
        tasks = cluster.tasks(service)
        return len(tasks) == count and registered_as_tasks(cluster, name, tasks, port) is not None

    try:
        wait_until(
            check,
            timeout=CONVERGE,
            interval=0.5,
            message=f"Consul's {name} did not match the {count} running tasks of {service}",
            ignore=(OSError, ValueError),
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nConsul: {cluster.entries(name)}\ntasks: {cluster.tasks(service)}"
        ) from None


def owner_labels(test_id: str) -> list[str]:
    """The labels tests/helpers.py's stale-resource clean-up goes by (plus this module's own)."""
    owner = f"{socket.gethostname()}:{os.getpid()}"
    pairs = {NODE_LABEL: "1", LABEL: "1", OWNER_LABEL: owner, TEST_LABEL: test_id}
    return [arg for key, value in pairs.items() for arg in ("--label", f"{key}={value}")]


def start_nodes(prefix: str, network: str, socks: list[str], test_id: str) -> list[str]:
    names = []
    for index, (ip, sock) in enumerate(zip(NODE_IPS, socks, strict=True), start=1):
        name = f"{prefix}-n{index}"
        run(
            ["docker", "run", "-d", "--name", name, "--hostname", name,
             "--network", network, "--ip", ip, *DIND_RUN_FLAGS,
             "-v", f"{os.path.dirname(sock)}:/sock",
             *owner_labels(test_id), DIND_IMAGE,
             "dockerd", "-H", "unix:///var/run/docker.sock", "-H", "unix:///sock/docker.sock",
             "--storage-driver", "vfs", "--bip", INNER_BIP,
             "--default-address-pool", INNER_LOCAL_POOL]
        )  # fmt: skip
        names.append(name)
    return names


def report_timings(config: pytest.Config, timings: Mapping[str, float]) -> None:
    """Shows the phases' durations on the terminal, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    line = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in timings.items())
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line(f"\nmultinode timings: {line}")


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    started = time.monotonic()
    run([str(BUILD_IMAGES), "dind"], timeout=900)
    registrator_image = (STAMP_DIR / "registrator-build-tag").read_text().strip()
    timings = {"images (build-images.sh dind)": time.monotonic() - started}
    prefix = f"{PREFIX}{secrets.token_hex(3)}"
    network = f"{prefix}-net"
    # Short: a unix socket path must fit in 108 bytes.
    sock_root = tempfile.mkdtemp(prefix=f"{prefix}-")
    socks = [os.path.join(sock_root, f"n{i}", "docker.sock") for i in (1, 2, 3)]
    overrides = tmp_path_factory.mktemp("multinode")
    (overrides / "registrator.yml").write_text(REGISTRATOR_OVERRIDE)
    (overrides / "applications.yml").write_text(APPLICATION_OVERRIDE)
    names: list[str] = []
    problems: list[str] = []
    with exclusive("multinode"):
        remove_leftovers()
        try:
            phase = time.monotonic()
            for sock in socks:
                os.makedirs(os.path.dirname(sock))
            run(
                ["docker", "network", "create", "--subnet", BRIDGE_SUBNET,
                 "--gateway", BRIDGE_GATEWAY, *owner_labels(request.node.nodeid), network]
            )  # fmt: skip
            names = start_nodes(prefix, network, socks, request.node.nodeid)
            cluster = Cluster(prefix=prefix, socks=socks, nodes=names, env={})
            for index, name in enumerate(names):
                try:
                    wait_until(
                        functools.partial(cluster.docker, index, "version", timeout=10),
                        timeout=60,
                        interval=0.2,
                        message=f"inner engine {name} did not answer",
                        ignore=(AssertionError, subprocess.TimeoutExpired),
                    )
                except AssertionError as exc:
                    logs = subprocess.run(
                        ["docker", "logs", "--tail", "30", name],
                        capture_output=True, text=True, timeout=30, check=False,
                    )  # fmt: skip
                    raise AssertionError(f"{exc}\n{logs.stdout}{logs.stderr}") from None
            timings["3 engines up"] = time.monotonic() - phase

            phase = time.monotonic()
            images = os.path.join(sock_root, "images.tar")
            run(["docker", "save", "-o", images, registrator_image, CONSUL_IMAGE, WEB_IMAGE,
                 API_IMAGE], timeout=300)  # fmt: skip
            parallel(
                [functools.partial(cluster.docker, i, "load", "-q", "-i", images, timeout=600)
                 for i in range(3)]
            )  # fmt: skip
            os.unlink(images)
            timings["images loaded into 3 engines"] = time.monotonic() - phase

            phase = time.monotonic()
            cluster.docker(
                0, "swarm", "init", "--advertise-addr", NODE_IPS[0],
                "--default-addr-pool", SWARM_POOL,
                "--default-addr-pool-mask-length", SWARM_POOL_MASK,
            )  # fmt: skip
            token = cluster.docker(0, "swarm", "join-token", "-q", "worker").strip()
            for index in (1, 2):
                cluster.docker(
                    index, "swarm", "join", "--token", token,
                    "--advertise-addr", NODE_IPS[index], f"{NODE_IPS[0]}:2377",
                )  # fmt: skip

            def all_ready() -> bool:
                listed = cluster.docker(0, "node", "ls", "--format", "{{.Hostname}} {{.Status}}")
                return sorted(listed.split()) == sorted([*names, "Ready", "Ready", "Ready"])

            wait_until(all_ready, timeout=60, interval=0.5, message="swarm nodes not all Ready")
            cluster.docker(
                0, "network", "create", "--driver", "overlay", "--attachable",
                "--subnet", OVERLAY_SUBNET, cluster.overlay,
            )  # fmt: skip
            timings["swarm of 3 formed"] = time.monotonic() - phase

            phase = time.monotonic()
            cluster.env.update(
                DOCKER_HOST=f"unix://{socks[0]}",
                CONSUL_IMAGE=CONSUL_IMAGE,
                REGISTRATOR_IMAGE=registrator_image,
                WEB_IMAGE=WEB_IMAGE,
                API_IMAGE=API_IMAGE,
                OVERLAY_NETWORK=cluster.overlay,
                CONSUL_HTTP_PORT=str(CONSUL_HTTP_PORT),
                CONSUL_DNS_PORT="8600",
            )

            def deploy(stack: str, *files: Path) -> None:
                args = [a for f in files for a in ("-c", str(f))]
                run(["docker", "stack", "deploy", "--resolve-image", "never", *args,
                     f"{prefix}-{stack}"], env=cluster.env)  # fmt: skip

            deploy("consul", DEPLOY / "consul-stack.yml")
            wait_until(
                lambda: cluster.consul("/v1/status/leader"),
                timeout=90,
                interval=0.5,
                message="Consul on node1 got no leader",
                ignore=(OSError, ValueError),
            )
            deploy("reg", DEPLOY / "registrator-stack.yml", overrides / "registrator.yml")
            deploy("apps", DEPLOY / "application-stack.yml", overrides / "applications.yml")
            timings["stacks deployed, Consul leader"] = time.monotonic() - phase
            timings["setup total"] = time.monotonic() - started
            cluster.timings = timings
            yield cluster
        finally:
            phase = time.monotonic()
            problems += remove_nodes(names, socks)
            problem = run_quietly(["docker", "network", "rm", network])
            if problem and "not found" not in problem and "No such" not in problem:
                problems.append(problem)
            shutil.rmtree(sock_root, ignore_errors=True)
            timings["teardown"] = time.monotonic() - phase
            report_timings(request.config, timings)
    if problems:
        pytest.fail("teardown: " + "; ".join(problems), pytrace=False)


# --------------------------------------------------------------------------------------------
# Tests (in file order; they share the deployment)


def test_every_task_is_registered_by_the_agent_of_its_own_node(cluster: Cluster) -> None:
    started = time.monotonic()
    wait_registered(cluster, "web-service", cluster.web, WEB_REPLICAS, 80)
    wait_registered(cluster, "api-service", cluster.api, API_REPLICAS, 5678)
    cluster.timings["first registration of all tasks"] = time.monotonic() - started

    web = cluster.tasks(cluster.web)
    # Spread 2/2/2 (Swarm balances a service's tasks over the nodes): every node's agent has
    # work to do.
    assert collections.Counter(t.node for t in web) == dict.fromkeys(cluster.nodes, 2)
    # The manager's view of where each task runs agrees with each node's own engine.
    for node in cluster.nodes:
        assert cluster.running_containers(node, cluster.web) == {
            t.container for t in web if t.node == node
        }
        # and one registrator runs on every node (global service).
        assert len(cluster.running_containers(node, cluster.registrator)) == 1

    entries = cluster.entries("web-service", "api-service")
    by_container = {t.container: t for t in [*web, *cluster.tasks(cluster.api)]}
    assert len(entries) == WEB_REPLICAS + API_REPLICAS
    for sid, entry in entries.items():
        task = by_container[entry["Meta"][META_CONTAINER]]
        # Registered by the agent on the task's own node, under that node's name.
        assert entry["Meta"][META_NODE] == task.node, (sid, task)
        assert sid.startswith(f"{task.node}:{cluster.prefix}-apps_"), sid
        assert entry["Address"] == task.address
    # Service ids are unique by construction of the dict; the catalog agrees with the agent.
    catalog = cluster.consul("/v1/catalog/service/web-service")
    assert sorted(e["ServiceID"] for e in catalog) == sorted(
        sid for sid, e in entries.items() if e["Service"] == "web-service"
    )


def test_stopping_one_nodes_registrator_removes_nothing_of_the_others(cluster: Cluster) -> None:
    node1, node2, node3 = cluster.nodes
    wait_registered(cluster, "web-service", cluster.web, WEB_REPLICAS, 80)
    before = cluster.entries("web-service", "api-service")
    owners = collections.Counter(e["Meta"][META_NODE] for e in before.values())
    assert set(owners) == {node1, node2, node3}, owners

    def nothing_lost() -> dict[str, dict[str, Any]]:
        now = cluster.entries("web-service", "api-service")
        lost = sorted(set(before) - set(now))
        assert not lost, f"entries removed after node2's registrator stopped: {lost}"
        return now

    # node2's registrator stops for good: the global service no longer runs there (Swarm
    # stops the task with SIGTERM; the agent exits without deregistering anything).
    others = {
        node: cluster.running_containers(node, cluster.registrator) for node in (node1, node3)
    }
    baseline = {node: cluster.full_reconciles(node) for node in (node1, node3)}
    cluster.docker(
        0, "service", "update", "--detach", "--constraint-add", f"node.hostname!={node2}",
        cluster.registrator,
    )  # fmt: skip
    phase = time.monotonic()
    wait_until(
        lambda: nothing_lost() and not cluster.running_containers(node2, cluster.registrator),
        timeout=CONVERGE,
        interval=0.3,
        message=f"registrator still runs on {node2}",
    )

    # The agents on node1 and node3 keep running (the update did not touch their tasks) and do
    # full reconciles every RESYNC seconds; wait for two of each after node2's agent went.
    # (Swarm changes no task whose node still meets the new constraint.)
    assert others == {n: cluster.running_containers(n, cluster.registrator) for n in others}
    after_stop = {node: cluster.full_reconciles(node) for node in (node1, node3)}
    assert all(after_stop[n] >= baseline[n] for n in after_stop), (baseline, after_stop)

    def reconciled_twice() -> bool:
        nothing_lost()
        return all(cluster.full_reconciles(n) >= after_stop[n] + 2 for n in after_stop)

    wait_until(
        reconciled_twice,
        timeout=10 * RESYNC + 10,
        interval=0.5,
        message="node1's and node3's agents did not run two full reconciles",
    )
    cluster.timings["node2's agent stopped, 2 full reconciles of the others"] = (
        time.monotonic() - phase
    )
    # Nothing removed, nothing changed: node2's entries stay (owned by node2, which nobody else
    # touches), and the other nodes' entries are exactly as before.
    assert nothing_lost() == before

    # The remaining agents still follow their own nodes: 9 web tasks, 3 per node. node2's new
    # task is not registered (its agent is down); node1's and node3's are.
    # (max_replicas_per_node 3 from the override: 3 per node. Only the count changes, so the
    # running tasks stay as they are.)
    cluster.docker(0, "service", "scale", "--detach", f"{cluster.web}=9")

    def others_registered() -> bool:
        nothing_lost()
        every = cluster.tasks(cluster.web)
        tasks = [t for t in every if t.node != node2]
        if len(every) != 9 or len(tasks) != 6:
            return False
        held = {
            e["Meta"][META_CONTAINER]: (e["Meta"][META_NODE], e["Address"])
            for e in cluster.entries("web-service").values()
            if e["Meta"][META_NODE] != node2
        }
        return held == {t.container: (t.node, t.address) for t in tasks}

    phase = time.monotonic()
    wait_until(others_registered, timeout=CONVERGE, interval=0.5,
               message="node1's and node3's new web tasks were not registered")  # fmt: skip
    cluster.timings["scaled to 9, node1/node3's new tasks registered"] = time.monotonic() - phase
    node2_tasks = {t.container for t in cluster.tasks(cluster.web) if t.node == node2}
    node2_held = {
        e["Meta"][META_CONTAINER]
        for e in cluster.entries("web-service").values()
        if e["Meta"][META_NODE] == node2
    }
    assert node2_held < node2_tasks, (node2_held, node2_tasks)

    # node2's agent comes back and catches up with its node; the others' entries stay as they
    # are (every entry still owned by the node its task runs on).
    cluster.docker(
        0, "service", "update", "--detach", "--constraint-rm", f"node.hostname!={node2}",
        cluster.registrator,
    )  # fmt: skip
    phase = time.monotonic()
    wait_registered(cluster, "web-service", cluster.web, 9, 80)
    cluster.timings["node2's agent back, all 9 registered"] = time.monotonic() - phase
    assert set(before) <= set(cluster.entries("web-service", "api-service"))


def test_swarm_vip_on_three_managers_only_the_leaders_agent_writes(cluster: Cluster) -> None:
    """-swarm-vip on every node of a swarm with three managers: one entry per service, at
    its VIP, written by the agent on the leader; the other managers' agents write nothing."""
    node1, node2, node3 = cluster.nodes
    cluster.docker(0, "node", "promote", node2, node3)
    vip_agents = f"{cluster.prefix}-vipreg"
    owners = {f"vip-{node}" for node in cluster.nodes}
    try:
        leader = json.loads(cluster.docker(0, "node", "inspect", "self"))[0]
        assert leader["ManagerStatus"]["Leader"], "node1 created the swarm and should lead it"
        cluster.docker(
            0, "service", "create", "--detach", "--name", vip_agents, "--mode", "global",
            "--network", cluster.overlay,
            "--mount", "type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock,readonly",
            "--env", "REGISTRATOR_NODE=vip-{{.Node.Hostname}}",
            "--env", "REGISTRATOR_SWARM_VIP=true", "--env", "REGISTRATOR_INTERNAL=true",
            "--env", f"REGISTRATOR_RESYNC={RESYNC}", "--env", "REGISTRATOR_DEREGISTER_ON_EXIT=true",
            cluster.env["REGISTRATOR_IMAGE"], "consul://consul-server:8500",
        )  # fmt: skip
        overlay_id = cluster.docker(
            0, "network", "inspect", "--format", "{{.Id}}", cluster.overlay
        ).strip()

        def vip(service: str) -> str:
            endpoint = json.loads(cluster.docker(0, "service", "inspect", service))[0]["Endpoint"]
            return next(
                v["Addr"].split("/")[0] for v in endpoint["VirtualIPs"]
                if v["NetworkID"] == overlay_id
            )  # fmt: skip

        want = {
            f"swarm:{cluster.web}:80": ("web-service", f"vip-{node1}", vip(cluster.web), 80),
            f"swarm:{cluster.api}:5678": ("api-service", f"vip-{node1}", vip(cluster.api), 5678),
        }

        def written_by_vip_agents() -> dict[str, tuple[str, str, str, int]]:
            services: dict[str, dict[str, Any]] = cluster.consul("/v1/agent/services")
            return {
                sid: (s["Service"], s["Meta"][META_NODE], s["Address"], s["Port"])
                for sid, s in services.items()
                if (s.get("Meta") or {}).get(META_NODE) in owners
                and s["Service"] in ("web-service", "api-service")
            }

        wait_until(
            lambda: written_by_vip_agents() == want,
            timeout=CONVERGE,
            interval=0.5,
            message=f"expected exactly {want}",
            ignore=(OSError, ValueError),
        )
        # Every agent has had several resyncs by now: still only the leader's entries, and
        # the tasks of these vip-mode services are registered by none of the VIP agents.
        for _ in range(3):
            time.sleep(RESYNC)
            assert written_by_vip_agents() == want
        assert len(cluster.running_containers(node2, vip_agents)) == 1
        assert len(cluster.running_containers(node3, vip_agents)) == 1
    finally:
        cluster.docker(0, "service", "rm", vip_agents)
        # Back to one manager, one node at a time: raft refuses a demotion while the previous
        # one is still leaving ("would result in a loss of quorum"), so each is retried.
        for node in (node3, node2):
            wait_until(
                functools.partial(cluster.docker, 0, "node", "demote", node),
                timeout=60,
                interval=1,
                message=f"{node} could not be demoted",
                ignore=(AssertionError,),
            )
    # -deregister-on-exit: the leader's agent removed its VIP entries on the way out.
    wait_until(
        lambda: (
            not any(
                (s.get("Meta") or {}).get(META_NODE) in owners
                for s in cluster.consul("/v1/agent/services").values()
            )
        ),
        timeout=CONVERGE,
        interval=0.5,
        message="the VIP agents' entries remain after their service was removed",
        ignore=(OSError, ValueError),
    )


# --------------------------------------------------------------------------------------------
# A lost node (issue 14): heartbeat, alias checks, the leader's Swarm-aware reaping. Last in
# the file: the final test kills node3 for good.

NODE_TTL = 8  # set by the restart test's `service update`, so the loss test is quick
SWARM_REAP_AFTER = 10
APP_SERVICES = ("web-service", "api-service")


class CriticalWatch:
    """Polls Consul's critical checks in a thread and keeps those of the watched services."""

    def __init__(self, cluster: Cluster, names: Sequence[str]) -> None:
        self.cluster, self.names = cluster, set(names)
        self.seen: list[tuple[str, str, str]] = []  # (service id, check id, output)
        self._stop = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._future = self._pool.submit(self._run)

    def _run(self) -> int:
        polls = 0
        while not self._stop:
            with contextlib.suppress(OSError, ValueError):
                for check in self.cluster.consul("/v1/health/state/critical"):
                    if check.get("ServiceName") in self.names:
                        self.seen.append(
                            (check["ServiceID"], check["CheckID"], check["Output"][:200])
                        )
                polls += 1
            time.sleep(0.25)
        return polls

    def stop(self) -> int:
        self._stop = True
        polls: int = self._future.result(timeout=30)
        self._pool.shutdown()
        return polls


def heartbeat_outputs(cluster: Cluster) -> dict[str, str]:
    """Each node's heartbeat check output, by node."""
    checks: dict[str, dict[str, Any]] = cluster.consul("/v1/agent/checks")
    return {
        check["ServiceID"].split(":", 1)[1]: check["Output"]
        for check in checks.values()
        if check["ServiceID"].startswith("registrator:") and check["ServiceName"] == "registrator"
    }


def test_restarting_registrator_tasks_turns_nothing_critical(cluster: Cluster) -> None:
    """A crashed agent restarted by Swarm, and two rolling updates of the global service
    (`--force`, then new settings): the agents resume their nodes' heartbeats, and no
    application service nor heartbeat is ever critical."""
    node3 = cluster.nodes[2]
    # Back to 6 from the scaling test: after node3 is lost, its two fit on node1 and node2.
    cluster.docker(0, "service", "scale", "--detach", f"{cluster.web}={WEB_REPLICAS}")
    wait_registered(cluster, "web-service", cluster.web, WEB_REPLICAS, 80)
    wait_until(lambda: len(heartbeat_outputs(cluster)) == 3, timeout=CONVERGE,
               message="not every node has a heartbeat")  # fmt: skip
    watch = CriticalWatch(cluster, [*APP_SERVICES, "registrator"])
    try:
        # Swarm restart: the agent on node3 dies without a goodbye; restart_policy brings it
        # back after 2 s, and it beats the same check again.
        (old,) = cluster.running_containers(node3, cluster.registrator)
        phase = time.monotonic()
        cluster.docker(node3, "kill", old)

        def restarted() -> bool:
            running = cluster.running_containers(node3, cluster.registrator)
            return bool(running - {old}) and f"host {old[:12]}" not in heartbeat_outputs(
                cluster
            ).get(node3, f"host {old[:12]}")

        wait_until(restarted, timeout=CONVERGE, interval=0.5,
                   message="node3's agent was not restarted, or does not beat")  # fmt: skip
        cluster.timings["agent SIGKILLed, restarted and beating"] = time.monotonic() - phase

        for args in (
            ["--force"],
            ["--env-add", f"REGISTRATOR_NODE_TTL={NODE_TTL}",
             "--env-add", f"REGISTRATOR_SWARM_REAP_AFTER={SWARM_REAP_AFTER}"],
        ):  # fmt: skip
            phase = time.monotonic()
            cluster.docker(0, "service", "update", "--quiet", *args, cluster.registrator,
                           timeout=600)  # fmt: skip
            cluster.timings[f"service update {args[0]}"] = time.monotonic() - phase
        # Every node's heartbeat is now beaten by an agent with the new TTL.
        wait_until(
            lambda: all(
                f"critical if none for {NODE_TTL} s" in output
                for output in heartbeat_outputs(cluster).values()
            ),
            timeout=CONVERGE,
            message="not every heartbeat was resumed by an updated agent",
        )
        time.sleep(NODE_TTL)  # past the point where a heartbeat left behind would expire
    finally:
        polls = watch.stop()
    assert polls > 10, polls
    assert watch.seen == [], watch.seen[:20]
    wait_registered(cluster, "web-service", cluster.web, WEB_REPLICAS, 80)


def dig(name: str) -> list[str]:
    result = subprocess.run(
        ["dig", f"@{NODE_IPS[0]}", "-p", "8600", "+short", "+time=2", "+tries=1", name],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return sorted(result.stdout.split())


def test_a_lost_nodes_services_turn_critical_then_are_reaped(cluster: Cluster) -> None:
    """node3's engine is killed (its container, SIGKILL): its agent dies with it, without
    deregistering. Its services turn critical within the TTL and leave DNS; the leader's agent
    on node1 removes them once Swarm has said `down` for -swarm-reap-after; node1's and
    node2's entries never change."""
    node1, node2, node3 = cluster.nodes
    wait_registered(cluster, "web-service", cluster.web, WEB_REPLICAS, 80)
    wait_registered(cluster, "api-service", cluster.api, API_REPLICAS, 5678)
    entries = cluster.entries(*APP_SERVICES)
    lost = {sid for sid, e in entries.items() if e["Meta"][META_NODE] == node3}
    kept = {sid: e for sid, e in entries.items() if e["Meta"][META_NODE] != node3}
    assert lost and kept
    lost_addresses = {entries[sid]["Address"] for sid in lost if sid.endswith(":80")}
    assert lost_addresses <= set(dig("web-service.service.consul"))
    inner = subprocess.run(
        ["docker", "-H", f"unix://{cluster.socks[2]}", "ps", "-aq", "--no-trunc"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout.split()  # fmt: skip

    run(["docker", "kill", f"{cluster.prefix}-n3"])
    killed = time.monotonic()
    remove_cgroups_of(inner)  # empty now: the inner processes died with their PID namespace
    watch = CriticalWatch(cluster, APP_SERVICES)
    times: dict[str, float] = {}
    try:

        def progress() -> bool:
            states = {c["ServiceID"]: c["Status"] for c in cluster.consul("/v1/health/state/any")
                      if c["CheckID"].endswith(":registrator-node")}  # fmt: skip
            services = cluster.consul("/v1/agent/services")
            if "critical" not in times and all(states.get(sid) == "critical" for sid in lost):
                times["critical"] = time.monotonic() - killed
                times["dns"] = -1.0
            if times.get("dns") == -1.0 and not lost_addresses & set(
                dig("web-service.service.consul")
            ):
                times["dns"] = time.monotonic() - killed
            if "down" not in times and f"{node3} Down" in cluster.docker(
                0, "node", "ls", "--format", "{{.Hostname}} {{.Status}}"
            ):
                times["down"] = time.monotonic() - killed
            if "removed" not in times and not lost & set(services):
                times["removed"] = time.monotonic() - killed
                assert f"registrator:{node3}" not in services
            # node1's and node2's entries: all there, unchanged, never critical.
            assert {sid: services.get(sid) for sid in kept} == kept
            return {"critical", "dns", "down", "removed"} <= times.keys() and times["dns"] > 0

        wait_until(progress, timeout=180, interval=0.25, ignore=(OSError, ValueError),
                   message="node3's services were not failed and removed in time")  # fmt: skip
    finally:
        watch.stop()
    assert not [seen for seen in watch.seen if seen[0] in kept], watch.seen[:20]
    cluster.timings.update({f"node3 killed -> {what}": t for what, t in times.items()})
    assert times["critical"] <= NODE_TTL + 5, times
    assert times["removed"] - times["down"] <= SWARM_REAP_AFTER + RESYNC + 3, times
    # The leader's agent says why it removed them.
    (leader_agent,) = cluster.running_containers(node1, cluster.registrator)
    logs = subprocess.run(
        ["docker", "-H", f"unix://{cluster.socks[0]}", "logs", leader_agent],
        capture_output=True, text=True, timeout=30, check=False,
    ).stderr  # fmt: skip
    assert f"node {node3} is lost (Swarm node {node3} down for" in logs, logs[-2000:]
    # Swarm reschedules node3's web tasks on node1 and node2, whose agents register them.
    wait_registered(cluster, "web-service", cluster.web, WEB_REPLICAS, 80)
    assert {e["Meta"][META_NODE] for e in cluster.entries(*APP_SERVICES).values()} <= {
        node1,
        node2,
    }
