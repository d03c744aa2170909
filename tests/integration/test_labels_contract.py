"""The label contract users bring from gliderlabs and its maintained fork, against the real
Docker engine and the real Consul agent: per-protocol and port-range keys, templates in
SERVICE_TAGS, SERVICE_IP behind -useIpFromLabel, Weights in DNS SRV answers,
EnableTagOverride with another tool changing the tags, and dual-stack / IPv6 addresses.

As in test_agent.py, each test runs its own agent under a node of its own and asserts only
about its own containers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets

import docker
import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from registrator.model import META_HASH
from tests.helpers import (
    HTTPD_COMMAND,
    HTTPD_INDEX_MARKER,
    ConsulAgent,
    ContainerFactory,
    NetworkFactory,
    async_wait_until,
    dig,
    host_port,
    http_get_text,
)
from tests.integration.conftest import StartAgent
from tests.integration.test_agent import run, unique, warnings_about

# Consul's agent copies tags another tool wrote into the catalog on its next anti-entropy run:
# about a minute on a one-node cluster (measured 60-65 s on Consul 1.14), and nothing an API
# call without ACLs can trigger sooner.
ANTI_ENTROPY_TIMEOUT = 150.0


@pytest.fixture
def network(docker_network: NetworkFactory) -> Network:
    """A bridge network of the test's own: the tests do not depend on the default bridge."""
    return docker_network.create()


async def served_over_http(address: str, port: int) -> None:
    """The registration points at something that answers (the catalog never lies)."""
    host = f"[{address}]" if ":" in address else address
    body = await async_wait_until(
        lambda: asyncio.to_thread(http_get_text, f"http://{host}:{port}/index.html"),
        ignore=(OSError,),
        message=f"registered address {host}:{port} does not serve HTTP",
    )
    assert HTTPD_INDEX_MARKER in body


# -- per-protocol and port-range keys -----------------------------------------------------


async def test_per_protocol_names_and_range_ignore(
    start_agent: StartAgent,
    containers: ContainerFactory,
    network: Network,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="registrator")
    running = await start_agent("-ip", "127.0.0.1")
    name = unique("dns")
    container = await run(
        containers,
        "dns",
        labels={
            "SERVICE_53_tcp_NAME": f"{name}-tcp",
            "SERVICE_53_udp_NAME": f"{name}-udp",
            "SERVICE_53_udp_VERSION": "2",
            "SERVICE_6000-6010_IGNORE": "true",
            "SERVICE_7000-6000_IGNORE": "true",  # reversed: one warning, applies nowhere
            # `off` is false in labels as in options: no TCP check for 53/tcp.
            "SERVICE_CHECK_TCP": "true",
            "SERVICE_53_tcp_CHECK_TCP": "off",
            "SERVICE_53_udp_CHECK_TCP": "off",
        },
        ports={"53/tcp": None, "53/udp": None, "6001/tcp": None, "7000/tcp": None},
        network=network,
    )
    tcp_id = running.service_id(container.name, 53)
    udp_id = running.service_id(container.name, "53:udp")
    other_id = running.service_id(container.name, 7000)
    held = await running.wait_registered(tcp_id, udp_id, other_id)

    assert set(running.of_containers(container.id)) == {tcp_id, udp_id, other_id}
    assert (held[tcp_id]["Service"], held[tcp_id]["Port"]) == (
        f"{name}-tcp",
        host_port(container, "53/tcp"),
    )
    assert (held[udp_id]["Service"], held[udp_id]["Port"]) == (
        f"{name}-udp",
        host_port(container, "53/udp"),
    )
    assert held[udp_id]["Meta"]["version"] == "2"
    assert "version" not in held[tcp_id]["Meta"]
    (warning,) = warnings_about(caplog, container.name, "SERVICE_7000-6000_IGNORE")
    assert "7000-6000 is not a port range" in warning
    checks = {
        c["CheckID"]: c
        for c in consul.checks().values()
        if c["ServiceID"] in held and c["Type"] != "alias"  # not the node heartbeat's alias
    }
    # The reversed range applies to no port, so to none of the registrations: each says so
    # in Consul, as a warning (they serve as registered, only not as labelled).
    flawed = {f"service:{sid}:misconfigured" for sid in (tcp_id, udp_id, other_id)}
    assert set(checks) == {f"service:{other_id}:tcp", *flawed}
    for check_id in flawed:
        assert checks[check_id]["Status"] == "warning"
        assert checks[check_id]["Notes"].startswith("label SERVICE_7000-6000_IGNORE: 7000-6000 ")


# -- SERVICE_TAGS templates and SERVICE_IP ------------------------------------------------


async def test_service_tags_template_and_service_ip_opt_in(
    start_agent: StartAgent,
    containers: ContainerFactory,
    network: Network,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="registrator")
    labels = {
        "SERVICE_TAGS": "team-{{.Labels.team}},{{.Name}}",
        "team": "blue",
        "SERVICE_IP": "198.18.99.7",
    }
    # Without the operator's opt-in the container cannot choose its own address.
    refusing = await start_agent("-tags", "node-{{.Node}}")
    first = await run(containers, "tpl", labels=labels, ports={"80/tcp": None}, network=network)
    first_id = refusing.service_id(first.name, 80)
    entry = (await refusing.wait_registered(first_id))[first_id]
    assert entry["Tags"] == ["team-blue", first.name, f"node-{refusing.node}"]
    assert entry["Address"] != "198.18.99.7"
    (warning,) = warnings_about(caplog, first.name, "label SERVICE_IP")
    assert "-useIpFromLabel SERVICE_IP" in warning

    allowing = await start_agent("-useIpFromLabel", "SERVICE_IP")
    second = await run(containers, "ip", labels=labels, ports={"80/tcp": None}, network=network)
    second_id = allowing.service_id(second.name, 80)
    entry = (await allowing.wait_registered(second_id))[second_id]
    assert entry["Address"] == "198.18.99.7"
    assert entry["Tags"] == ["team-blue", second.name]


# -- weights --------------------------------------------------------------------------------


def srv_records(consul: ConsulAgent, name: str) -> list[tuple[int, int]]:
    """(weight, port) of each SRV record Consul's DNS answers for `name`."""
    fields = dig(consul, "SRV", f"{name}.service.consul")
    # +short SRV lines are "priority weight port target".
    return sorted((int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4))


async def test_weights_in_the_registration_and_in_dns_srv_answers(
    start_agent: StartAgent,
    containers: ContainerFactory,
    network: Network,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="registrator")
    running = await start_agent()
    name = unique("weighted")
    weights = {"SERVICE_NAME": name, "SERVICE_WEIGHT": "7", "SERVICE_WEIGHT_WARNING": "3"}
    passing = await run(
        containers, "passing", labels=weights, ports={"80/tcp": None}, network=network
    )
    # A TTL check that starts in warning: Consul's DNS then gives the Warning weight.
    warning = await run(
        containers,
        "warning",
        labels={**weights, "SERVICE_CHECK_TTL": "10m", "SERVICE_CHECK_INITIAL_STATUS": "warning"},
        ports={"80/tcp": None},
        network=network,
    )
    plain = await run(
        containers, "plain", labels={"SERVICE_NAME": name}, ports={"80/tcp": None}, network=network
    )
    bad = await run(
        containers,
        "bad",
        labels={"SERVICE_NAME": name, "SERVICE_WEIGHT": "0"},
        ports={"80/tcp": None},
        network=network,
    )
    ids = [running.service_id(c.name, 80) for c in (passing, warning, plain, bad)]
    held = await running.wait_registered(*ids)

    assert [held[i]["Weights"] for i in ids] == [
        {"Passing": 7, "Warning": 3},
        {"Passing": 7, "Warning": 3},
        {"Passing": 1, "Warning": 1},
        {"Passing": 1, "Warning": 1},
    ]
    (message,) = warnings_about(caplog, bad.name, "label SERVICE_WEIGHT")
    assert "'0' is not a whole number from 1 to 65535" in message
    assert srv_records(consul, name) == sorted(
        [
            (7, host_port(passing, "80/tcp")),
            (3, host_port(warning, "80/tcp")),
            (1, host_port(plain, "80/tcp")),
            (1, host_port(bad, "80/tcp")),
        ]
    )


# -- EnableTagOverride ------------------------------------------------------------------------


async def test_tag_override_keeps_tags_another_tool_wrote_without_rewrites(
    start_agent: StartAgent,
    containers: ContainerFactory,
    network: Network,
    consul: ConsulAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="registrator")
    running = await start_agent("-resync", "1")
    name = unique("override")
    labels = {"SERVICE_NAME": name, "SERVICE_TAGS": "ours"}
    overridable = await run(
        containers,
        "override",
        labels={**labels, "SERVICE_ENABLE_TAG_OVERRIDE": "true"},
        ports={"80/tcp": None},
        network=network,
    )
    fixed = await run(containers, "fixed", labels=labels, ports={"80/tcp": None}, network=network)
    override_id = running.service_id(overridable.name, 80)
    fixed_id = running.service_id(fixed.name, 80)
    held = await running.wait_registered(override_id, fixed_id)
    assert (held[override_id]["EnableTagOverride"], held[fixed_id]["EnableTagOverride"]) == (
        True,
        False,
    )
    own_hash = held[override_id]["Meta"][META_HASH]

    # Another tool rewrites the tags of both in the catalog, as tools that manage tags do.
    node = consul.get("/v1/agent/self")["Config"]["NodeName"]
    for service_id, entry in held.items():
        consul.put(
            "/v1/catalog/register",
            {
                "Node": node,
                "SkipNodeUpdate": True,
                "Service": {
                    "ID": service_id,
                    "Service": entry["Service"],
                    "Address": entry["Address"],
                    "Port": entry["Port"],
                    "Tags": ["theirs"],
                    "EnableTagOverride": entry["EnableTagOverride"],
                },
            },
        )

    def agent_tags() -> dict[str, list[str]] | None:
        tags = {sid: consul.get(f"/v1/agent/service/{sid}")["Tags"] for sid in held}
        # Settled once the agent also pushed its Meta back over the other tool's entry.
        synced = all(
            e["ServiceMeta"].get(META_HASH) == held[e["ServiceID"]]["Meta"][META_HASH]
            for e in consul.catalog_service(name)
        )
        return tags if tags[override_id] == ["theirs"] and synced else None

    # Consul's anti-entropy: the agent adopts the catalog's tags for the overridable service
    # and puts ours back for the other one.
    tags = await async_wait_until(
        lambda: asyncio.to_thread(agent_tags),
        timeout=ANTI_ENTROPY_TIMEOUT,
        interval=1.0,
        message="the Consul agent never adopted the catalog's tags",
    )
    assert tags == {override_id: ["theirs"], fixed_id: ["ours"]}
    entry = consul.get(f"/v1/agent/service/{override_id}")
    assert entry["Meta"][META_HASH] == own_hash  # still ours, and unchanged

    # Our diff does not fight the other tool: resyncs see our own hash and write nothing for
    # it (the agent's write counter would also count other sessions' containers, so this
    # reads the log and the catalog entry's ModifyIndex instead).
    def catalog() -> dict[str, tuple[list[str], int]]:
        return {
            e["ServiceID"]: (e["ServiceTags"], e["ModifyIndex"])
            for e in consul.catalog_service(name)
        }

    before = catalog()
    caplog.clear()
    await running.full_reconcile()
    await running.full_reconcile()
    assert not [r for r in caplog.records if override_id in r.getMessage()]
    assert catalog()[override_id] == before[override_id]
    assert {sid: tags for sid, (tags, _) in catalog().items()} == {
        override_id: ["theirs"],
        fixed_id: ["ours"],
    }

    # Nor does it lose its own: the service is still ours to remove.
    await asyncio.to_thread(overridable.stop, timeout=5)
    await running.wait_deregistered(override_id)


# -- IPv6 and dual stack ------------------------------------------------------------------


def dual_stack_network(networks: NetworkFactory) -> tuple[Network, str]:
    """A bridge network with an IPv4 /24 from the test pool and a random ULA /64."""
    subnet = ipaddress.ip_network(f"fd00:5e:{secrets.token_hex(2)}:{secrets.token_hex(2)}::/64")
    network = networks.create("ds", ipv6_subnet=str(subnet))
    return network, str(subnet[1])  # Docker's default gateway: the bridge's own address


def gateway_v4(network: Network) -> str:
    (pool,) = [p for p in network.attrs["IPAM"]["Config"] if "." in p["Subnet"]]
    return str(pool["Gateway"])


def addresses(container: Container, network: Network) -> tuple[str, str]:
    container.reload()
    attachment = container.attrs["NetworkSettings"]["Networks"][network.name]
    return attachment["IPAddress"], attachment["GlobalIPv6Address"]


async def test_internal_on_a_dual_stack_network_tags_both_addresses(
    start_agent: StartAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    consul: ConsulAgent,
) -> None:
    network, _ = await asyncio.to_thread(dual_stack_network, docker_network)
    running = await start_agent("-internal")
    web = await run(
        containers, "ds", command=HTTPD_COMMAND, network=network, ports={"80/tcp": None}
    )
    ipv4, ipv6 = addresses(web, network)
    assert ipv4 and ipv6
    service_id = running.service_id(web.name, 80)
    entry = (await running.wait_registered(service_id))[service_id]

    assert (entry["Address"], entry["Port"]) == (ipv4, 80)
    tagged = entry["TaggedAddresses"]
    assert {name: tagged[name] for name in ("lan_ipv4", "lan_ipv6")} == {
        "lan_ipv4": {"Address": ipv4, "Port": 80},
        "lan_ipv6": {"Address": ipv6, "Port": 80},
    }
    # Consul adds its own default for the WAN from Address; we send only the LAN pair.
    assert set(tagged) <= {"lan_ipv4", "lan_ipv6", "wan_ipv4"}
    # Both addresses serve what was registered.
    await served_over_http(ipv4, 80)
    await served_over_http(ipv6, 80)


async def test_port_published_on_ipv6_only_registers_an_ipv6_host_address(
    start_agent: StartAgent,
    containers: ContainerFactory,
    docker_network: NetworkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="registrator")
    network, gateway_v6 = await asyncio.to_thread(dual_stack_network, docker_network)
    # The bridge's own IPv6 address is an address of this host.
    with_v6 = await start_agent("-ip", gateway_v6)
    without_v6 = await start_agent()
    web = await run(
        containers, "v6pub", command=HTTPD_COMMAND, network=network, ports={"80/tcp": ("::", None)}
    )
    assert [b["HostIp"] for b in web.attrs["NetworkSettings"]["Ports"]["80/tcp"]] == ["::"]
    service_id = with_v6.service_id(web.name, 80)
    entry = (await with_v6.wait_registered(service_id))[service_id]
    assert (entry["Address"], entry["Port"]) == (gateway_v6, host_port(web, "80/tcp"))
    await served_over_http(gateway_v6, entry["Port"])

    # Without an IPv6 address of the host there is nothing true to register: a warning.
    await without_v6.full_reconcile()
    assert without_v6.of_containers(web.id) == {}
    (warning,) = warnings_about(caplog, web.name, "port 80/tcp")
    assert "published on IPv6 (::) only" in warning
    assert "-ip" in warning


def test_the_engine_reports_global_ipv6_addresses(
    docker_client: docker.DockerClient,
    docker_network: NetworkFactory,
    containers: ContainerFactory,
) -> None:
    """What containers.py reads: `GlobalIPv6Address` per network, next to `IPAddress`."""
    network, gateway_v6 = dual_stack_network(docker_network)
    container = containers.run("probe", network=network)
    ipv4, ipv6 = addresses(container, network)
    assert ipaddress.ip_address(ipv4) in ipaddress.ip_network(f"{gateway_v4(network)}/24", False)
    assert ipaddress.ip_address(ipv6) in ipaddress.ip_network(f"{gateway_v6}/64", strict=False)
    assert docker_client.networks.get(network.id).attrs["EnableIPv6"] is True
