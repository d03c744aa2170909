"""One frozen Settings, from argv and an environment mapping.

Pure: the caller hands in argv and the environment (only the CLI touches os.environ), and
every problem is a ConfigError whose message names the option, so the entry point can print one
line and exit 2.

Flags follow Go's `flag` package, because users paste gliderlabs/registrator command lines:
`-internal`, `-ip 10.0.0.1`, `-ip=10.0.0.1`, `-internal=false`; `--long-form` is accepted too, and
unlike Go's parser, options may follow the positional URI.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from registrator.vocabulary import parse_bool, validate_template


class ConfigError(ValueError):
    """A startup configuration problem; the message is the one line a user sees."""


class DeregisterMode(Enum):
    ALWAYS = "always"
    ON_SUCCESS = "on-success"


class LogFormat(Enum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True)
class ConsulEndpoint:
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


# --- value parsers: each takes the raw text and returns the typed value or raises ValueError
#     with a reason; the option name is added by the caller.


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise ValueError(f"{value} is below the minimum {minimum}")
        return value

    return parse


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _enum(kind: type[Enum]) -> Callable[[str], Enum]:
    def parse(text: str) -> Enum:
        try:
            return kind(text.strip().lower())
        except ValueError:
            allowed = ", ".join(str(member.value) for member in kind)
            raise ValueError(f"{text!r} is not one of: {allowed}") from None

    return parse


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in {"debug", "info", "warning", "error"}:
        raise ValueError(f"{text!r} is not one of: debug, info, warning, error")
    return level


def _check_status(text: str) -> str:
    status = text.strip().lower()
    if status not in {"passing", "warning", "critical"}:
        raise ValueError(f"{text!r} is not one of: passing, warning, critical")
    return status


def _listen_address(text: str) -> str:
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


def _text(text: str) -> str:
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


def _docker_host(text: str) -> str:
    raw = text.strip()
    if raw.startswith("unix://") or raw.startswith("tcp://") or raw.startswith("http://"):
        return raw
    raise ValueError(f"{raw!r}: expected unix:///path or tcp://host:port")


@dataclass(frozen=True)
class Option:
    """One configurable setting: its flag names, environment variable and parser."""

    field: str
    names: tuple[str, ...]  # flag spellings, without dashes; the first is the long form
    env: str
    parse: Callable[[str], Any]
    help: str
    is_bool: bool = False
    metavar: str = ""


def option(
    default: Any = None,
    env: str = "",
    parse: Callable[[str], Any] = str,
    help: str = "",
    *,
    names: tuple[str, ...] = (),
    is_bool: bool = False,
    metavar: str = "",
    factory: Callable[[], Any] | None = None,
    repr: bool = True,
) -> Any:
    """A Settings field that is also a command-line option and an environment variable."""
    spec = Option("", names, env, parse, help, is_bool, metavar)
    if factory is not None:
        return field(default_factory=factory, repr=repr, metadata={"option": spec})
    return field(default=default, repr=repr, metadata={"option": spec})


@dataclass(frozen=True)
class Settings:
    """Every option, declared once: its type, default, environment variable, parser, help and
    flag spellings (default: the field name with dashes). OPTIONS below is read from here."""

    internal: bool = option(
        False,
        "REGISTRATOR_INTERNAL",
        parse_bool,
        "register the container's own IP and exposed ports instead of published host ports",
        is_bool=True,
    )
    cleanup: bool = option(
        False,
        "REGISTRATOR_CLEANUP",
        parse_bool,
        "accepted for gliderlabs compatibility; stale services this node owns are always "
        "removed (see README)",
        is_bool=True,
    )
    explicit: bool = option(
        False,
        "REGISTRATOR_EXPLICIT",
        parse_bool,
        "only register containers (or ports) that set SERVICE_NAME / SERVICE_<port>_NAME",
        is_bool=True,
    )
    ip: str = option(
        "",
        "REGISTRATOR_IP",
        _ip,
        "address to register for published ports (default: see README, Addresses)",
        metavar="IP",
    )
    tags: str = option(
        "",
        "REGISTRATOR_TAGS",
        validate_template,
        "comma-separated tags added to every service; {{.Name}} {{.Image}} {{.Hostname}} "
        "{{.Node}} {{.Labels.KEY}} are expanded per container",
        metavar="TAGS",
    )
    resync: int = option(
        30,
        "REGISTRATOR_RESYNC",
        _int_at_least(0),
        "seconds between full reconciles with Docker and Consul (0 disables)",
        metavar="SECONDS",
    )
    deregister: DeregisterMode = option(
        DeregisterMode.ALWAYS,
        "REGISTRATOR_DEREGISTER",
        _enum(DeregisterMode),
        "always, or on-success: keep services of containers that exited non-zero",
        metavar="MODE",
    )
    retry_attempts: int = option(
        -1,
        "REGISTRATOR_RETRY_ATTEMPTS",
        _int_at_least(-1),
        "attempts to reach Docker and Consul at startup; -1 retries forever",
        metavar="N",
    )
    retry_interval: int = option(
        2000,
        "REGISTRATOR_RETRY_INTERVAL",
        _int_at_least(1),
        "milliseconds between startup attempts",
        metavar="MS",
    )
    use_ip_from_label: str = option(
        "",
        "REGISTRATOR_USE_IP_FROM_LABEL",
        _text,
        "container label whose value is the address to register (SERVICE_IP: also "
        "SERVICE_<port>_IP and env)",
        names=(
            "use-ip-from-label",
            "useIpFromLabel",
        ),
        metavar="LABEL",
    )
    node: str = option(
        "",
        "REGISTRATOR_NODE",
        _text,
        "node name used in service ids and ownership (default: Docker host name)",
        metavar="NAME",
    )
    network: str = option(
        "",
        "REGISTRATOR_NETWORK",
        _text,
        "with -internal, the Docker network whose address is registered",
        metavar="NAME",
    )
    swarm_vip: bool = option(
        False,
        "REGISTRATOR_SWARM_VIP",
        parse_bool,
        "register each Swarm service once, at its virtual IP, instead of its tasks (written "
        "by the agent on the Swarm leader; see README)",
        is_bool=True,
    )
    ttl: int = option(
        0,
        "REGISTRATOR_TTL",
        _int_at_least(0),
        "add a TTL check of this many seconds to every service, kept passing by the agent "
        "(0: none)",
        metavar="SECONDS",
    )
    ttl_refresh: int = option(
        0,
        "REGISTRATOR_TTL_REFRESH",
        _int_at_least(0),
        "seconds between TTL heartbeats (must be below -ttl)",
        metavar="SECONDS",
    )
    node_ttl: int = option(
        30,
        "REGISTRATOR_NODE_TTL",
        _int_at_least(0),
        "TTL of this node's heartbeat in Consul, beaten every TTL/2; every service gets an "
        "alias check on it, so it turns critical when the node or agent is gone (0: off)",
        metavar="SECONDS",
    )
    node_reap_after: int = option(
        300,
        "REGISTRATOR_NODE_REAP_AFTER",
        _int_at_least(0),
        "Consul removes a service whose node heartbeat has been critical this long "
        "(at least 60: Consul's minimum; 0: never)",
        metavar="SECONDS",
    )
    swarm_reap_after: int = option(
        60,
        "REGISTRATOR_SWARM_REAP_AFTER",
        _int_at_least(0),
        "on the Swarm leader: deregister the services of a node Swarm has reported down this "
        "long, or that left the swarm (0: off)",
        metavar="SECONDS",
    )
    docker_health: bool = option(
        True,
        "REGISTRATOR_DOCKER_HEALTH",
        parse_bool,
        "mirror each container's Docker HEALTHCHECK into a Consul check",
        is_bool=True,
    )
    docker_health_initial: str = option(
        "critical",
        "REGISTRATOR_DOCKER_HEALTH_INITIAL",
        _check_status,
        "Consul status of a mirrored HEALTHCHECK while Docker says 'starting'",
        metavar="STATUS",
    )
    drain: bool = option(
        False,
        "REGISTRATOR_DRAIN",
        parse_bool,
        "on the container's own stop signal, put its services in maintenance until it dies "
        "(or outlives its stop timeout)",
        is_bool=True,
    )
    deregister_on_exit: bool = option(
        False,
        "REGISTRATOR_DEREGISTER_ON_EXIT",
        parse_bool,
        "on SIGTERM, deregister every service this node owns before exiting",
        is_bool=True,
    )
    http_addr: str = option(
        "",
        "REGISTRATOR_HTTP_ADDR",
        _listen_address,
        "serve /health and /metrics on HOST:PORT or :PORT (empty: off)",
        metavar="ADDR",
    )
    log_level: str = option(
        "info",
        "REGISTRATOR_LOG_LEVEL",
        _log_level,
        "debug, info, warning or error",
        metavar="LEVEL",
    )
    log_format: LogFormat = option(
        LogFormat.TEXT,
        "REGISTRATOR_LOG_FORMAT",
        _enum(LogFormat),
        "text or json",
        metavar="FORMAT",
    )
    docker_host: str = option(
        "unix:///var/run/docker.sock",
        "DOCKER_HOST",
        _docker_host,
        "Docker API endpoint",
        metavar="URL",
    )
    consul: ConsulEndpoint = option(
        env="REGISTRATOR_CONSUL",
        parse=parse_consul_uri,
        help="Consul agent URI, same as the positional argument",
        factory=lambda: ConsulEndpoint("http", "127.0.0.1", 8500),
        metavar="URI",
    )
    consul_token: str = option(
        "",
        "CONSUL_HTTP_TOKEN",
        _text,
        "ACL token",
        repr=False,
        metavar="TOKEN",
    )
    consul_token_file: str = option(
        "",
        "CONSUL_HTTP_TOKEN_FILE",
        _text,
        "file holding the ACL token",
        metavar="PATH",
    )
    consul_cacert: str = option(
        "",
        "CONSUL_CACERT",
        _text,
        "CA bundle to verify Consul's certificate",
        metavar="PATH",
    )
    consul_client_cert: str = option(
        "",
        "CONSUL_CLIENT_CERT",
        _text,
        "client certificate for Consul",
        metavar="PATH",
    )
    consul_client_key: str = option(
        "",
        "CONSUL_CLIENT_KEY",
        _text,
        "client key for Consul",
        metavar="PATH",
    )
    consul_ssl_verify: bool = option(
        True,
        "CONSUL_HTTP_SSL_VERIFY",
        parse_bool,
        "verify Consul's TLS certificate",
        is_bool=True,
    )


OPTIONS: tuple[Option, ...] = tuple(
    replace(
        f.metadata["option"],
        field=f.name,
        names=f.metadata["option"].names or (f.name.replace("_", "-"),),
    )
    for f in fields(Settings)
)

_BY_NAME: dict[str, Option] = {name: opt for opt in OPTIONS for name in opt.names}
# Go's flag package matches names exactly; users also type camelCase gliderlabs names in
# lower case, so a case-insensitive second lookup avoids a surprising "unknown flag".
_BY_LOWER: dict[str, Option] = {name.lower(): opt for opt in OPTIONS for name in opt.names}


@dataclass(frozen=True)
class Command:
    """What the command line asks for: run the agent, print help or the version."""

    action: str  # "run" | "help" | "version"
    settings: Settings


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Command:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def set_value(opt: Option, raw: str, source: str) -> None:
        try:
            values[opt.field] = opt.parse(raw)
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None
        sources[opt.field] = source

    # Environment first; flags then override it.
    for opt in OPTIONS:
        raw = environ.get(opt.env)
        if raw is not None and raw.strip():
            set_value(opt, raw, opt.env)

    if "consul" not in values and environ.get("CONSUL_HTTP_ADDR", "").strip():
        try:
            values["consul"] = parse_consul_http_addr(environ["CONSUL_HTTP_ADDR"])
        except ValueError as err:
            raise ConfigError(f"CONSUL_HTTP_ADDR: {err}") from None
        sources["consul"] = "CONSUL_HTTP_ADDR"

    positional: list[str] = []
    action = "run"
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            positional.extend(args[index:])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value, inline = arg.lstrip("-").partition("=")
        if name in {"h", "help"}:
            action = "help"
            continue
        if name in {"v", "version"}:
            action = "version"
            continue
        found = _BY_NAME.get(name) or _BY_LOWER.get(name.lower())
        if found is None:
            raise ConfigError(f"unknown option {arg.split('=')[0]} (see registrator --help)")
        opt = found
        flag = f"-{name}"
        if opt.is_bool:
            set_value(opt, inline if has_value else "true", flag)
            continue
        if not has_value:
            if index >= len(args):
                raise ConfigError(f"{flag}: needs a value")
            inline = args[index]
            index += 1
        set_value(opt, inline, flag)

    if len(positional) > 1:
        raise ConfigError(
            f"expected at most one registry URI, got {len(positional)}: {' '.join(positional)}"
        )
    if positional:
        try:
            values["consul"] = parse_consul_uri(positional[0])
        except ValueError as err:
            raise ConfigError(str(err)) from None
        sources["consul"] = "registry URI"

    if values.get("ttl", 0) == 1:
        # Whole seconds leave no refresh below 1 (0 means "default"), so the check would flap.
        raise ConfigError(
            f"{sources['ttl']}: must be 0 (off) or at least 2, so -ttl-refresh can be below it"
        )
    if values.get("ttl", 0) and values.get("ttl_refresh", 0) >= values["ttl"]:
        raise ConfigError(
            f"{sources.get('ttl_refresh', '-ttl-refresh')}: must be below -ttl "
            f"({values['ttl']}) so the check never expires between heartbeats"
        )
    if values.get("ttl", 0) and not values.get("ttl_refresh"):
        # Half the TTL leaves room for one missed heartbeat.
        values["ttl_refresh"] = max(1, values["ttl"] // 2)
    if values.get("node_ttl") == 1:
        raise ConfigError(
            f"{sources['node_ttl']}: must be 0 (off) or at least 2 (the heartbeat beats every "
            "TTL/2 seconds)"
        )
    if 0 < values.get("node_reap_after", Settings.node_reap_after) < 60:
        raise ConfigError(
            f"{sources['node_reap_after']}: must be 0 (never) or at least 60: Consul removes "
            "critical services no sooner than after one minute"
        )
    if values.get("consul_client_key") and not values.get("consul_client_cert"):
        raise ConfigError("CONSUL_CLIENT_KEY: given without CONSUL_CLIENT_CERT")
    if values.get("consul_client_cert") and not values.get("consul_client_key"):
        raise ConfigError("CONSUL_CLIENT_CERT: given without CONSUL_CLIENT_KEY")

    return Command(action=action, settings=Settings(**values))


def usage() -> str:
    lines = [
        "usage: registrator [options] [consul://HOST:PORT | consul-tls://HOST:PORT | "
        "consul-unix:///PATH]",
        "",
        "Options (single or double dash; every option also reads the environment variable shown):",
    ]
    for opt in OPTIONS:
        flag = " | ".join(f"-{name}" for name in opt.names)
        if opt.metavar:
            flag += f" {opt.metavar}"
        lines.append(f"  {flag}")
        lines.append(f"      {opt.help} [{opt.env}]")
    lines.append("  -h | -help   this text;  -version   the version")
    return "\n".join(lines)
