"""Builders shared by the unit tables: captured `docker inspect` documents and small values.

The captured documents come from tests/unit/fixtures/capture.py; the builders here give a test
a plain Container (or Metadata) with only the fields it cares about spelled out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

from registrator.containers import parse_container
from registrator.labels import Metadata, service_metadata
from registrator.model import Container, ContainerPort, NetworkAttachment, PortBinding
from registrator.planner import PlanContext
from registrator.settings import Settings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
INSPECT_DIR = FIXTURES / "inspect"
SWARM_DIR = FIXTURES / "swarm"
PAYLOAD_DIR = FIXTURES / "payload"
INSPECT_NAMES = tuple(sorted(path.stem for path in INSPECT_DIR.glob("*.json")))

CONTAINER_ID = "0123456789ab" + "c" * 52
NODE = "node1"


@cache
def _fixture_text(path: Path) -> str:
    return path.read_text()


def inspect_document(name: str, directory: Path = INSPECT_DIR) -> dict[str, Any]:
    """A fresh copy of one captured document, safe to mutate."""
    document: dict[str, Any] = json.loads(_fixture_text(directory / f"{name}.json"))
    return document


def fixture_container(name: str, **overrides: Any) -> Container:
    """The Container parsed from a captured document, with some fields replaced."""
    return replace(parse_container(inspect_document(name)), **overrides)


def with_labels(container: Container, labels: Mapping[str, str]) -> Container:
    return replace(container, labels={**container.labels, **labels})


def published(
    port: int, host_port: int, host_ip: str = "0.0.0.0", protocol: str = "tcp"
) -> ContainerPort:
    return ContainerPort(port, protocol, (PortBinding(host_ip, host_port),))


def make_container(**overrides: Any) -> Container:
    """A running bridge container publishing 80 on 8080, with no SERVICE_* metadata."""
    fields: dict[str, Any] = {
        "id": CONTAINER_ID,
        "name": "web-1",
        "image": "example/web:1.0",
        "hostname": CONTAINER_ID[:12],
        "labels": {},
        "env": {},
        "ports": (published(80, 8080),),
        "networks": (NetworkAttachment("bridge", "198.18.0.7", "n" * 64),),
        "network_mode": "default",
        "running": True,
        "paused": False,
        "restarting": False,
        "exit_code": 0,
    }
    fields.update(overrides)
    return Container(**fields)


def make_metadata(
    labels: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    port: int | None = 80,
) -> Metadata:
    container = make_container(labels=dict(labels or {}), env=dict(env or {}))
    return service_metadata(container, port)


def make_context(
    node: str = NODE, default_address: str = "10.0.0.9", **options: Any
) -> PlanContext:
    """A PlanContext; `options` are Settings fields (internal=True, tags="...", ...).

    The node heartbeat's alias check is left out unless `node_ttl` is given: it is in every
    service, and the tables that are about something else would all have to list it.
    """
    return PlanContext(node, default_address, Settings(**{"node_ttl": 0, **options}))
