"""The registration body Consul receives, its hash, and which agent entries are ours.

Golden bodies live in tests/unit/fixtures/payload/<case>.json. To change one deliberately,
delete the file and run the test: it writes the new body and fails once, so the new golden is
reviewed in the diff rather than accepted silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from registrator.model import (
    META_CONTAINER,
    META_HASH,
    META_NODE,
    META_SOURCE,
    Check,
    CheckKind,
    HeldService,
    Service,
)
from registrator.payload import held_from_agent, held_from_service, payload_hash, registration
from registrator.planner import desired_services, plan_changes
from tests.unit.builders import (
    NODE,
    PAYLOAD_DIR,
    fixture_container,
    make_container,
    make_context,
    with_labels,
)


def planned(container_name: str, labels: dict[str, str], **context: Any) -> Service:
    container = with_labels(fixture_container(container_name), labels)
    result = desired_services(container, make_context(**context))
    assert result.problems == ()
    (service,) = result.services
    return service


def connect_service() -> Service:
    container = make_container(
        labels={
            "SERVICE_NAME": "orders",
            "SERVICE_CONNECT": "sidecar",
            "SERVICE_CONNECT_UPSTREAMS": "db:5432,cache@dc2:127.0.0.2:6379",
            "SERVICE_CONNECT_SIDECAR_PORT": "21000",
        }
    )
    (service,) = desired_services(container, make_context()).services
    return service


GOLDEN_SERVICES: dict[str, Callable[[], Service]] = {
    "bridge-published": lambda: planned("bridge-published", {}),
    "udp-internal": lambda: planned("udp", {"SERVICE_TAGS": "dns"}, internal=True),
    "checks": lambda: planned(
        "healthcheck",
        {
            "SERVICE_NAME": "api",
            "SERVICE_PORT": "80",
            "SERVICE_CHECK_HTTP": "/health",
            "SERVICE_CHECK_HEADER": "X-Probe: consul",
            "SERVICE_CHECK_INTERVAL": "5s",
            "SERVICE_CHECK_TIMEOUT": "1s",
            "SERVICE_CHECK_TCP": "true",
            "SERVICE_CHECK_SCRIPT": "wget -q -O- localhost/ready",
        },
        ttl=30,
    ),
    "connect-sidecar": connect_service,
    # Weights, EnableTagOverride and the dual-stack tagged addresses (issue 16).
    "dual-stack-weights": lambda: planned(
        "dual-stack",
        {
            "SERVICE_WEIGHT": "5",
            "SERVICE_WEIGHT_WARNING": "2",
            "SERVICE_ENABLE_TAG_OVERRIDE": "yes",
        },
        internal=True,
    ),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_SERVICES))
def test_registration_matches_golden(case: str) -> None:
    body = registration(GOLDEN_SERVICES[case]())
    path = PAYLOAD_DIR / f"{case}.json"
    if not path.exists():
        path.write_text(json.dumps(body, indent=2) + "\n")
        pytest.fail(f"wrote new golden {path}; review it and run again")
    assert body == json.loads(path.read_text())


def test_registration_carries_its_own_hash_and_no_private_fields() -> None:
    service = GOLDEN_SERVICES["checks"]()
    body = registration(service)
    assert body["Meta"][META_HASH] == payload_hash(service)
    # registrator runs the script itself; Consul gets a TTL check, never a script to execute.
    assert service.script
    (script_check,) = [c for c in body["Checks"] if c["CheckID"].endswith(":script")]
    assert set(script_check) == {"CheckID", "Name", "TTL", "Notes"}
    assert set(body) == {"ID", "Name", "Address", "Port", "Tags", "Meta", "Checks"}


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        pytest.param({}, {}, id="none set: the body (and hash) registrations had before"),
        pytest.param({"weights": (5, 1)}, {"Weights": {"Passing": 5, "Warning": 1}}, id="weights"),
        pytest.param({"enable_tag_override": True}, {"EnableTagOverride": True}, id="override"),
        pytest.param(
            {"tagged_addresses": {"lan_ipv6": "fd00::2", "lan_ipv4": "198.18.0.2"}},
            {
                "TaggedAddresses": {
                    "lan_ipv4": {"Address": "198.18.0.2", "Port": 8080},
                    "lan_ipv6": {"Address": "fd00::2", "Port": 8080},
                }
            },
            id="tagged addresses at the service port",
        ),
    ],
)
def test_optional_consul_fields(overrides: dict[str, Any], fields: dict[str, Any]) -> None:
    plain = make_service()
    body = registration(make_service(**overrides))
    assert {key: body[key] for key in set(body) - set(registration(plain))} == fields
    assert (payload_hash(make_service(**overrides)) == payload_hash(plain)) is (not fields)


def make_service(**overrides: Any) -> Service:
    fields: dict[str, Any] = {
        "id": "node1:web-1:80",
        "name": "web",
        "address": "10.0.0.9",
        "port": 8080,
        "tags": ("a", "b"),
        "meta": {"version": "1", "team": "x", META_SOURCE: "registrator"},
        "container_id": "c" * 64,
        "container_name": "web-1",
        "checks": (
            Check(
                "service:node1:web-1:80:tcp",
                CheckKind.TCP,
                "TCP",
                {"TCP": "h:1", "Interval": "10s"},
            ),
        ),
    }
    fields.update(overrides)
    return Service(**fields)


def test_payload_hash_ignores_mapping_order() -> None:
    service = make_service()
    shuffled = make_service(
        meta=dict(reversed(list(service.meta.items()))),
        checks=(
            Check(
                "service:node1:web-1:80:tcp",
                CheckKind.TCP,
                "TCP",
                {"Interval": "10s", "TCP": "h:1"},
            ),
        ),
    )
    assert payload_hash(shuffled) == payload_hash(service)
    assert registration(shuffled) == registration(service)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"id": "other"}, id="id"),
        pytest.param({"name": "other"}, id="name"),
        pytest.param({"address": "10.0.0.10"}, id="address"),
        pytest.param({"port": 8081}, id="port"),
        pytest.param({"tags": ("a",)}, id="tag removed"),
        pytest.param({"tags": ("b", "a")}, id="tag order"),
        pytest.param(
            {"meta": {"version": "2", "team": "x", META_SOURCE: "registrator"}}, id="meta"
        ),
        pytest.param({"checks": ()}, id="check removed"),
        pytest.param(
            {
                "checks": (
                    Check(
                        "service:node1:web-1:80:tcp",
                        CheckKind.TCP,
                        "TCP",
                        {"TCP": "h:1", "Interval": "5s"},
                    ),
                )
            },
            id="check field",
        ),
        pytest.param(
            {
                "checks": (
                    Check(
                        "service:node1:web-1:80:tcp",
                        CheckKind.TCP,
                        "tcp",
                        {"TCP": "h:1", "Interval": "10s"},
                    ),
                )
            },
            id="check name",
        ),
        pytest.param({"connect": {"Native": True}}, id="connect added"),
    ],
)
def test_payload_hash_changes_with_any_sent_field(change: dict[str, Any]) -> None:
    assert payload_hash(make_service(**change)) != payload_hash(make_service())


def test_payload_hash_shape() -> None:
    digest = payload_hash(make_service())
    assert len(digest) == 16
    assert int(digest, 16) >= 0


def agent_entry(**overrides: Any) -> dict[str, Any]:
    """One value of Consul's `GET /v1/agent/services`, as registered by this node."""
    entry: dict[str, Any] = {
        "ID": "node1:web-1:80",
        "Service": "web",
        "Tags": ["a"],
        "Address": "10.0.0.9",
        "Port": 8080,
        "Meta": {
            META_SOURCE: "registrator",
            META_NODE: NODE,
            META_CONTAINER: "c" * 64,
            META_HASH: "0123456789abcdef",
        },
        "Datacenter": "dc1",
    }
    entry.update(overrides)
    return entry


OURS = HeldService(
    id="node1:web-1:80",
    container_id="c" * 64,
    payload_hash="0123456789abcdef",
    name="web",
    address="10.0.0.9",
    port=8080,
)


def meta(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(agent_entry()["Meta"])
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param(agent_entry(), OURS, id="ours"),
        pytest.param(agent_entry(Meta=meta(**{META_NODE: "node2"})), None, id="other node"),
        pytest.param(agent_entry(Meta=meta(**{META_SOURCE: "nomad"})), None, id="other source"),
        pytest.param(agent_entry(Meta=meta(**{META_SOURCE: None})), None, id="no source"),
        pytest.param(agent_entry(Meta=None), None, id="no meta"),
        pytest.param(agent_entry(Meta=["x"]), None, id="meta not an object"),
        pytest.param(agent_entry(Meta=meta(**{META_CONTAINER: None})), None, id="no container"),
        pytest.param(agent_entry(ID=5), None, id="id not a string"),
        pytest.param(
            agent_entry(Kind="connect-proxy"), None, id="sidecar copies our meta but is not ours"
        ),
        pytest.param(
            agent_entry(Meta=meta(**{META_HASH: None})),
            replace(OURS, payload_hash=""),
            id="no hash: ours, always re-registered",
        ),
        pytest.param(agent_entry(Port="8080"), replace(OURS, port=0), id="port not a number"),
    ],
)
def test_held_from_agent(entry: dict[str, Any], expected: HeldService | None) -> None:
    assert held_from_agent(entry, NODE) == expected


@pytest.mark.parametrize("case", sorted(GOLDEN_SERVICES))
def test_what_consul_returns_for_a_registration_is_unchanged(case: str) -> None:
    service = GOLDEN_SERVICES[case]()
    body = registration(service)
    # Consul answers with "Service" for the name, and keeps Meta as sent.
    entry = {
        "ID": body["ID"],
        "Service": body["Name"],
        "Tags": body["Tags"],
        "Meta": body["Meta"],
        "Address": body["Address"],
        "Port": body["Port"],
    }
    held = held_from_agent(entry, NODE)
    assert held == held_from_service(service)
    assert plan_changes([service], {service.id: held}).empty
