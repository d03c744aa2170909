"""Pure: the text of one option (a flag's value, an environment variable, the registry URI)
→ its typed value.

Each parser takes the raw text and returns the value, or raises ValueError with the reason; the
caller (arguments.parse_args) adds which flag or variable it came from. settings.Settings names
the parser of each option.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit


@dataclass(frozen=True)
class ConsulEndpoint:
    """The Consul agent's HTTP API: from the registry URI, -consul or CONSUL_HTTP_ADDR."""

    scheme: str  # "http" | "https" | "unix"
    host: str = ""
    port: int = 0
    socket_path: str = ""

    @property
    def base_url(self) -> str:
        if self.scheme == "unix":
            # aiohttp needs some host in the URL even when the connector is a unix socket.
            return "http://consul"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.socket_path}"
        return self.base_url


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise ValueError(f"{value} is below the minimum {minimum}")
        return value

    return parse


def ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def enum_value(kind: type[Enum]) -> Callable[[str], Enum]:
    def parse(text: str) -> Enum:
        try:
            return kind(text.strip().lower())
        except ValueError:
            allowed = ", ".join(str(member.value) for member in kind)
            raise ValueError(f"{text!r} is not one of: {allowed}") from None

    return parse


def log_level_name(text: str) -> str:
    level = text.strip().lower()
    if level not in {"debug", "info", "warning", "error"}:
        raise ValueError(f"{text!r} is not one of: debug, info, warning, error")
    return level


def check_status(text: str) -> str:
    status = text.strip().lower()
    if status not in {"passing", "warning", "critical"}:
        raise ValueError(f"{text!r} is not one of: passing, warning, critical")
    return status


def listen_address(text: str) -> str:
    """`HOST:PORT` or `:PORT` for the health/metrics server; empty disables it."""
    raw = text.strip()
    if not raw:
        return ""
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{raw!r} is not HOST:PORT or :PORT")
    if host.strip("[]"):
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ValueError(f"{raw!r}: {host!r} is not an IP address") from None
    return raw


def stripped(text: str) -> str:
    return text.strip()


_UNSUPPORTED_BACKENDS = {"etcd", "skydns2", "zookeeper", "consulkv", "etcd2", "skydns"}


def parse_consul_uri(text: str) -> ConsulEndpoint:
    """`consul://host:port`, `consul-tls://host:port` or `consul-unix:///path`."""
    raw = text.strip()
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise ValueError(f"{raw!r} is not a registry URI (expected consul://HOST:PORT)")
    scheme = scheme.lower()
    if scheme in _UNSUPPORTED_BACKENDS:
        raise ValueError(f"{scheme}:// is not supported: this registrator only speaks to Consul")
    if scheme == "consul-unix":
        if not rest.startswith("/"):
            raise ValueError(f"{raw!r}: consul-unix needs an absolute socket path")
        return ConsulEndpoint("unix", socket_path=rest)
    if scheme not in {"consul", "consul-tls"}:
        raise ValueError(
            f"{scheme}:// is not supported: use consul://, consul-tls:// or consul-unix://"
        )
    return _host_port("https" if scheme == "consul-tls" else "http", rest, raw)


def parse_consul_http_addr(text: str) -> ConsulEndpoint:
    """CONSUL_HTTP_ADDR as the consul CLI takes it: `host:port`, `http(s)://…`, `unix://…`."""
    raw = text.strip()
    if raw.startswith("unix://"):
        return ConsulEndpoint("unix", socket_path=raw[len("unix://") :])
    scheme = "http"
    rest = raw
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        scheme = scheme.lower()
        if scheme not in {"http", "https"}:
            raise ValueError(f"{raw!r}: scheme must be http, https or unix")
    return _host_port(scheme, rest, raw)


def _host_port(scheme: str, rest: str, raw: str) -> ConsulEndpoint:
    parts = urlsplit(f"//{rest.rstrip('/')}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{raw!r} has an invalid port") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"{raw!r} has no host")
    if parts.path not in ("", "/"):
        raise ValueError(f"{raw!r} must not have a path")
    default_port = 8501 if scheme == "https" else 8500
    return ConsulEndpoint(scheme, host, port or default_port)


def docker_host_url(text: str) -> str:
    raw = text.strip()
    if raw.startswith("unix://") or raw.startswith("tcp://") or raw.startswith("http://"):
        return raw
    raise ValueError(f"{raw!r}: expected unix:///path or tcp://host:port")
