"""One frozen Settings: every option, declared once as a field (flag names, environment
variable, default, parser, help), and OPTIONS, the table read from those fields.

Pure. The parsers of one option's text are in option_values.py; arguments.py reads argv and an
environment mapping into Settings by this table; `--help` and the README options table are
generated from it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any

from registrator.option_values import (
    ConsulEndpoint,
    check_status,
    docker_host_url,
    enum_value,
    int_at_least,
    ip_address,
    listen_address,
    log_level_name,
    parse_consul_uri,
    stripped,
)
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
        ip_address,
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
        int_at_least(0),
        "seconds between full reconciles with Docker and Consul (0 disables)",
        metavar="SECONDS",
    )
    deregister: DeregisterMode = option(
        DeregisterMode.ALWAYS,
        "REGISTRATOR_DEREGISTER",
        enum_value(DeregisterMode),
        "always, or on-success: keep services of containers that exited non-zero",
        metavar="MODE",
    )
    retry_attempts: int = option(
        -1,
        "REGISTRATOR_RETRY_ATTEMPTS",
        int_at_least(-1),
        "attempts to reach Docker and Consul at startup; -1 retries forever",
        metavar="N",
    )
    retry_interval: int = option(
        2000,
        "REGISTRATOR_RETRY_INTERVAL",
        int_at_least(1),
        "milliseconds between startup attempts",
        metavar="MS",
    )
    use_ip_from_label: str = option(
        "",
        "REGISTRATOR_USE_IP_FROM_LABEL",
        stripped,
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
        stripped,
        "node name used in service ids and ownership (default: Docker host name)",
        metavar="NAME",
    )
    network: str = option(
        "",
        "REGISTRATOR_NETWORK",
        stripped,
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
        int_at_least(0),
        "add a TTL check of this many seconds to every service, kept passing by the agent "
        "(0: none)",
        metavar="SECONDS",
    )
    ttl_refresh: int = option(
        0,
        "REGISTRATOR_TTL_REFRESH",
        int_at_least(0),
        "seconds between TTL heartbeats (must be below -ttl)",
        metavar="SECONDS",
    )
    node_ttl: int = option(
        30,
        "REGISTRATOR_NODE_TTL",
        int_at_least(0),
        "TTL of this node's heartbeat in Consul, beaten every TTL/2; every service gets an "
        "alias check on it, so it turns critical when the node or agent is gone (0: off)",
        metavar="SECONDS",
    )
    node_reap_after: int = option(
        300,
        "REGISTRATOR_NODE_REAP_AFTER",
        int_at_least(0),
        "Consul removes a service whose node heartbeat has been critical this long "
        "(at least 60: Consul's minimum; 0: never)",
        metavar="SECONDS",
    )
    swarm_reap_after: int = option(
        60,
        "REGISTRATOR_SWARM_REAP_AFTER",
        int_at_least(0),
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
        check_status,
        "Consul status of a mirrored HEALTHCHECK while Docker says 'starting'",
        metavar="STATUS",
    )
    docker_health_ttl: int = option(
        86400,
        "REGISTRATOR_DOCKER_HEALTH_TTL",
        int_at_least(3),
        "TTL in seconds of the mirrored HEALTHCHECK check; the agent refreshes it every third",
        metavar="SECONDS",
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
        listen_address,
        "serve /health and /metrics on HOST:PORT or :PORT (empty: off)",
        metavar="ADDR",
    )
    log_level: str = option(
        "info",
        "REGISTRATOR_LOG_LEVEL",
        log_level_name,
        "debug, info, warning or error",
        metavar="LEVEL",
    )
    log_format: LogFormat = option(
        LogFormat.TEXT,
        "REGISTRATOR_LOG_FORMAT",
        enum_value(LogFormat),
        "text or json",
        metavar="FORMAT",
    )
    docker_host: str = option(
        "unix:///var/run/docker.sock",
        "DOCKER_HOST",
        docker_host_url,
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
        stripped,
        "ACL token",
        repr=False,
        metavar="TOKEN",
    )
    consul_token_file: str = option(
        "",
        "CONSUL_HTTP_TOKEN_FILE",
        stripped,
        "file holding the ACL token",
        metavar="PATH",
    )
    consul_cacert: str = option(
        "",
        "CONSUL_CACERT",
        stripped,
        "CA bundle to verify Consul's certificate",
        metavar="PATH",
    )
    consul_client_cert: str = option(
        "",
        "CONSUL_CLIENT_CERT",
        stripped,
        "client certificate for Consul",
        metavar="PATH",
    )
    consul_client_key: str = option(
        "",
        "CONSUL_CLIENT_KEY",
        stripped,
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
