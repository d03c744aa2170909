"""Pure: which address stands for "this host" when nothing more specific is configured.

The chain (first usable wins), for ports published on all interfaces and host-network
containers:

1. `-ip`, as given (the only step that may be a loopback address: it was asked for);
2. the Swarm node address, when the engine is in a swarm;
3. the address the local Consul agent advertises (`Member.Addr` of `/v1/agent/self`);
4. the host's primary address: the source address of the default route, taken only when the
   agent runs in the host's network namespace (inside a bridge-networked container that
   address is the container's, which nothing outside can reach).

A loopback address is skipped at steps 2 to 4: registered, it sends every consumer on another
host, or in another container, to itself. If nothing is left, registration of what needs the
address waits and the agent says once that `-ip` is needed.

The host facts come from two kernel tables (`/proc/net/route`, `/proc/net/fib_trie`) as text,
parsed here; reading them sends no traffic.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Flags of /proc/net/route (include/uapi/linux/route.h).
_RTF_UP = 0x1
_RTF_GATEWAY = 0x2


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 and ::1 (also ::ffff:127.x); anything unparsable is not loopback."""
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped.is_loopback
    return parsed.is_loopback


@dataclass(frozen=True)
class Route:
    """One IPv4 line of /proc/net/route."""

    interface: str
    network: ipaddress.IPv4Network
    gateway: str  # "" for a directly connected network
    metric: int


def _hex_address(text: str) -> ipaddress.IPv4Address:
    # The kernel prints the address in host byte order: little-endian on every platform
    # Docker runs on, so 010200C0 is 192.0.2.1.
    return ipaddress.IPv4Address(bytes(reversed(bytes.fromhex(text))))


def parse_routes(route_table: str) -> list[Route]:
    """The routes that are up, from the text of /proc/net/route; malformed lines are skipped."""
    routes = []
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        interface, destination, gateway, flags, metric, mask = (
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            fields[6],
            fields[7],
        )
        try:
            flag_bits = int(flags, 16)
            network = ipaddress.IPv4Network(
                f"{_hex_address(destination)}/{_hex_address(mask)}", strict=False
            )
            via = str(_hex_address(gateway)) if flag_bits & _RTF_GATEWAY else ""
            hops = int(metric)
        except ValueError:
            continue
        if flag_bits & _RTF_UP:
            routes.append(Route(interface, network, via, hops))
    return routes


def local_addresses(fib_trie: str) -> frozenset[str]:
    """The IPv4 addresses assigned in this network namespace, from /proc/net/fib_trie.

    Each address is printed as `|-- ADDRESS` followed by a `/32 host LOCAL` line.
    """
    found: set[str] = set()
    last = ""
    for line in fib_trie.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif stripped.startswith("/32") and stripped.endswith("LOCAL") and last:
            found.add(last)
    return frozenset(found)


def primary_address(routes: Iterable[Route], local: Iterable[str]) -> str:
    """The source address of the default route: the local address on the default route's
    interface, in the connected network that holds the gateway. "" if there is none.

    With several such addresses (secondary ones), the lowest: the kernel's own pick depends
    on the order they were added, which no table shows; any of them reaches this host.
    """
    routes = list(routes)
    defaults = [r for r in routes if r.network.prefixlen == 0]
    if not defaults:
        return ""
    default = min(defaults, key=lambda r: r.metric)
    addresses = sorted(ipaddress.IPv4Address(a) for a in local if not is_loopback(a))
    connected = [
        r.network for r in routes if r.interface == default.interface and r.network.prefixlen
    ]
    gateway = ipaddress.IPv4Address(default.gateway) if default.gateway else None
    for network in connected:
        if gateway is None or gateway in network:
            for address in addresses:
                if address in network:
                    return str(address)
    return ""


def in_host_namespace(local: Iterable[str], docker_gateways: Iterable[str]) -> bool:
    """Whether this network namespace is the Docker host's: it holds the gateway address of a
    Docker bridge network (docker0's 172.17.0.1, say). A container's namespace never does."""
    gateways = {g for g in docker_gateways if g}
    return bool(gateways & set(local))


def bridge_gateways(networks: Iterable[Mapping[str, Any]]) -> list[str]:
    """The gateway addresses of the engine's local bridge networks, from `GET /networks`."""
    gateways: list[str] = []
    for network in networks:
        ipam = network.get("IPAM")
        configs = ipam.get("Config") if isinstance(ipam, Mapping) else None
        if network.get("Driver") != "bridge" or not isinstance(configs, list):
            continue
        gateways.extend(
            str(c["Gateway"]) for c in configs if isinstance(c, Mapping) and c.get("Gateway")
        )
    return gateways


@dataclass(frozen=True)
class AddressChoice:
    """The default address, where it came from, and what was passed over and why."""

    address: str = ""
    source: str = ""  # "-ip", "Swarm node address", "Consul agent address", "host address"
    skipped: tuple[str, ...] = ()


def choose_default_address(
    ip_option: str, swarm_address: str, consul_address: str, host_address: str
) -> AddressChoice:
    """The chain described in the module docstring; "" for an input means "not known"."""
    if ip_option:
        return AddressChoice(ip_option, "-ip")
    skipped = []
    for source, address in (
        ("Swarm node address", swarm_address),
        ("Consul agent address", consul_address),
        ("host address", host_address),
    ):
        if not address:
            continue
        if is_loopback(address):
            skipped.append(f"{source} {address} is a loopback address")
            continue
        return AddressChoice(address, source, tuple(skipped))
    return AddressChoice("", "", tuple(skipped))


def explained_address(choice: AddressChoice, consul_answered: bool, host_address: str) -> str:
    """What `registrator explain` shows as the default address: the chosen one, or a marker
    saying what it waits for. Without Consul's answer, a host address is not yet the choice:
    the Consul agent's address comes before it."""
    if choice.address and (consul_answered or choice.source in {"-ip", "Swarm node address"}):
        return choice.address
    if not consul_answered:
        then = host_address or "nothing: set -ip"
        return (
            "unknown until Consul answers (then: its advertised address unless loopback, "
            f"else {then})"
        )
    return "unknown until -ip (REGISTRATOR_IP) is set"
