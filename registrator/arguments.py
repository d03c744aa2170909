"""argv and an environment mapping → what to do (run, help, version) with which Settings.

Pure: the caller hands in argv and the environment (only the CLI touches os.environ), and
every problem is a ConfigError whose message names the option, so the entry point can print one
line and exit 2. Flags and variables are looked up in settings.OPTIONS; what is here besides
is the registry URI, the CONSUL_HTTP_ADDR fallback and the checks that span several options.

Flags follow Go's `flag` package, because users paste gliderlabs/registrator command lines:
`-internal`, `-ip 10.0.0.1`, `-ip=10.0.0.1`, `-internal=false`; `--long-form` is accepted too, and
unlike Go's parser, options may follow the positional URI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registrator.option_values import parse_consul_http_addr, parse_consul_uri
from registrator.settings import OPTIONS, ConfigError, Option, Settings

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
