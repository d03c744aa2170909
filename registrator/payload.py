"""Pure: Service ↔ Consul agent API JSON.

The registration carries a hash of itself in Meta. Consul's `GET /v1/agent/services` does not
return checks or every field as sent, so comparing field by field could never prove "nothing
changed"; comparing our own hash can, with one list call for all services.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from registrator.model import (
    META_CONTAINER,
    META_HASH,
    META_NODE,
    META_SOURCE,
    OWNER_SOURCE,
    HeldService,
    Service,
)


def _check_json(service: Service) -> list[dict[str, Any]]:
    return [
        {"CheckID": check.check_id, "Name": check.name, **dict(check.fields)}
        for check in service.checks
    ]


def _body(service: Service) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ID": service.id,
        "Name": service.name,
        "Address": service.address,
        "Port": service.port,
        "Tags": list(service.tags),
        "Meta": dict(sorted(service.meta.items())),
    }
    checks = _check_json(service)
    if checks:
        body["Checks"] = checks
    if service.connect is not None:
        body["Connect"] = dict(service.connect)
    # Sent only when set, so registrations without them keep the body (and hash) they had.
    if service.weights is not None:
        body["Weights"] = {"Passing": service.weights[0], "Warning": service.weights[1]}
    if service.enable_tag_override:
        body["EnableTagOverride"] = True
    if service.tagged_addresses:
        body["TaggedAddresses"] = {
            name: {"Address": address, "Port": service.port}
            for name, address in sorted(service.tagged_addresses.items())
        }
    return body


def payload_hash(service: Service) -> str:
    canonical = json.dumps(_body(service), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def registration(service: Service) -> dict[str, Any]:
    """The body of `PUT /v1/agent/service/register` for this service."""
    body = _body(service)
    body["Meta"] = {**body["Meta"], META_HASH: payload_hash(service)}
    return body


def held_from_agent(entry: Mapping[str, Any], node: str) -> HeldService | None:
    """An entry of `GET /v1/agent/services`, if this node's registrator owns it."""
    if entry.get("Kind"):
        # A sidecar Consul made from our Connect.SidecarService copies the parent's Meta,
        # but it is part of the parent's registration, not a service of its own to diff.
        return None
    meta = entry.get("Meta")
    if not isinstance(meta, Mapping):
        return None
    if meta.get(META_SOURCE) != OWNER_SOURCE or meta.get(META_NODE) != node:
        return None
    service_id = entry.get("ID")
    container_id = meta.get(META_CONTAINER)
    if not isinstance(service_id, str) or not isinstance(container_id, str):
        return None
    port = entry.get("Port")
    return HeldService(
        id=service_id,
        container_id=container_id,
        payload_hash=str(meta.get(META_HASH, "")),
        name=str(entry.get("Service", "")),
        address=str(entry.get("Address", "")),
        port=port if isinstance(port, int) else 0,
    )


def foreign_holder(entry: Mapping[str, Any], node: str) -> str | None:
    """Who holds an entry of `GET /v1/agent/services` (or `GET /v1/agent/service/:id`) when
    it is not this node's registrator, in words for a warning; None when it is ours.

    Ownership is Meta: `external-source: registrator` with `registrator-node` this node. A
    sidecar Consul made from our registration carries our Meta, so it is ours too.
    """
    meta = entry.get("Meta")
    meta = meta if isinstance(meta, Mapping) else {}
    if meta.get(META_SOURCE) == OWNER_SOURCE:
        other = meta.get(META_NODE)
        if other == node:
            return None
        container = str(meta.get(META_CONTAINER, ""))[:12]
        return f"the registrator of node {other!r}" + (
            f" (container {container})" if container else ""
        )
    shown = ", ".join(f"{key}={value}" for key, value in sorted(meta.items())[:3])
    return "a registration not made by registrator" + (f" (Meta {shown})" if shown else "")


def held_from_service(service: Service) -> HeldService:
    """What Consul holds after it accepted `registration(service)`."""
    return HeldService(
        id=service.id,
        container_id=service.container_id,
        payload_hash=payload_hash(service),
        name=service.name,
        address=service.address,
        port=service.port,
    )
