"""Values that flow between the pure core and the I/O shell.

Everything here is a frozen dataclass: the planner compares values, never identities, and a
value read from Docker can be handed to several reconciles without anyone changing it. They
have __slots__ (no per-instance __dict__): the reconciler keeps several per container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

OWNER_SOURCE = "registrator"
META_SOURCE = "external-source"
META_NODE = "registrator-node"
META_CONTAINER = "registrator-container"
META_HASH = "registrator-hash"
OWNER_META_KEYS = frozenset({META_SOURCE, META_NODE, META_CONTAINER, META_HASH})


@dataclass(frozen=True, slots=True)
class PortBinding:
    """One host binding of a container port (`-p HOSTIP:HOSTPORT:PORT`)."""

    host_ip: str
    host_port: int


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A port the container exposes, with where (if anywhere) it is published."""

    port: int
    protocol: str  # "tcp" | "udp" | "sctp"
    bindings: tuple[PortBinding, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    """One network of a container: its IPv4 and (global) IPv6 address there, either may be ""."""

    name: str
    ip: str
    network_id: str = ""
    ipv6: str = ""

    @property
    def address(self) -> str:
        """The address to register: IPv4 on a dual-stack network, else the one there is."""
        return self.ip or self.ipv6

    def tagged_addresses(self) -> dict[str, str]:
        """Consul's `lan_ipv4`/`lan_ipv6` tagged addresses, given where IPv6 is in play.

        An IPv4-only network gives none: `Address` says it all, and registrations stay as
        they were before IPv6 was read.
        """
        if not self.ipv6:
            return {}
        tagged = {"lan_ipv6": self.ipv6}
        if self.ip:
            tagged["lan_ipv4"] = self.ip
        return tagged


@dataclass(frozen=True, slots=True)
class SwarmPort:
    """One port a Swarm service publishes (`docker service create -p published:target`)."""

    target: int
    published: int
    protocol: str
    mode: str  # "ingress" (routing mesh, on every node) | "host" (only where a task runs)


@dataclass(frozen=True, slots=True)
class SwarmService:
    """What a manager's `GET /services/{id}` says that a task container cannot.

    Workers cannot read services, so this is known only where the agent runs on a manager.
    """

    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)  # service (deploy) labels
    container_labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[SwarmPort, ...] = ()
    endpoint_mode: str = "vip"  # "vip" | "dnsrr"
    # The service's virtual IP on each network it is attached to (network id → address).
    virtual_ips: Mapping[str, str] = field(default_factory=dict)
    image: str = ""


@dataclass(frozen=True, slots=True)
class Container:
    """What the planner needs of one `docker inspect` answer."""

    id: str
    name: str
    image: str
    hostname: str
    labels: Mapping[str, str]
    env: Mapping[str, str]
    ports: tuple[ContainerPort, ...]
    networks: tuple[NetworkAttachment, ...]
    network_mode: str
    running: bool
    paused: bool
    restarting: bool
    exit_code: int
    health: str | None = None
    health_output: str = ""
    # When it last stopped (Docker's State.FinishedAt, RFC 3339; "" if it never did).
    finished_at: str = ""
    # The Swarm service this task container belongs to, when the agent could read it.
    swarm_service: SwarmService | None = None
    # Config.StopSignal as Docker holds it ("SIGTERM", "TERM", "15"; "" means SIGTERM) and
    # Config.StopTimeout in seconds (None: not set; `docker stop` then waits 10 s).
    stop_signal: str = ""
    stop_timeout: int | None = None
    # State.StartedAt (RFC 3339 with nanoseconds, UTC; "" if it never started).
    started_at: str = ""
    # `--network container:X`: the container X whose network stack this one shares, as the
    # shell read it (None: not read, or gone). See endpoints.on_owner_stack.
    network_owner: Container | None = None

    @property
    def network_owner_ref(self) -> str:
        """The id (or name) after `container:` in HostConfig.NetworkMode, else ""."""
        mode, _, ref = self.network_mode.partition(":")
        return ref if mode == "container" else ""


@dataclass(frozen=True, slots=True)
class Problem:
    """Something about a container's metadata that we could not honour, and why.

    Carried as data so the planner stays pure and the shell decides how (and how often)
    to log it.
    """

    container: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"container {self.container}: {self.key}: {self.reason}"


class CheckKind(StrEnum):
    """What a check is; the value is also the last part of its id (`service:ID:KIND`)."""

    HTTP = "http"
    HTTPS = "https"
    TCP = "tcp"
    GRPC = "grpc"
    TTL = "ttl"  # the application's own heartbeats (SERVICE_CHECK_TTL)
    SCRIPT = "script"  # run by registrator in the container, reported to a TTL check
    DOCKER_HEALTH = "docker-health"  # mirrors the container's Docker HEALTHCHECK
    HEARTBEAT = "registrator-ttl"  # -ttl: registrator itself is alive
    # A malformed SERVICE_CHECK_* key: critical, saying which key, which value and why.
    MISCONFIGURED = "misconfigured"
    NODE_ALIAS = "registrator-node"  # Consul aliases the node's heartbeat (-node-ttl)
    # A kept service of a container that exited (-deregister on-success): critical, saying
    # why, whatever other checks the service has, until the container runs again.
    EXITED = "exited"

    @property
    def reported_by_agent(self) -> bool:
        """A TTL check whose status registrator itself sends (Consul probes the others)."""
        return self in _REPORTED_BY_AGENT


_REPORTED_BY_AGENT = frozenset(
    {
        CheckKind.SCRIPT,
        CheckKind.DOCKER_HEALTH,
        CheckKind.HEARTBEAT,
        CheckKind.MISCONFIGURED,
        CheckKind.EXITED,
    }
)


@dataclass(frozen=True, slots=True)
class Check:
    """One Consul check definition, already in Consul's JSON field names.

    `fields` holds the kind-specific keys (HTTP, TCP, TTL, Interval, ...); keeping them as
    Consul spells them means the payload layer needs no per-kind code.
    """

    check_id: str
    kind: CheckKind
    name: str
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckUpdate:
    """A status registrator reports for one of its own checks (PUT /v1/agent/check/update).

    `refresh_after`: seconds after which an unchanged status is sent again, so that a TTL
    check does not expire (None: never resent).
    """

    check_id: str
    status: str  # "passing" | "warning" | "critical"
    output: str
    refresh_after: float | None = None
    # A newer output alone is not worth a write (the Docker health mirror: Podman sends an
    # event per probe, each with the probe's fresh output).
    status_only: bool = False


@dataclass(frozen=True, slots=True)
class Service:
    """One desired Consul service registration."""

    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: Mapping[str, str]
    container_id: str
    container_name: str
    checks: tuple[Check, ...] = ()
    connect: Mapping[str, object] | None = None
    # Command registrator itself runs in the container for the script check (not sent).
    script: str = ""
    script_interval: float = 0.0  # seconds between script runs (not sent either)
    script_timeout: float = 0.0  # seconds one script run may take (not sent either)
    # Consul's `Weights` (Passing, Warning) for DNS SRV answers; None keeps Consul's (1, 1).
    weights: tuple[int, int] | None = None
    # Consul's `EnableTagOverride`: tags changed in the catalog by others are kept.
    enable_tag_override: bool = False
    # Consul's `TaggedAddresses` by name (lan_ipv4, lan_ipv6), each at the service's port.
    tagged_addresses: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeldService:
    """What we know Consul holds for one of our services."""

    id: str
    container_id: str
    payload_hash: str
    name: str = ""
    address: str = ""
    port: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """The writes that make Consul hold what one container (or the node) should have.

    `drop_sidecars`: service id → the id of a Connect sidecar to deregister once that
    service is registered again without one (Consul keeps an orphaned sidecar otherwise).
    """

    register: tuple[Service, ...] = ()
    deregister: tuple[str, ...] = ()
    drop_sidecars: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.register and not self.deregister
