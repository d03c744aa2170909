"""Pure: a `docker inspect` JSON document → Container.

Docker's answers vary across API versions and can be partial (a container being removed,
an engine under load), so every field is read defensively: a missing or mistyped field becomes
its empty value, and only a document without an id is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registrator.model import Container, ContainerPort, NetworkAttachment, PortBinding
from registrator.vocabulary import port_number


class InspectError(ValueError):
    """The Docker answer cannot describe a container at all."""


# Defensive readers for Docker's JSON, shared with swarm.py: a missing or mistyped field
# reads as its empty value.


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def string_map(value: Any) -> dict[str, str]:
    """A labels-like object, keeping only string keys with string values."""
    return {k: v for k, v in as_dict(value).items() if isinstance(k, str) and isinstance(v, str)}


def parse_env(entries: Any) -> dict[str, str]:
    """`["A=1", "B"]` → `{"A": "1"}`; later duplicates win, as in the process environment."""
    env: dict[str, str] = {}
    if not isinstance(entries, list):
        return env
    for entry in entries:
        if isinstance(entry, str) and "=" in entry:
            key, _, value = entry.partition("=")
            env[key] = value
    return env


def _parse_port_key(key: str) -> tuple[int, str] | None:
    number, _, protocol = key.partition("/")
    port = port_number(number)
    if port is None:
        return None
    return port, (protocol or "tcp").lower()


def _parse_bindings(raw: Any) -> tuple[PortBinding, ...]:
    if not isinstance(raw, list):
        return ()
    bindings: list[PortBinding] = []
    for item in raw:
        item = as_dict(item)
        try:
            host_port = int(as_str(item.get("HostPort")) or 0)
        except ValueError:
            continue
        if host_port <= 0:
            continue
        binding = PortBinding(host_ip=as_str(item.get("HostIp")), host_port=host_port)
        if binding not in bindings:
            bindings.append(binding)
    return tuple(bindings)


def _parse_ports(
    config: Mapping[str, Any], settings: Mapping[str, Any]
) -> tuple[ContainerPort, ...]:
    # Exposed ports come from the image/config; published ones from the live network
    # settings (only those carry the host port Docker actually picked).
    keys: dict[tuple[int, str], tuple[PortBinding, ...]] = {}
    for key in as_dict(config.get("ExposedPorts")):
        parsed = _parse_port_key(key)
        if parsed:
            keys.setdefault(parsed, ())
    for key, raw in as_dict(settings.get("Ports")).items():
        parsed = _parse_port_key(key)
        if parsed:
            keys[parsed] = _parse_bindings(raw) or keys.get(parsed, ())
    return tuple(
        ContainerPort(port=port, protocol=protocol, bindings=bindings)
        for (port, protocol), bindings in sorted(keys.items())
    )


def _parse_networks(settings: Mapping[str, Any]) -> tuple[NetworkAttachment, ...]:
    networks: list[NetworkAttachment] = []
    for name, raw in sorted(as_dict(settings.get("Networks")).items()):
        raw = as_dict(raw)
        networks.append(
            NetworkAttachment(
                name=name,
                ip=as_str(raw.get("IPAddress")),
                network_id=as_str(raw.get("NetworkID")),
                # Link-local addresses (fe80::) are never listed here, only global/ULA ones.
                ipv6=as_str(raw.get("GlobalIPv6Address")),
            )
        )
    return tuple(networks)


def image_exposed_ports(data: Any) -> tuple[ContainerPort, ...]:
    """The ports one `GET /images/{name}/json` answer EXPOSEs (none for a missing image)."""
    return _parse_ports(as_dict(as_dict(data).get("Config")), {})


def parse_container(data: Any) -> Container:
    """Turn one `GET /containers/{id}/json` answer into a Container."""
    doc = as_dict(data)
    container_id = as_str(doc.get("Id"))
    if not container_id:
        raise InspectError("inspect answer has no Id")
    config = as_dict(doc.get("Config"))
    state = as_dict(doc.get("State"))
    host_config = as_dict(doc.get("HostConfig"))
    settings = as_dict(doc.get("NetworkSettings"))
    health = as_dict(state.get("Health"))
    log = health.get("Log")
    last_output = ""
    if isinstance(log, list) and log:
        last_output = as_str(as_dict(log[-1]).get("Output"))
    labels = string_map(config.get("Labels"))
    exit_code = state.get("ExitCode")
    stop_timeout = config.get("StopTimeout")
    return Container(
        id=container_id,
        name=as_str(doc.get("Name")).lstrip("/") or container_id[:12],
        image=as_str(config.get("Image")) or as_str(doc.get("Image")),
        hostname=as_str(config.get("Hostname")),
        labels=labels,
        env=parse_env(config.get("Env")),
        ports=_parse_ports(config, settings),
        networks=_parse_networks(settings),
        network_mode=as_str(host_config.get("NetworkMode")) or "default",
        running=state.get("Running") is True,
        paused=state.get("Paused") is True,
        restarting=state.get("Restarting") is True,
        exit_code=exit_code if isinstance(exit_code, int) else 0,
        health=as_str(health.get("Status")) or None,
        health_output=last_output,
        finished_at=_finished_at(state.get("FinishedAt")),
        stop_signal=as_str(config.get("StopSignal")),
        started_at=_started_at(state.get("StartedAt")),
        stop_timeout=stop_timeout
        if isinstance(stop_timeout, int) and not isinstance(stop_timeout, bool)
        else None,
    )


def _started_at(value: object) -> str:
    text = as_str(value)
    return "" if text.startswith("0001-") else text


def _finished_at(value: object) -> str:
    """State.FinishedAt to the second; Docker's zero time ("0001-01-01T00:00:00Z") is ""."""
    text = as_str(value)
    if not text or text.startswith("0001-"):
        return ""
    return text.split(".", 1)[0].rstrip("Z") + "Z"
