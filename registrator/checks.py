"""Pure: SERVICE_CHECK_* metadata → Consul check definitions.

Every check key present makes its own check (gliderlabs allowed one). Check ids are derived
from the service id and the kind, so a resync re-sends the same id and Consul keeps the
check's status instead of resetting it.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace

from registrator.labels import Metadata, unique
from registrator.model import Check, CheckKind, Container, Problem, Service
from registrator.settings import Settings
from registrator.vocabulary import bool_word, whole_number

DEFAULT_INTERVAL = "10s"
SCRIPT_TIMEOUT_SECONDS = 30.0
# Floors Consul applies by itself, silently (Consul agent: checks.MinInterval; the reaper's
# 1 minute minimum of DeregisterCriticalServiceAfter, /v1/agent/check/register): a value below
# one is raised to it here, with a warning, so that the registration says what Consul does.
# The interval floor also bounds script checks: each run is a docker exec (two to three API
# calls), and a 1 ms interval would flood dockerd.
MIN_INTERVAL_SECONDS = 1.0
MIN_DEREGISTER_AFTER_SECONDS = 60.0
_FLOORS = {
    "CHECK_INTERVAL": (
        MIN_INTERVAL_SECONDS,
        "the shortest interval Consul runs a check at (and registrator a script)",
    ),
    "CHECK_DEREGISTER_AFTER": (
        MIN_DEREGISTER_AFTER_SECONDS,
        "the shortest time Consul waits before it deregisters a critical service",
    ),
}

# Go's time.ParseDuration, as Consul reads durations: "10s", "1m30s", "1.5h", "250ms".
# A bare "0" is the only unitless form, and only on its own ("00" and "1s0" are errors).
# ASCII digits only: Go's parser (and so Consul) refuses "٣s", which \d alone would accept.
_DURATION = re.compile(r"^(?:0|(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+)$", re.ASCII)
# Every SERVICE_CHECK_* key build_checks reads. Any other is a typo or another tool's key
# (gliderlabs' SERVICE_CHECK_CMD): the check it meant is missing, so it counts as malformed.
CHECK_KEYS = frozenset(
    {
        *(f"CHECK_{kind}" for kind in ("HTTP", "HTTPS", "TCP", "GRPC", "TTL", "SCRIPT")),
        *(f"CHECK_{kind}_{part}" for kind in ("HTTP", "HTTPS") for part in ("METHOD", "HEADER")),
        *("CHECK_HTTP_BODY", "CHECK_HTTPS_BODY", "CHECK_METHOD", "CHECK_HEADER", "CHECK_BODY"),
        *("CHECK_TLS_SKIP_VERIFY", "CHECK_GRPC_USE_TLS", "CHECK_DOCKER_HEALTH"),
        *("CHECK_INTERVAL", "CHECK_TIMEOUT", "CHECK_DEREGISTER_AFTER", "CHECK_INITIAL_STATUS"),
        *("CHECK_SUCCESS_BEFORE_PASSING", "CHECK_FAILURES_BEFORE_CRITICAL"),
    }
)
_HEADER_LINE = re.compile(r"^\s*([^:\s][^:]*):\s*(.*)$")
_INITIAL_STATUSES = frozenset({"passing", "warning", "critical"})


def is_duration(text: str) -> bool:
    return bool(_DURATION.match(text.strip()))


@dataclass(frozen=True)
class Target:
    """Where a check probes: the registered address and port of the service."""

    address: str
    port: int


def check_id(service_id: str, kind: CheckKind | str) -> str:
    return f"service:{service_id}:{kind}"


def _host_port(target: Target) -> str:
    host = f"[{target.address}]" if ":" in target.address else target.address
    return f"{host}:{target.port}"


def _url(scheme: str, value: str, target: Target) -> str:
    if value.startswith(("http://", "https://")):
        return value
    path = value if value.startswith("/") else f"/{value}"
    return f"{scheme}://{_host_port(target)}{path}"


def _parse_headers(text: str) -> dict[str, list[str]]:
    """JSON (`{"X-A": "1"}`, `{"X-A": ["1", "2"]}`) or `Name: value` pairs split by newline/`;`."""
    stripped = text.strip()
    if stripped.startswith("{"):
        data = json.loads(stripped)
        if not isinstance(data, dict):
            raise ValueError("header JSON must be an object")
        headers: dict[str, list[str]] = {}
        for key, value in data.items():
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) for v in values):
                raise ValueError(f"header {key!r}: values must be strings")
            headers[str(key)] = list(values)
        return headers
    headers = {}
    for line in re.split(r"[\n;]", stripped):
        if not line.strip():
            continue
        match = _HEADER_LINE.match(line)
        if not match:
            raise ValueError(f"{line.strip()!r} is not 'Name: value'")
        headers.setdefault(match.group(1).strip(), []).append(match.group(2).strip())
    return headers


@dataclass(frozen=True)
class ChecksResult:
    checks: tuple[Check, ...]
    problems: tuple[Problem, ...]
    script: str = ""
    script_interval: float = 0.0  # seconds between runs of `script` (SERVICE_CHECK_INTERVAL)
    script_timeout: float = 0.0  # seconds one run may take (SERVICE_CHECK_TIMEOUT)


# Go's time.Duration is an int64 of nanoseconds: Consul refuses anything longer.
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
# RFC 9110 token: what Go's net/http accepts as a method (anything else fails every probe).
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOST_PORT = re.compile(r"^(?:\[[^\]]+\]|[^:\s]+):(\d{1,5})$")
MISCONFIGURED_TTL = "24h"


def is_off(value: str) -> bool:
    """The shared yes/no words: `off`, `false`, `no`, `0` turn a check key off everywhere."""
    return bool_word(value) is False


def build_checks(
    metadata: Metadata,
    service_id: str,
    target: Target,
    container: Container,
    settings: Settings,
    node_heartbeat: str = "",
    flaws: Sequence[Problem] = (),
    in_container: bool = True,
) -> ChecksResult:
    """The checks of one service; options read: -docker-health, -docker-health-initial, -ttl,
    -node-reap-after. `node_heartbeat` is the id of the node's heartbeat service to alias
    (empty: none). `flaws`: the other SERVICE_* values of this service that could not be
    honoured (labels.py, connect.py), already reported by the caller. `in_container` False: the
    registration has no container to run SERVICE_CHECK_SCRIPT in (a Swarm service's VIP).

    A malformed key never leaves the service unchecked (issue 12): the checks are built as if
    that key were absent, and a critical `misconfigured` check names the key, the value and
    why, so the service stays critical in Consul until the label is fixed. `flaws` alone make
    that check `warning`: the service serves as registered, only not as labelled, so it stays
    in DNS answers while the Consul UI shows why.
    """
    checks: list[Check] = []
    problems: list[Problem] = []
    broken: list[str] = []

    def note(key: str, reason: str) -> None:
        problems.append(Problem(container.name, metadata.origin(key), reason))

    def malformed(key: str, why: str, instead: str) -> None:
        """`key`'s value cannot be used; `instead`: what the checks do without it."""
        value = metadata.get(key).strip()
        reason = f"{value!r} {why}; {instead}"
        note(key, f"{reason}; the service is critical until it is fixed")
        broken.append(f"{metadata.origin(key)}: {reason}")

    def duration(key: str, default: str = "", positive: bool = False) -> str:
        """The duration under `key`; `default` if absent or malformed (malformed is reported);
        one below the floor Consul applies to `key` (_FLOORS) is raised to it, and said.

        A bare whole number is read as seconds, which is what users writing `10` mean.
        """
        value = metadata.get(key).strip()
        if not value:
            return default
        instead = f"using {default}" if default else "left unset"
        if value.isascii() and value.isdigit() and value != "0" and len(value) <= 9:
            note(key, f"{value!r} has no unit; read as {int(value)}s (write {int(value)}s)")
            value = f"{int(value)}s"
        if not is_duration(value):
            malformed(key, "is not a duration like 10s, 1m or 500ms", instead)
        elif duration_seconds(value) > MAX_DURATION_SECONDS:
            malformed(key, "is longer than Consul accepts (2562047h)", instead)
        elif positive and duration_seconds(value) <= 0:
            malformed(key, "must be more than 0", instead)
        elif key in _FLOORS and duration_seconds(value) < _FLOORS[key][0]:
            floor, why = _FLOORS[key]
            lowest = _go_duration(int(floor))
            note(key, f"{value!r} is shorter than {lowest}, {why}; using {lowest}")
            return lowest
        else:
            return value
        return default

    def switch(key: str) -> bool:
        """A yes/no key; absent, off or malformed (reported) is no."""
        value = metadata.get(key).strip()
        if value and bool_word(value) is None:
            malformed(key, "is not true/false, yes/no, on/off or 1/0", "taken as false")
        return bool_word(value) is True

    for key in sorted(metadata.values):
        if (key == "CHECK" or key.startswith("CHECK_")) and key not in CHECK_KEYS:
            malformed(key, "is under a check key registrator does not know", "ignored")

    # Options shared by every probing check.
    interval = duration("CHECK_INTERVAL", DEFAULT_INTERVAL, positive=True)
    # 0 is no timeout to Consul's probes but its default (10 s), and no deregistration at all:
    # never what a user writing 0s means, so it is refused like a 0s interval.
    timeout = duration("CHECK_TIMEOUT", positive=True)
    deregister_after = duration("CHECK_DEREGISTER_AFTER", positive=True)
    common: dict[str, object] = {}
    if timeout:
        common["Timeout"] = timeout
    if deregister_after:
        common["DeregisterCriticalServiceAfter"] = deregister_after
    initial = metadata.get("CHECK_INITIAL_STATUS").strip().lower()
    if initial:
        if initial in _INITIAL_STATUSES:
            common["Status"] = initial
        else:
            malformed(
                "CHECK_INITIAL_STATUS",
                "is not passing, warning or critical",
                "checks start critical (Consul's default)",
            )
    for key, field in (
        ("CHECK_SUCCESS_BEFORE_PASSING", "SuccessBeforePassing"),
        ("CHECK_FAILURES_BEFORE_CRITICAL", "FailuresBeforeCritical"),
    ):
        raw = metadata.get(key).strip()
        if raw:
            number = whole_number(raw, 0, 999_999_999)
            if number is not None:
                common[field] = number
            else:
                malformed(key, "is not a non-negative integer", "left unset (0)")

    def add(kind: CheckKind, name: str, fields: dict[str, object], probing: bool = True) -> None:
        if probing:
            fields = {"Interval": interval, **common, **fields}
        checks.append(Check(check_id(service_id, kind), kind, name, fields))

    for kind, check_kind in (("HTTP", CheckKind.HTTP), ("HTTPS", CheckKind.HTTPS)):
        value = metadata.get(f"CHECK_{kind}").strip()
        if not value or is_off(value):
            continue
        fields: dict[str, object] = {"HTTP": _url(check_kind.value, value, target)}
        method_key = (
            f"CHECK_{kind}_METHOD" if metadata.get(f"CHECK_{kind}_METHOD") else "CHECK_METHOD"
        )
        method = metadata.get(method_key).strip()
        if method and _METHOD.match(method):
            fields["Method"] = method.upper()
        elif method:
            malformed(method_key, "is not an HTTP method", f"the {kind} check uses GET")
        header_key = (
            f"CHECK_{kind}_HEADER" if metadata.get(f"CHECK_{kind}_HEADER") else "CHECK_HEADER"
        )
        header_text = metadata.get(header_key)
        if header_text.strip():
            try:
                fields["Header"] = _parse_headers(header_text)
            except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep JSON
                malformed(header_key, f"is not a header list ({err})", f"{kind} sent without it")
        body = metadata.get(f"CHECK_{kind}_BODY", metadata.get("CHECK_BODY"))
        if body:
            fields["Body"] = body
        if switch("CHECK_TLS_SKIP_VERIFY"):
            fields["TLSSkipVerify"] = True
        add(check_kind, f"{kind} {fields['HTTP']}", fields)

    tcp = metadata.get("CHECK_TCP").strip()
    if tcp and not is_off(tcp):
        if bool_word(tcp):
            add(CheckKind.TCP, f"TCP {_host_port(target)}", {"TCP": _host_port(target)})
        elif (match := _HOST_PORT.match(tcp)) and 0 < int(match.group(1)) < 65536:
            add(CheckKind.TCP, f"TCP {tcp}", {"TCP": tcp})
        else:
            malformed("CHECK_TCP", "is neither true/false nor host:port", "no TCP check")

    grpc = metadata.get("CHECK_GRPC").strip()
    if grpc and not is_off(grpc):
        service = "" if bool_word(grpc) else grpc
        address = _host_port(target) + (f"/{service}" if service else "")
        fields = {"GRPC": address}
        if switch("CHECK_GRPC_USE_TLS"):
            fields["GRPCUseTLS"] = True
        add(CheckKind.GRPC, f"gRPC {address}", fields)

    ttl_value = metadata.get("CHECK_TTL").strip()
    if ttl_value and not is_off(ttl_value):
        ttl = duration("CHECK_TTL", positive=True)
        if ttl:
            fields = {"TTL": ttl, **{k: v for k, v in common.items() if k != "Timeout"}}
            add(CheckKind.TTL, f"TTL {ttl} (application heartbeats)", fields, probing=False)

    script = with_service_address(metadata.get("CHECK_SCRIPT").strip(), target)
    script_interval = script_timeout = 0.0
    if script and is_off(script):
        script = ""
    if script:
        try:
            script_command(script)
        except ValueError as err:
            malformed("CHECK_SCRIPT", f"cannot be split into arguments ({err})", "no script")
            script = ""
    if script and not in_container:
        malformed("CHECK_SCRIPT", "cannot run at a VIP registration (no container)", "no script")
        script = ""
    if script:
        # Run by registrator inside the container (docker exec) and reported to this TTL
        # check, so Consul needs no enable_script_checks and no access to the container.
        fields = {"TTL": _script_ttl(interval), "Notes": f"registrator runs: {script}"}
        fields.update({k: v for k, v in common.items() if k not in {"Timeout"}})
        add(CheckKind.SCRIPT, "Script in container", fields, probing=False)
        script_interval = duration_seconds(interval)
        # Consul's own default for script checks; an exec on a loaded host can take longer
        # than a short interval without the script failing.
        script_timeout = duration_seconds(timeout) if timeout else SCRIPT_TIMEOUT_SECONDS

    health_word = metadata.get("CHECK_DOCKER_HEALTH").strip()
    if health_word and bool_word(health_word) is None:
        malformed("CHECK_DOCKER_HEALTH", "is not true/false, yes/no, on/off or 1/0", "mirrored")
    if settings.docker_health and container.health and not is_off(health_word):
        add(
            CheckKind.DOCKER_HEALTH,
            "Docker HEALTHCHECK",
            {
                # The agent reports every transition, and refreshes an unchanged status
                # every third of the TTL; the TTL only catches a dead agent.
                "TTL": _go_duration(settings.docker_health_ttl),
                "Status": settings.docker_health_initial,
                "Notes": "mirrors the container's Docker HEALTHCHECK",
            },
            probing=False,
        )

    if settings.ttl > 0:
        add(
            CheckKind.HEARTBEAT,
            "registrator heartbeat",
            {"TTL": f"{settings.ttl}s", "Status": "passing"},
            probing=False,
        )
    if node_heartbeat:
        # Consul evaluates the alias itself, on the agent that holds both services: when the
        # node's agent stops beating, every service it registered turns critical at once.
        fields = {
            "AliasService": node_heartbeat,
            "Notes": "critical while the registrator agent that registered this service is not "
            "heartbeating (its node or the agent is down)",
        }
        if settings.node_reap_after:
            fields["DeregisterCriticalServiceAfter"] = f"{settings.node_reap_after}s"
        add(CheckKind.NODE_ALIAS, f"registrator node {node_heartbeat}", fields, probing=False)
    flawed = broken + [f"{flaw.key}: {flaw.reason}" for flaw in flaws]
    if flawed:
        # In its status from its registration on; registrator also sets its output (plan.py).
        # No DeregisterCriticalServiceAfter: Consul would reap the service, and the next
        # resync would register it again.
        add(
            CheckKind.MISCONFIGURED,
            "Malformed check labels" if broken else "Malformed labels",
            {
                "TTL": MISCONFIGURED_TTL,
                "Status": "critical" if broken else "warning",
                "Notes": "; ".join(unique(flawed)),
            },
            probing=False,
        )
    return ChecksResult(tuple(checks), tuple(problems), script, script_interval, script_timeout)


def with_exited_check(service: Service, reason: str) -> Service:
    """`service` as kept for a container that exited: its checks plus a critical `exited`
    check whose Notes give `reason` (any earlier `exited` check replaced). A service with
    no check of registrator's own (none at all, or only ones Consul probes at an address
    that a later container may take) would otherwise stay passing."""
    exited = Check(
        check_id(service.id, CheckKind.EXITED),
        CheckKind.EXITED,
        "Container exited",
        {"TTL": MISCONFIGURED_TTL, "Status": "critical", "Notes": reason},
    )
    kept = tuple(check for check in service.checks if check.kind is not CheckKind.EXITED)
    return replace(service, checks=(*kept, exited))


def _go_duration(seconds: int) -> str:
    """Whole hours or minutes as such ("24h": the payload hash of the default stays as it
    was before the option existed, so an upgrade re-registers nothing)."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# gliderlabs' placeholders (it replaced them before handing the script to Consul). The
# braced form too; `$SERVICE_IPS` or `$SERVICE_PORT_X` are other variables, left alone.
_PLACEHOLDER = re.compile(r"\$(?:\{(SERVICE_IP|SERVICE_PORT)\}|(SERVICE_IP|SERVICE_PORT)(?!\w))")


def with_service_address(script: str, target: Target) -> str:
    """`$SERVICE_IP` / `$SERVICE_PORT` (or `${…}`) → the registered address and port."""
    values = {"SERVICE_IP": target.address, "SERVICE_PORT": str(target.port)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1) or m.group(2)], script)


# Characters that mean something only to a shell: pipes, lists, redirections, expansions,
# globs, comments, grouping. A script without any of them runs the same with or without one.
_SHELL_SYNTAX = frozenset("|&;<>()$`*?[]{}~#!\n")


def script_command(script: str) -> list[str]:
    """The argv registrator execs in the container for SERVICE_CHECK_SCRIPT.

    A script that uses shell syntax runs as `sh -c SCRIPT`, as Consul ran gliderlabs' script
    checks; a plain command runs directly (split as a shell would split it), so it also works
    in images that have no shell. Raises ValueError for unbalanced quotes in a plain command.
    """
    if any(char in _SHELL_SYNTAX for char in script):
        return ["sh", "-c", script]
    return shlex.split(script)


def _script_ttl(interval: str) -> str:
    """Three missed script runs before Consul gives up on the agent reporting."""
    seconds = max(3 * duration_seconds(interval), 30)
    # Fixed-point: `:g` would give "1.08e+06s" for long intervals, which Go cannot parse.
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", re.ASCII)


def duration_seconds(text: str) -> float:
    """Seconds in a Go duration already accepted by `is_duration`."""
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
