"""The default-address chain (registrator.addresses): never a loopback address unless asked."""

from __future__ import annotations

import pytest

from registrator.addresses import (
    AddressChoice,
    bridge_gateways,
    choose_default_address,
    explained_address,
    in_host_namespace,
    is_loopback,
    local_addresses,
    parse_routes,
    primary_address,
)
from registrator.agent import address_warnings

# /proc/net/route and /proc/net/fib_trie as the kernel prints them, trimmed.
ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
)
HOST_ROUTES = ROUTE_HEADER + (
    "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    "docker0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)
HOST_FIB = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 192.0.0.0/5 2 0 2
        +-- 192.0.2.0/24 2 0 2
           +-- 192.0.2.0/30 2 0 2
              |-- 192.0.2.0
                 /24 link UNICAST
              |-- 192.0.2.2
                 /32 host LOCAL
           |-- 192.0.2.255
              /32 link BROADCAST
        +-- 198.18.0.0/24 2 0 2
              |-- 198.18.0.1
                 /32 host LOCAL
"""
# Inside a container on the default bridge: its own address, the bridge as gateway.
CONTAINER_ROUTES = ROUTE_HEADER + (
    "eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)
CONTAINER_FIB = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 198.18.0.0/24 2 0 2
              |-- 198.18.0.5
                 /32 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
"""
# Two default routes (the lower metric wins), a secondary address, a route that is down.
MULTI_ROUTES = ROUTE_HEADER + (
    "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
    "eth1\t00000000\t01000A0A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    "eth1\t00000A0A\t00000000\t0001\t0\t0\t100\t0000FFFF\t0\t0\t0\n"
    "wlan0\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0\n"
    "eth9\t00000000\t01000A0A\t0002\t0\t0\t1\t00000000\t0\t0\t0\n"
)
MULTI_LOCAL = frozenset({"127.0.0.1", "10.10.0.7", "10.10.0.5", "192.168.1.20"})


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.0.2.2", False),
        ("::", False),
        ("fe80::1", False),
        ("", False),
        ("not-an-address", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_host_tables_give_the_default_route_source_address() -> None:
    routes = parse_routes(HOST_ROUTES)
    assert [(r.interface, str(r.network), r.gateway) for r in routes] == [
        ("eth0", "0.0.0.0/0", "192.0.2.1"),
        ("eth0", "192.0.2.0/24", ""),
        ("docker0", "198.18.0.0/24", ""),
    ]
    local = local_addresses(HOST_FIB)
    assert local == {"127.0.0.1", "192.0.2.2", "198.18.0.1"}
    assert primary_address(routes, local) == "192.0.2.2"


@pytest.mark.parametrize(
    ("routes", "local", "expected"),
    [
        pytest.param(MULTI_ROUTES, MULTI_LOCAL, "10.10.0.5", id="lowest metric, lowest address"),
        pytest.param(ROUTE_HEADER, MULTI_LOCAL, "", id="no route at all"),
        pytest.param(
            ROUTE_HEADER + "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
            {"192.0.2.2"},
            "",
            id="no default route",
        ),
        pytest.param(HOST_ROUTES, {"127.0.0.1"}, "", id="no address on the interface"),
        pytest.param(
            ROUTE_HEADER + "garbage line\n" + HOST_ROUTES.split("\n", 1)[1] + "x\tzz\n",
            {"192.0.2.2"},
            "192.0.2.2",
            id="malformed lines skipped",
        ),
        pytest.param(
            ROUTE_HEADER + "ppp0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"
            "ppp0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n",
            {"10.1.2.3"},
            "10.1.2.3",
            id="default route without a gateway",
        ),
    ],
)
def test_primary_address(routes: str, local: frozenset[str], expected: str) -> None:
    assert primary_address(parse_routes(routes), local) == expected


@pytest.mark.parametrize(
    ("fib", "gateways", "host"),
    [
        pytest.param(HOST_FIB, ["198.18.0.1"], True, id="host: holds docker0's gateway"),
        pytest.param(CONTAINER_FIB, ["198.18.0.1"], False, id="bridge container"),
        pytest.param(HOST_FIB, [], False, id="no bridge network known"),
        pytest.param(HOST_FIB, ["", "10.99.0.1"], False, id="gateways elsewhere"),
    ],
)
def test_in_host_namespace(fib: str, gateways: list[str], host: bool) -> None:
    assert in_host_namespace(local_addresses(fib), gateways) is host


def test_bridge_gateways_from_the_network_list() -> None:
    networks = [
        {"Driver": "bridge", "IPAM": {"Config": [{"Gateway": "198.18.0.1"}]}},
        {"Driver": "bridge", "IPAM": {"Config": [{"Subnet": "fd00::/64"}]}},
        {"Driver": "overlay", "IPAM": {"Config": [{"Gateway": "10.0.1.1"}]}},
        {"Driver": "host", "IPAM": {"Config": []}},
        {"Driver": "bridge", "IPAM": None},
    ]  # fmt: skip
    assert bridge_gateways(networks) == ["198.18.0.1"]


@pytest.mark.parametrize(
    ("ip", "swarm", "consul", "host", "address", "source"),
    [
        pytest.param(
            "", "", "127.0.0.1", "192.0.2.2", "192.0.2.2", "host address",
            id="issue 12 example: consul -dev -bind 127.0.0.1, agent on the host",
        ),
        pytest.param(
            "", "", "127.0.0.1", "", "", "",
            id="consul on loopback, agent in a bridge container: nothing (wait for -ip)",
        ),
        pytest.param(
            "", "", "::1", "192.0.2.2", "192.0.2.2", "host address", id="IPv6 loopback agent"
        ),
        pytest.param(
            "", "", "10.0.0.4", "192.0.2.2", "10.0.0.4", "Consul agent address",
            id="consul on the LAN beats the host's own view",
        ),
        pytest.param(
            "", "10.0.0.8", "10.0.0.4", "192.0.2.2", "10.0.0.8", "Swarm node address",
            id="swarm node address first",
        ),
        pytest.param(
            "", "127.0.0.1", "127.0.0.1", "192.0.2.2", "192.0.2.2", "host address",
            id="swarm advertising loopback is skipped too",
        ),
        pytest.param(
            "127.0.0.1", "10.0.0.8", "10.0.0.4", "192.0.2.2", "127.0.0.1", "-ip",
            id="-ip: asked for, even loopback",
        ),
        pytest.param("", "", "", "", "", "", id="nothing known"),
    ],
)  # fmt: skip
def test_default_address_chain(
    ip: str, swarm: str, consul: str, host: str, address: str, source: str
) -> None:
    choice = choose_default_address(ip, swarm, consul, host)
    assert (choice.address, choice.source) == (address, source)
    assert not is_loopback(choice.address) or source == "-ip"


def test_skipped_loopback_addresses_are_named() -> None:
    choice = choose_default_address("", "127.0.0.1", "127.0.0.1", "")
    assert choice.skipped == (
        "Swarm node address 127.0.0.1 is a loopback address",
        "Consul agent address 127.0.0.1 is a loopback address",
    )
    (warning,) = address_warnings(choice, internal=False)
    assert "-ip (REGISTRATOR_IP)" in warning
    assert "Consul agent address 127.0.0.1 is a loopback address" in warning
    assert address_warnings(choose_default_address("", "", "", "192.0.2.2"), False) == []


@pytest.mark.parametrize(
    ("choice", "consul_answered", "host", "shown"),
    [
        pytest.param(
            AddressChoice("192.0.2.2", "host address"), False, "192.0.2.2",
            "unknown until Consul answers (then: its advertised address unless loopback, "
            "else 192.0.2.2)",
            id="no Consul: the host address is not the choice yet",
        ),
        pytest.param(
            AddressChoice(), False, "",
            "unknown until Consul answers (then: its advertised address unless loopback, "
            "else nothing: set -ip)",
            id="no Consul, no host address",
        ),
        pytest.param(
            AddressChoice("10.0.0.8", "Swarm node address"), False, "", "10.0.0.8",
            id="no Consul, but the Swarm address comes first",
        ),
        pytest.param(AddressChoice("1.2.3.4", "-ip"), False, "", "1.2.3.4", id="-ip"),
        pytest.param(
            AddressChoice("192.0.2.2", "host address"), True, "192.0.2.2", "192.0.2.2",
            id="Consul answered: the chain's answer",
        ),
        pytest.param(
            AddressChoice(), True, "", "unknown until -ip (REGISTRATOR_IP) is set",
            id="Consul answered with loopback, no host address",
        ),
    ],
)  # fmt: skip
def test_explained_address(
    choice: AddressChoice, consul_answered: bool, host: str, shown: str
) -> None:
    assert explained_address(choice, consul_answered, host) == shown
