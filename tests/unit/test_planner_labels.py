"""The planner over the label contract users bring from gliderlabs and its maintained fork:
per-protocol and port-range keys, SERVICE_TAGS templates, SERVICE_IP, weights, tag override,
and the addresses of dual-stack and IPv6-only containers."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from registrator.labels import RESERVED_KEYS
from registrator.model import (
    CheckKind,
    Container,
    ContainerPort,
    NetworkAttachment,
    PortBinding,
)
from registrator.planner import ContainerPlan, desired_services
from tests.unit.builders import (
    NODE,
    fixture_container,
    make_container,
    make_context,
    published,
    with_labels,
)

DEFAULT_ADDRESS = "10.0.0.9"  # make_context's default_address
DUAL_V4, DUAL_V6 = "198.18.203.2", "fd00:5e:1ab::2"  # the dual-stack capture's addresses
README = Path(__file__).resolve().parents[2] / "README.md"


def plan(container: Container, **context: Any) -> ContainerPlan:
    return desired_services(container, make_context(**context))


def dns_container(labels: dict[str, str]) -> Container:
    """Port 53 published for TCP and for UDP, as a DNS server does."""
    return make_container(
        labels=labels, ports=(published(53, 5353), published(53, 5353, protocol="udp"))
    )


# --- per-protocol and range keys ------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param(
            {},
            [("node1:web-1:53", "web-53"), ("node1:web-1:53:udp", "web-53")],
            id="no keys: one registration per protocol",
        ),
        pytest.param(
            {
                "SERVICE_53_udp_NAME": "dns-udp",
                "SERVICE_53_tcp_NAME": "dns-tcp",
                "SERVICE_53_tcp_ID": "dns-t",
                "SERVICE_53_udp_ID": "dns-u",
            },
            [("dns-t", "dns-tcp"), ("dns-u", "dns-udp")],
            id="gliderlabs#244: each protocol its own name and id",
        ),
        pytest.param(
            {"SERVICE_53_NAME": "dns", "SERVICE_53_udp_NAME": "dns-udp"},
            [("node1:web-1:53", "dns"), ("node1:web-1:53:udp", "dns-udp")],
            id="port+proto beats port",
        ),
        pytest.param(
            {"SERVICE_53_udp_IGNORE": "true"},
            [("node1:web-1:53", "web-53")],
            id="ignore one protocol",
        ),
    ],
)
def test_per_protocol_keys(labels: dict[str, str], expected: list[tuple[str, str]]) -> None:
    result = plan(dns_container(labels))
    assert [(s.id, s.name) for s in result.services] == expected
    assert result.problems == ()


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param(
            {"SERVICE_400-9000_IGNORE": "true"}, [("80", "busybox-80")], id="range ignores"
        ),
        pytest.param(
            {"SERVICE_400-9000_IGNORE": "true", "SERVICE_443_IGNORE": "false"},
            [("80", "busybox-80"), ("443", "busybox-443")],
            id="exact port beats range",
        ),
        pytest.param(
            {"SERVICE_IGNORE": "true", "SERVICE_1-100_IGNORE": "no"},
            [],
            id="a container-wide ignore is decided before any port key",
        ),
        pytest.param(
            {"SERVICE_1-65535_IGNORE": "true", "SERVICE_80_IGNORE": "no"},
            [("80", "busybox-80")],
            id="an exact port opts back in",
        ),
        pytest.param(
            {"SERVICE_1-1000_NAME": "web", "SERVICE_1-1000_ID": "w"},
            [("w:80", "web-80"), ("w:443", "web-443"), ("9000", "busybox-9000")],
            id="a range name and id cover several ports: suffixed like container-wide ones",
        ),
        pytest.param(
            {"SERVICE_1-1000_tcp_NAME": "web", "SERVICE_1-1000_udp_NAME": "dns"},
            [("80", "web-80"), ("443", "web-443"), ("9000", "busybox-9000")],
            id="range with protocol",
        ),
    ],
)
def test_port_range_keys(labels: dict[str, str], expected: list[tuple[str, str]]) -> None:
    result = plan(with_labels(fixture_container("multi-port"), labels), internal=True)
    prefix = f"{NODE}:fixture-capture-multi-port:"
    ids = [(s.id.removeprefix(prefix), s.name) for s in result.services]
    assert ids == expected
    assert result.problems == ()


def test_malformed_range_is_one_warning_and_nothing_else() -> None:
    result = plan(make_container(labels={"SERVICE_9000-80_IGNORE": "true"}))
    assert [s.port for s in result.services] == [8080]
    (problem,) = result.problems
    assert (problem.container, problem.key) == ("web-1", "label SERVICE_9000-80_IGNORE")
    assert "9000-80 is not a port range" in problem.reason
    assert dict(result.services[0].meta).keys().isdisjoint({"ignore", "9000-80_ignore"})


# --- SERVICE_TAGS templates ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "tags", "problem"),
    [
        pytest.param(
            {"SERVICE_TAGS": "v{{.Labels.version}},{{.Name}},{{.Node}}", "version": "2"},
            ("v2", "web-1", NODE),
            "",
            id="same fields as -tags",
        ),
        pytest.param(
            {"SERVICE_TAGS": '{{index .Labels "com.example.tier"}}', "com.example.tier": "gold"},
            ("gold",),
            "",
            id="index form",
        ),
        pytest.param(
            {"SERVICE_TAGS": "a,{{.Labels.missing}},b"}, ("a", "b"), "", id="missing label"
        ),
        pytest.param(
            {"SERVICE_TAGS": "a,{{.Env.HOME}}"},
            ("a",),
            "unknown template field {{.Env.HOME}}",
            id="unknown field: warned, expands to nothing",
        ),
        pytest.param(
            {"SERVICE_80_TAGS": "{{.Image}}", "SERVICE_TAGS": "x"},
            ("example/web:1.0",),
            "",
            id="port-scoped",
        ),
    ],
)
def test_service_tags_templates(
    labels: dict[str, str], tags: tuple[str, ...], problem: str
) -> None:
    result = plan(make_container(labels=labels))
    (service,) = result.services
    assert service.tags == tags
    assert [p.reason for p in result.problems if problem] == (
        [
            f'{problem} (known: .Name .Image .Hostname .Node .Labels.KEY index .Labels "KEY"); '
            "that field expands to nothing"
        ]
        if problem
        else []
    )
    if problem:
        assert result.problems[0].key == "label SERVICE_TAGS"


def test_tags_template_and_service_tags_are_one_grammar() -> None:
    labels = {"SERVICE_TAGS": "{{.Name}}-{{.Labels.team}}", "team": "blue"}
    result = plan(make_container(labels=labels), tags="{{.Name}}-{{.Labels.team}},x")
    assert result.services[0].tags == ("web-1-blue", "x")


# --- SERVICE_IP and -useIpFromLabel ---------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "env", "opt_in", "address", "problem_keys"),
    [
        pytest.param(
            {"SERVICE_IP": "10.1.2.3"}, {}, "", DEFAULT_ADDRESS, ["label SERVICE_IP"], id="refused"
        ),
        pytest.param(
            {}, {"SERVICE_80_IP": "10.1.2.3"}, "", DEFAULT_ADDRESS, ["env SERVICE_80_IP"],
            id="refused from env too",
        ),
        pytest.param(
            {"SERVICE_IP": "10.1.2.3"}, {}, "SERVICE_IP", "10.1.2.3", [], id="operator opted in"
        ),
        pytest.param(
            {"SERVICE_IP": "10.1.2.3", "SERVICE_80_IP": "10.4.5.6"},
            {},
            "SERVICE_IP",
            "10.4.5.6",
            [],
            id="port-scoped SERVICE_IP",
        ),
        pytest.param(
            {"SERVICE_IP": "nope"}, {}, "SERVICE_IP", DEFAULT_ADDRESS, ["label SERVICE_IP"],
            id="not an address: warned once",
        ),
        pytest.param(
            {"SERVICE_IP": "10.1.2.3", "ip": "10.7.7.7"},
            {},
            "ip",
            "10.7.7.7",
            ["label SERVICE_IP"],
            id="another label named: SERVICE_IP still refused",
        ),
    ],
)  # fmt: skip
def test_service_ip(
    labels: dict[str, str], env: dict[str, str], opt_in: str, address: str, problem_keys: list[str]
) -> None:
    result = plan(make_container(labels=labels, env=env), use_ip_from_label=opt_in)
    assert [s.address for s in result.services] == [address]
    assert [p.key for p in result.problems] == problem_keys
    if problem_keys and opt_in != "SERVICE_IP":
        assert "-useIpFromLabel SERVICE_IP" in result.problems[0].reason


# --- weights and tag override -------------------------------------------------------------


def test_weights_and_tag_override_reach_the_service() -> None:
    labels = {
        "SERVICE_WEIGHT": "10",
        "SERVICE_WEIGHT_WARNING": "2",
        "SERVICE_ENABLE_TAG_OVERRIDE": "true",
    }
    (service,) = plan(make_container(labels=labels)).services
    assert (service.weights, service.enable_tag_override) == ((10, 2), True)
    assert dict(service.meta).keys().isdisjoint({"weight", "weight_warning", "enable_tag_override"})


def test_bad_weight_still_registers_with_consul_defaults() -> None:
    labels = {"SERVICE_WEIGHT": "heavy", "SERVICE_ENABLE_TAG_OVERRIDE": "maybe"}
    result = plan(make_container(labels=labels))
    (service,) = result.services
    assert (service.weights, service.enable_tag_override) == (None, False)
    assert [p.key for p in result.problems] == [
        "label SERVICE_WEIGHT",
        "label SERVICE_ENABLE_TAG_OVERRIDE",
    ]


# --- every bad value a service carries is shown in Consul ---------------------------------


@pytest.mark.parametrize(
    ("labels", "options", "keys"),
    [
        pytest.param({"SERVICE_WEIGHT": "heavy"}, {}, ["label SERVICE_WEIGHT"], id="weight heavy"),
        pytest.param({"SERVICE_WEIGHT": "-1"}, {}, ["label SERVICE_WEIGHT"], id="weight -1"),
        pytest.param(
            {"SERVICE_WEIGHT_WARNING": "0"}, {}, ["label SERVICE_WEIGHT_WARNING"], id="warning 0"
        ),
        pytest.param(
            {"SERVICE_ENABLE_TAG_OVERRIDE": "maybe"},
            {},
            ["label SERVICE_ENABLE_TAG_OVERRIDE"],
            id="tag override: not a yes/no word",
        ),
        pytest.param(
            {"SERVICE_TAGS": "a,{{.Nope}}"}, {}, ["label SERVICE_TAGS"], id="tags: unknown field"
        ),
        pytest.param(
            {"SERVICE_IP": "10.1.2.3"}, {}, ["label SERVICE_IP"], id="SERVICE_IP without opt-in"
        ),
        pytest.param(
            {"SERVICE_IP": "nope"},
            {"use_ip_from_label": "SERVICE_IP"},
            ["label SERVICE_IP"],
            id="SERVICE_IP not an address",
        ),
        pytest.param(
            {"ip": "nope"},
            {"use_ip_from_label": "ip"},
            ["label ip"],
            id="the -useIpFromLabel label not an address",
        ),
        pytest.param({"SERVICE_A.B": "1"}, {}, ["label SERVICE_A.B"], id="meta key: a dot"),
        pytest.param(
            {"SERVICE_CONSUL-X": "1"}, {}, ["label SERVICE_CONSUL-X"], id="meta key: consul-"
        ),
        pytest.param(
            {"SERVICE_CONNECT": "maybe"}, {}, ["label SERVICE_CONNECT"], id="connect: a word"
        ),
        pytest.param(
            {"SERVICE_CONNECT": "sidecar", "SERVICE_CONNECT_UPSTREAMS": "db"},
            {},
            ["label SERVICE_CONNECT_UPSTREAMS"],
            id="connect: upstream without a port",
        ),
        pytest.param(
            {"SERVICE_CONNECT": "sidecar", "SERVICE_CONNECT_UPSTREAM": "db:5432"},
            {},
            ["label SERVICE_CONNECT_UPSTREAM"],
            id="connect: a key nothing reads (a typo)",
        ),
        pytest.param(
            {"SERVICE_CONNECT_SIDECARPORT": "21000"},
            {},
            ["label SERVICE_CONNECT_SIDECARPORT"],
            id="connect off: a key nothing reads is still said",
        ),
        pytest.param({"SERVICE_80": "x"}, {}, ["label SERVICE_80"], id="scoped key without a name"),
        pytest.param(
            {"SERVICE_10-x_IGNORE": "true"},
            {},
            ["label SERVICE_10-x_IGNORE"],
            id="malformed range: the ports it meant are registered",
        ),
        pytest.param(
            {"SERVICE_80_NETWORK": "b"},
            {},
            ["label SERVICE_80_NETWORK"],
            id="container-wide key scoped to a port",
        ),
        pytest.param(
            {"SERVICE_NETWORK": "nosuch"},
            {"internal": True},
            ["label SERVICE_NETWORK"],
            id="SERVICE_NETWORK the container is not on",
        ),
        # Said in the log only: an operator's option, or advice rather than a bad value.
        pytest.param({}, {"internal": True, "network": "nosuch"}, [], id="-network: an option"),
        pytest.param({"SERVICE_CHECK_INTERVAL": "10"}, {}, [], id="bare seconds: understood"),
        pytest.param({"SERVICE_WEIGHT": "7"}, {}, [], id="valid weight"),
    ],
)
def test_bad_service_values_show_in_a_warning_misconfigured_check(
    labels: dict[str, str], options: dict[str, Any], keys: list[str]
) -> None:
    result = plan(make_container(labels=labels), **options)
    (service,) = result.services
    flawed = [c for c in service.checks if c.kind is CheckKind.MISCONFIGURED]
    visible = [p for p in result.problems if p.key in keys]
    assert [p.key for p in visible] == keys  # logged too, once
    if not keys:
        assert flawed == []
        return
    (check,) = flawed
    assert check.check_id == f"service:{service.id}:misconfigured"
    assert dict(check.fields) == {
        "TTL": "24h",
        "Status": "warning",  # the service serves, only not as labelled
        "Notes": "; ".join(f"{p.key}: {p.reason}" for p in visible),
    }
    assert check.name == "Malformed labels"


def test_a_malformed_check_key_keeps_the_misconfigured_check_critical() -> None:
    labels = {"SERVICE_WEIGHT": "heavy", "SERVICE_CHECK_TIMEOUT": "0s", "SERVICE_CHECK_TCP": "1"}
    result = plan(make_container(labels=labels))
    (service,) = result.services
    (check,) = [c for c in service.checks if c.kind is CheckKind.MISCONFIGURED]
    assert check.fields["Status"] == "critical"
    assert check.name == "Malformed check labels"
    assert str(check.fields["Notes"]) == (
        "label SERVICE_CHECK_TIMEOUT: '0s' must be more than 0; left unset; "
        "label SERVICE_WEIGHT: 'heavy' is not a whole number from 1 to 65535; "
        "Consul's default 1 used"
    )


def test_every_port_shows_the_container_wide_flaws_and_only_its_own() -> None:
    container = make_container(
        labels={"SERVICE_80": "x", "SERVICE_443_WEIGHT": "heavy"},
        ports=(published(80, 8080), published(443, 8443)),
    )
    notes = {
        service.id: str(check.fields["Notes"])
        for service in plan(container).services
        for check in service.checks
        if check.kind is CheckKind.MISCONFIGURED
    }
    scoped = "port-scoped key without a name"
    assert notes["node1:web-1:80"].startswith(f"label SERVICE_80: {scoped}")
    assert "SERVICE_443_WEIGHT" not in notes["node1:web-1:80"]
    assert notes["node1:web-1:443"].startswith(f"label SERVICE_80: {scoped}")
    assert "; label SERVICE_443_WEIGHT: 'heavy' is not" in notes["node1:web-1:443"]


# --- IPv6 and dual stack ------------------------------------------------------------------


def _ipv6_only(container: Container) -> Container:
    networks = tuple(replace(n, ip="") for n in container.networks)
    return replace(container, networks=networks)


def _bound(container: Container, *host_ips: str) -> Container:
    (port,) = container.ports
    bindings = tuple(PortBinding(ip, 8082) for ip in host_ips)
    return replace(container, ports=(ContainerPort(port.port, port.protocol, bindings),))


@pytest.mark.parametrize(
    ("container", "context", "address", "port", "tagged"),
    [
        pytest.param(
            fixture_container("dual-stack"),
            {"internal": True},
            DUAL_V4,
            80,
            {"lan_ipv4": DUAL_V4, "lan_ipv6": DUAL_V6},
            id="-internal, dual stack: IPv4 address, both tagged",
        ),
        pytest.param(
            _ipv6_only(fixture_container("dual-stack")),
            {"internal": True},
            DUAL_V6,
            80,
            {"lan_ipv6": DUAL_V6},
            id="-internal, IPv6 only: the IPv6 address",
        ),
        pytest.param(
            fixture_container("two-networks"),
            {"internal": True, "network": "fixture-capture-net-a"},
            "198.18.201.2",
            80,
            {},
            id="-internal, IPv4 only: no tagged addresses",
        ),
        pytest.param(
            fixture_container("dual-stack"),
            {"ip": "fd00::10"},
            "fd00::10",
            8082,
            {},
            id="published on :: only, -ip IPv6: that address",
        ),
        pytest.param(
            fixture_container("dual-stack"),
            {"default_address": "fd00::11"},
            "fd00::11",
            8082,
            {},
            id="published on :: only, IPv6 node address",
        ),
        pytest.param(
            _bound(fixture_container("dual-stack"), "::", "0.0.0.0"),
            {},
            DEFAULT_ADDRESS,
            8082,
            {},
            id="published on :: and 0.0.0.0: the IPv4 binding wins",
        ),
        pytest.param(
            _bound(fixture_container("dual-stack"), "fd00::12"),
            {},
            "fd00::12",
            8082,
            {},
            id="published on one IPv6 address: that address",
        ),
    ],
)
def test_ipv6_addresses(
    container: Container, context: dict[str, Any], address: str, port: int, tagged: dict[str, str]
) -> None:
    if context.get("internal") and container.name.endswith("two-networks"):
        container = replace(container, labels={**container.labels, "SERVICE_PORT": "80"})
    result = plan(container, **context)
    (service,) = result.services
    assert (service.address, service.port, dict(service.tagged_addresses)) == (
        address,
        port,
        tagged,
    )
    assert result.problems == ()


def test_published_on_ipv6_only_without_an_ipv6_host_address_is_not_registered() -> None:
    container = fixture_container("dual-stack")
    result = plan(container, ip="10.0.0.1")
    assert result.services == ()
    (problem,) = result.problems
    assert (problem.container, problem.key) == (container.name, "port 80/tcp")
    assert "no IPv6 address of this host is known" in problem.reason


def test_an_address_override_drops_the_network_tagged_addresses() -> None:
    container = with_labels(fixture_container("dual-stack"), {"SERVICE_IP": "fd00::99"})
    (service,) = plan(container, internal=True, use_ip_from_label="SERVICE_IP").services
    assert (service.address, dict(service.tagged_addresses)) == ("fd00::99", {})


def test_ipv6_network_attachment() -> None:
    (network,) = fixture_container("dual-stack").networks
    assert (network.ip, network.ipv6, network.address) == (DUAL_V4, DUAL_V6, DUAL_V4)
    assert NetworkAttachment("n", "", ipv6="fd00::1").address == "fd00::1"


# --- no silent keys -----------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(RESERVED_KEYS))
def test_every_reserved_key_is_in_the_readme_label_reference(key: str) -> None:
    readme = README.read_text()
    section = readme[readme.index("## Label reference") :]
    section = section[: section.index("\n## ", 1)]
    assert re.search(rf"`SERVICE_{key}`", section), f"SERVICE_{key} missing from the reference"


# --- one set of yes/no words ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "connect", "problem"),
    [
        pytest.param("off", None, False, id="off: no Connect"),
        pytest.param("No", None, False, id="No"),
        pytest.param("none", None, False, id="none"),
        pytest.param("on", "sidecar", False, id="on: a sidecar"),
        pytest.param("TRUE", "sidecar", False, id="TRUE"),
        pytest.param("sidecar", "sidecar", False, id="sidecar"),
        pytest.param("native", "native", False, id="native"),
        pytest.param("maybe", None, True, id="other word: warned"),
    ],
)
def test_service_connect_words(value: str, connect: str | None, problem: bool) -> None:
    result = plan(make_container(labels={"SERVICE_CONNECT": value}))
    (service,) = result.services
    kinds = {None: None, "sidecar": "SidecarService", "native": "Native"}
    assert (None if service.connect is None else next(iter(service.connect))) == kinds[connect]
    assert [p.key for p in result.problems] == (["label SERVICE_CONNECT"] if problem else [])


@pytest.mark.parametrize(
    ("mode", "connect", "instead"),
    [
        pytest.param("sidecar", None, "registered without Connect", id="sidecar: all or nothing"),
        pytest.param("native", "Native", "ignored", id="native: no sidecar to shape"),
        pytest.param("off", None, "ignored", id="off"),
    ],
)
def test_a_connect_key_nothing_reads_is_said(mode: str, connect: str | None, instead: str) -> None:
    labels = {"SERVICE_CONNECT": mode, "SERVICE_CONNECT_UPSTREAM": "db:5432"}
    result = plan(make_container(labels=labels))
    (service,) = result.services
    assert (None if service.connect is None else next(iter(service.connect))) == connect
    assert [str(p) for p in result.problems] == [
        "container web-1: label SERVICE_CONNECT_UPSTREAM: not a Connect key registrator knows; "
        + instead
    ]


@pytest.mark.parametrize(
    ("labels", "checks"),
    [
        pytest.param({"SERVICE_CHECK_TCP": "off"}, [], id="SERVICE_CHECK_TCP=off: no TCP check"),
        pytest.param({"SERVICE_CHECK_TCP": "on"}, ["tcp"], id="SERVICE_CHECK_TCP=on"),
        pytest.param({"SERVICE_IGNORE": "off", "SERVICE_CHECK_GRPC": "off"}, [], id="ignore off"),
    ],
)
def test_off_is_false_in_labels_as_in_options(labels: dict[str, str], checks: list[str]) -> None:
    (service,) = plan(make_container(labels=labels)).services
    assert [c.check_id.rsplit(":", 1)[1] for c in service.checks] == checks
