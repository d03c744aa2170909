"""Pure: which address and port a container's service is reachable at.

Read from what `docker inspect` says (NetworkSettings.Ports and .Networks, HostConfig.NetworkMode,
State.StartedAt of a `--network container:X` owner) and the Swarm service's published ports,
under the options that move the choice: `-internal` (the container's own network address),
`-ip` (the host address to register), `-network` / SERVICE_NETWORK (which network),
`-useIpFromLabel`. SERVICE_IP itself is read per port by labels.address_override.
Published ports: https://docs.docker.com/engine/api/v1.43/#tag/Container/operation/ContainerInspect

Every choice the planner cannot honour as asked leaves as a Problem in the caller's list; no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from registrator.addresses import is_loopback
from registrator.labels import IP_OPT_IN, Metadata, service_metadata
from registrator.model import Container, ContainerPort, NetworkAttachment, PortBinding, Problem
from registrator.settings import Settings
from registrator.swarm import is_vip_key
from registrator.vocabulary import port_number

INGRESS_NETWORK = "ingress"


class EndpointContext(Protocol):
    """What the choice reads of the planner's PlanContext (a Protocol, so that this module
    need not import the planner)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def default_address(self) -> str:
        """The node's address when nothing more specific is known ("" if none)."""
        ...


@dataclass(frozen=True)
class Endpoint:
    """One port to register: which container port it is, and where clients reach it."""

    container_port: int
    protocol: str
    address: str
    port: int
    tagged_addresses: Mapping[str, str] = field(default_factory=dict)


def container_endpoints(
    container: Container, ctx: EndpointContext, base: Metadata, problems: list[Problem]
) -> list[Endpoint]:
    """The ports to register and where each is reached; SERVICE_PORT when no port is usable.

    `base` is the container-wide SERVICE_* metadata.
    """
    return _endpoints(container, ctx, base, problems) or (
        _synthetic_endpoint(container, ctx, base, problems)
    )


def choose_network(
    container: Container,
    preferred: str,
    problems: list[Problem],
    origin: str = "REGISTRATOR_NETWORK",
) -> NetworkAttachment | None:
    """The network whose address to register; `origin` names where `preferred` came from."""
    attached = [n for n in container.networks if n.address]
    if preferred:
        for network in attached:
            if network.name == preferred:
                return network
        problems.append(
            Problem(
                container.name,
                origin,
                f"container is not on network {preferred!r} "
                f"(it is on: {', '.join(n.name for n in attached) or 'none'}); choosing another",
            )
        )
    candidates = [n for n in attached if n.name != INGRESS_NETWORK]
    if not candidates:
        return None
    if len(candidates) > 1:
        chosen = sorted(candidates, key=lambda n: n.name)[0]
        problems.append(
            Problem(
                container.name,
                "SERVICE_NETWORK",
                f"container is on several networks "
                f"({', '.join(sorted(n.name for n in candidates))}); "
                f"registering its address on {chosen.name!r}, the first by name; set "
                "SERVICE_NETWORK or REGISTRATOR_NETWORK to choose",
            )
        )
        return chosen
    return candidates[0]


def _ports(container: Container) -> tuple[ContainerPort, ...]:
    """The container's ports, plus the targets its Swarm service publishes.

    A Swarm service may publish a port its image never EXPOSEs; the publication says the
    port is served just as clearly.
    """
    if container.swarm_service is None:
        return container.ports
    ports = {(p.port, p.protocol): p for p in container.ports}
    for published in container.swarm_service.ports:
        ports.setdefault(
            (published.target, published.protocol),
            ContainerPort(published.target, published.protocol),
        )
    return tuple(ports[key] for key in sorted(ports))


def _ingress_port(container: Container, port: ContainerPort) -> int:
    """The routing-mesh port published for this container port, if its service has one."""
    if container.swarm_service is None:
        return 0
    for published in container.swarm_service.ports:
        if (
            published.mode == "ingress"
            and published.published
            and (published.target, published.protocol) == (port.port, port.protocol)
        ):
            return published.published
    return 0


def _endpoints(
    container: Container, ctx: EndpointContext, base: Metadata, problems: list[Problem]
) -> list[Endpoint]:
    host_address = ctx.settings.ip or ctx.default_address
    ports = _ports(container)
    if container.network_mode == "host":
        return [Endpoint(p.port, p.protocol, host_address, p.port) for p in ports]
    if ctx.settings.internal or is_vip_key(container.id):
        if not ports:
            # Nothing to register here; `_synthetic_endpoint` chooses (and warns) itself.
            return []
        preferred, origin = _preferred_network(base, ctx)
        network = choose_network(container, preferred, problems, origin)
        if network is None:
            if is_vip_key(container.id):
                key, reason = "-swarm-vip", "service has no virtual IP on a usable network"
            else:
                key, reason = "-internal", "container has no address on any network"
            problems.append(Problem(container.name, key, f"{reason}; not registered"))
            return []
        tagged = network.tagged_addresses()
        return [Endpoint(p.port, p.protocol, network.address, p.port, tagged) for p in ports]
    endpoints = []
    for port in ports:
        binding = _pick_binding(port)
        if binding is not None:
            if is_loopback(binding.host_ip):
                # `-p 127.0.0.1:8080:80` was asked for: the port is served there and nowhere
                # else, so -ip or the node address would name a port nothing listens on.
                problems.append(
                    Problem(
                        container.name,
                        f"published port {binding.host_ip}:{binding.host_port}->{port.port}/"
                        f"{port.protocol}",
                        "published on a loopback address only: registered at it, so it is "
                        "reachable from this host only (publish on 0.0.0.0 or a LAN address to "
                        "serve other hosts)",
                    )
                )
                address = binding.host_ip
            else:
                address = _published_address(binding, ctx)
                if not address and binding.host_ip == "::":
                    problems.append(
                        Problem(
                            container.name,
                            f"port {port.port}/{port.protocol}",
                            "published on IPv6 (::) only and no IPv6 address of this host is "
                            "known (set -ip to one); not registered",
                        )
                    )
                    continue
            endpoints.append(Endpoint(port.port, port.protocol, address, binding.host_port))
            continue
        # Published through the routing mesh: every node answers on the published port, so
        # this node's address serves this task as well as any.
        ingress = _ingress_port(container, port)
        if ingress:
            endpoints.append(Endpoint(port.port, port.protocol, host_address, ingress))
    return endpoints


def _preferred_network(base: Metadata, ctx: EndpointContext) -> tuple[str, str]:
    """The network asked for, and the label/env var or option that asked for it."""
    if base.get("NETWORK"):
        return base.get("NETWORK"), base.origin("NETWORK")
    return ctx.settings.network, "REGISTRATOR_NETWORK"


def _pick_binding(port: ContainerPort) -> PortBinding | None:
    """Docker lists a 0.0.0.0 and a :: binding for one `-p`; one registration serves both.

    A specific IPv4 binding is the most deliberate choice, then any IPv4, then IPv6, and a
    loopback one only when there is nothing else.
    """

    def rank(binding: PortBinding) -> int:
        if is_loopback(binding.host_ip):
            return 3  # serves this host only: the last choice
        if ":" in binding.host_ip:
            return 2
        return 0 if _is_specific(binding.host_ip) else 1

    return min(port.bindings, key=rank, default=None)


def _is_specific(host_ip: str) -> bool:
    return host_ip not in {"", "0.0.0.0", "::"}


def _published_address(binding: PortBinding, ctx: EndpointContext) -> str:
    """Where clients reach a published port; "" when only an IPv6 one would do and none is known.

    A port bound on `::` alone is not reachable over IPv4, so it is registered at an IPv6
    address of this host (-ip, or the default address when that is IPv6) or not at all.
    """
    if binding.host_ip == "::":
        return next((a for a in (ctx.settings.ip, ctx.default_address) if ":" in a), "")
    if ctx.settings.ip:
        return ctx.settings.ip
    return binding.host_ip if _is_specific(binding.host_ip) else ctx.default_address


def _synthetic_endpoint(
    container: Container, ctx: EndpointContext, base: Metadata, problems: list[Problem]
) -> list[Endpoint]:
    """SERVICE_PORT on a container with no usable ports: register that port."""
    raw = base.get("PORT").strip()
    if not raw:
        return []
    port = port_number(raw)
    if port is None:
        problems.append(
            Problem(
                container.name,
                base.origin("PORT"),
                f"{raw!r} is not a port number (1-65535); ignored",
            )
        )
        return []
    if container.network_mode == "host":
        address = ctx.settings.ip or ctx.default_address
    else:
        preferred, origin = _preferred_network(base, ctx)
        network = choose_network(container, preferred, problems, origin)
        if network is None:
            problems.append(
                Problem(
                    container.name,
                    base.origin("PORT"),
                    "container has no network address; not registered",
                )
            )
            return []
        return [Endpoint(port, "tcp", network.address, port, network.tagged_addresses())]
    return [Endpoint(port, "tcp", address, port)]


def address_from_label(container: Container, ctx: EndpointContext, problems: list[Problem]) -> str:
    """-useIpFromLabel LABEL: the address in that container label, "" when none is usable."""
    if not ctx.settings.use_ip_from_label or ctx.settings.use_ip_from_label == IP_OPT_IN:
        # SERVICE_IP is read per port with the other SERVICE_* keys (labels.address_override).
        return ""
    raw = container.labels.get(ctx.settings.use_ip_from_label, "").strip()
    if not raw:
        return ""
    # gliderlabs accepted CIDR notation here (e.g. from IPAM labels); keep the address part.
    candidate = raw.split("/", 1)[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        problems.append(
            Problem(
                container.name,
                f"label {ctx.settings.use_ip_from_label}",
                f"{raw!r} is not an IP address; ignored",
            )
        )
        return ""


def _time_key(rfc3339: str) -> tuple[str, str]:
    """Docker's UTC times ("2026-11-30T03:59:46.12345Z") in an order that compares: Go drops
    trailing zeros of the fraction, so the fraction is padded."""
    head, _, fraction = rfc3339.rstrip("Z").partition(".")
    return head, fraction.ljust(9, "0")


def on_owner_stack(container: Container) -> tuple[Container | None, Problem | None]:
    """A container started with `--network container:X` has no network of its own: it is
    reached where X is. Returns the container as planned (X's networks, network mode and, for
    its own ports, X's bindings: only X can publish them), or None and why.

    Not registered while X does not run (gone, stopped), nor when X started after it: Docker
    gives a restarted X a new stack and leaves this container in the old one, which has only
    loopback, until it is restarted itself (measured on dockerd 20.10).
    """
    owner = container.network_owner
    ref = container.network_owner_ref
    if owner is None or not owner.running:
        reason = f"shares the network stack of container {ref[:12]}, which does not run"
        return None, Problem(
            container.name, f"--network container:{ref[:12]}", f"{reason}; not registered"
        )
    if owner.started_at and _time_key(owner.started_at) > _time_key(container.started_at):
        return None, Problem(
            container.name,
            f"--network container:{ref[:12]}",
            f"shares the network stack of container {owner.name}, which restarted after it; "
            "Docker left it in the old stack, which has no network; not registered until it "
            "is restarted too",
        )
    published = {(p.port, p.protocol): p.bindings for p in _ports(owner)}
    ports = {(p.port, p.protocol): p for p in container.ports}
    wanted = service_metadata(container, None).get("PORT").strip()
    if wanted.isdigit() and (int(wanted), "tcp") in published:
        ports.setdefault((int(wanted), "tcp"), ContainerPort(int(wanted), "tcp"))
    return replace(
        container,
        networks=owner.networks,
        network_mode=owner.network_mode,
        ports=tuple(
            replace(port, bindings=published.get(key, ())) for key, port in sorted(ports.items())
        ),
    ), None
