"""Pure: SERVICE_CONNECT* metadata → the `Connect` block of a Consul registration.

All or nothing: if any Connect key is malformed the service is registered without Connect
(and the problem reported), never with a half-built sidecar whose upstreams silently differ
from what the labels say.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from registrator.labels import Metadata, parse_tags
from registrator.model import Container, Problem
from registrator.vocabulary import bool_word, port_number

# name[@datacenter]:[bind-address:]port — e.g. "db:5432", "cache@dc2:127.0.0.2:6379"
_UPSTREAM = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<dc>[A-Za-z0-9._-]+))?"
    r":(?:(?P<bind>[0-9A-Fa-f.:]+):)?(?P<port>\d+)$"
)


# Every SERVICE_CONNECT_* key build_connect reads; any other is a typo (e.g. _UPSTREAM).
KEYS = frozenset(
    {
        "CONNECT_UPSTREAMS",
        "CONNECT_SIDECAR_PORT",
        "CONNECT_SIDECAR_TAGS",
        "CONNECT_LOCAL_ADDRESS",
        "CONNECT_LOCAL_PORT",
        "CONNECT_PROXY_CONFIG",
    }
)


@dataclass(frozen=True)
class ConnectResult:
    connect: dict[str, object] | None
    problems: tuple[Problem, ...] = ()


_UNKNOWN = "not a Connect key registrator knows"


def _reject_constant(name: str) -> object:
    """NaN and Infinity parse in Python but are not JSON; Consul would refuse the payload."""
    raise ValueError(f"{name} is not valid JSON")


def parse_upstreams(text: str) -> list[dict[str, object]]:
    """`db:5432,cache@dc2:127.0.0.2:6379` → Consul Upstreams; ValueError names the bad item."""
    upstreams: list[dict[str, object]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        match = _UPSTREAM.match(item)
        port = port_number(match.group("port")) if match else None
        if match is None or port is None:
            raise ValueError(f"{item!r} is not NAME[@DC]:[BIND_ADDRESS:]PORT")
        upstream: dict[str, object] = {
            "DestinationType": "service",
            "DestinationName": match.group("name"),
            "LocalBindPort": port,
        }
        if match.group("dc"):
            upstream["Datacenter"] = match.group("dc")
        if match.group("bind"):
            try:
                upstream["LocalBindAddress"] = str(ipaddress.ip_address(match.group("bind")))
            except ValueError:
                raise ValueError(
                    f"{item!r}: {match.group('bind')!r} is not an IP address"
                ) from None
        upstreams.append(upstream)
    return upstreams


def build_connect(metadata: Metadata, container: Container) -> ConnectResult:
    mode = metadata.get("CONNECT").strip().lower()
    unknown = [k for k in sorted(metadata.values) if k.startswith("CONNECT_") and k not in KEYS]

    def unknown_keys(instead: str) -> tuple[Problem, ...]:
        return tuple(
            Problem(container.name, metadata.origin(key), f"{_UNKNOWN}; {instead}")
            for key in unknown
        )

    if not mode or mode == "none" or bool_word(mode) is False:
        return ConnectResult(None, unknown_keys("ignored"))

    def fail(key: str, reason: str) -> ConnectResult:
        return ConnectResult(
            None,
            (
                Problem(
                    container.name, metadata.origin(key), f"{reason}; registered without Connect"
                ),
            ),
        )

    if mode == "native":
        return ConnectResult({"Native": True}, unknown_keys("ignored"))
    if mode != "sidecar" and bool_word(mode) is not True:
        return fail("CONNECT", f"{mode!r} is not sidecar or native")
    if unknown:
        # All or nothing: the sidecar they meant to shape would silently differ.
        return ConnectResult(None, unknown_keys("registered without Connect"))

    sidecar: dict[str, object] = {}
    proxy: dict[str, object] = {}
    try:
        upstreams = parse_upstreams(metadata.get("CONNECT_UPSTREAMS"))
    except ValueError as err:
        return fail("CONNECT_UPSTREAMS", str(err))
    if upstreams:
        proxy["Upstreams"] = upstreams

    raw_port = metadata.get("CONNECT_SIDECAR_PORT").strip()
    if raw_port:
        port = port_number(raw_port)
        if port is None:
            return fail("CONNECT_SIDECAR_PORT", f"{raw_port!r} is not a port number")
        sidecar["Port"] = port
    tags = parse_tags(metadata.get("CONNECT_SIDECAR_TAGS"))
    if tags:
        sidecar["Tags"] = tags

    local_address = metadata.get("CONNECT_LOCAL_ADDRESS").strip()
    if local_address:
        try:
            proxy["LocalServiceAddress"] = str(ipaddress.ip_address(local_address))
        except ValueError:
            return fail("CONNECT_LOCAL_ADDRESS", f"{local_address!r} is not an IP address")
    raw_local_port = metadata.get("CONNECT_LOCAL_PORT").strip()
    if raw_local_port:
        local_port = port_number(raw_local_port)
        if local_port is None:
            return fail("CONNECT_LOCAL_PORT", f"{raw_local_port!r} is not a port number")
        proxy["LocalServicePort"] = local_port

    raw_config = metadata.get("CONNECT_PROXY_CONFIG").strip()
    if raw_config:
        try:
            config = json.loads(raw_config, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep JSON
            return fail("CONNECT_PROXY_CONFIG", f"not JSON ({err})")
        if not isinstance(config, dict):
            return fail("CONNECT_PROXY_CONFIG", "must be a JSON object")
        proxy["Config"] = config

    if proxy:
        sidecar["Proxy"] = proxy
    return ConnectResult({"SidecarService": sidecar})


def sidecar_id(service_id: str) -> str:
    """The id Consul gives a sidecar registered through `Connect.SidecarService`."""
    return f"{service_id}-sidecar-proxy"
