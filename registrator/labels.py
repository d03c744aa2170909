"""Pure: SERVICE_* metadata of a container, as gliderlabs/registrator users write it.

A key applies at one of five scopes. For one container port, the most specific scope that
sets a key wins; at the same scope a label beats an env var (a label is more deliberate than
an env var baked into an image):

    SERVICE_<port>_<proto>_KEY    this port and protocol      (SERVICE_53_udp_NAME)
    SERVICE_<port>_KEY            this port, any protocol     (SERVICE_53_NAME)
    SERVICE_<N>-<M>_<proto>_KEY   a port range and protocol   (SERVICE_10000-20000_udp_IGNORE)
    SERVICE_<N>-<M>_KEY           a port range                (SERVICE_10000-20000_IGNORE)
    SERVICE_KEY                   the whole container

Among ranges that both hold the port, the narrower one is the more specific.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from registrator.model import OWNER_META_KEYS, Container, Problem
from registrator.vocabulary import (
    bool_word,
    expand_template,
    port_number,
    template_problems,
    whole_number,
)

PREFIX = "SERVICE_"

# Keys with a meaning of their own; everything else not excluded below becomes Consul Meta.
# Each is in README's label reference; one that cannot be honoured is reported, never silent.
RESERVED_KEYS = frozenset(
    {
        "NAME",
        "ID",
        "TAGS",
        "IGNORE",
        "PORT",
        "NETWORK",
        "IP",
        "WEIGHT",
        "WEIGHT_WARNING",
        "ENABLE_TAG_OVERRIDE",
    }
)
# Keys read for the container as a whole: a port-scoped one has nothing to apply to.
CONTAINER_WIDE_KEYS = frozenset({"PORT", "NETWORK"})
NON_META_PREFIXES = ("CHECK_", "CONNECT_")
NON_META_KEYS = frozenset({"CHECK", "CONNECT"})
PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})
# The key that carries a per-container address, honoured only when the operator names it
# with -useIpFromLabel (a container must not choose where clients are sent by itself).
IP_KEY = "IP"
IP_OPT_IN = "SERVICE_IP"

# <port> or <N>-<M>, an optional protocol, then the key. The range's second half is read
# loosely ([^_]*) so that "SERVICE_10-x_IGNORE" is reported as a malformed range instead of
# quietly becoming a Meta key.
_SCOPED = re.compile(r"^(\d+)(?:-([^_]*))?(?:_(TCP|UDP|SCTP)(?=_))?(?:_(.*))?$", re.IGNORECASE)
_META_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
META_MAX_KEYS = 64
META_MAX_KEY_LENGTH = 128
META_MAX_VALUE_LENGTH = 512
WEIGHT_MAX = 65535  # DNS SRV weights are 16-bit

# Specificity levels, lowest first.
_WIDE, _RANGE, _RANGE_PROTO, _PORT, _PORT_PROTO = range(5)


@dataclass(frozen=True)
class ScopedKey:
    """One SERVICE_* name taken apart: the key and the ports (and protocol) it applies to.

    `low == high == 0` is container-wide; `protocol` is "" for any protocol, else lower case.
    `problem` says why a name that looks scoped cannot apply anywhere.
    """

    key: str
    low: int = 0
    high: int = 0
    protocol: str = ""
    ranged: bool = False
    problem: str = ""

    @property
    def level(self) -> int:
        if not self.high:
            return _WIDE
        if self.ranged:
            return _RANGE_PROTO if self.protocol else _RANGE
        return _PORT_PROTO if self.protocol else _PORT

    def applies(self, port: int | None, protocol: str) -> bool:
        if self.problem:
            return False
        if not self.high:
            return True
        if port is None or not self.low <= port <= self.high:
            return False
        return not self.protocol or self.protocol == protocol.lower()


def scoped_key(raw_key: str) -> ScopedKey | None:
    """Take `SERVICE_...` apart; None for names that are not ours (or have nothing after it)."""
    if not raw_key.startswith(PREFIX):
        return None
    rest = raw_key[len(PREFIX) :]
    if not rest:
        return None
    match = _SCOPED.match(rest)
    if match is None:
        return ScopedKey(rest.upper())
    first, second, protocol, key = match.groups()
    protocol = (protocol or "").lower()
    key = (key or "").upper()
    if not key or (key in PROTOCOLS and not protocol):
        return ScopedKey(
            "",
            problem="port-scoped key without a name (expected SERVICE_<port>_<KEY>, "
            "SERVICE_<port>_<proto>_<KEY> or SERVICE_<N>-<M>_<KEY>)",
        )
    if key in CONTAINER_WIDE_KEYS:
        return ScopedKey(
            key, problem=f"SERVICE_{key} applies to the whole container, not to ports; ignored"
        )
    if second is None:
        port = port_number(first)
        if port is None:
            return ScopedKey(key, problem=f"port {first} is not 1-65535; ignored")
        return ScopedKey(key, port, port, protocol)
    low, high = port_number(first), port_number(second)
    if low is None or high is None or low > high:
        return ScopedKey(
            key,
            problem=f"{first}-{second} is not a port range N-M with 1 <= N <= M <= 65535; ignored",
        )
    return ScopedKey(key, low, high, protocol, ranged=True)


@dataclass(frozen=True)
class Metadata:
    """Merged SERVICE_* values for one container port (or the whole container)."""

    values: Mapping[str, str]
    # For each key, the exact label/env name it came from, so messages point at what the
    # user wrote ("label SERVICE_80_CHECK_TTL"), not at our normalised key.
    origins: Mapping[str, str]
    # Keys set for exactly this port (not a range, not the whole container): such a NAME or
    # ID is meant for one registration and is not suffixed with the port.
    port_scoped: frozenset[str]

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def origin(self, key: str) -> str:
        return self.origins.get(key, f"SERVICE_{key}")


def service_metadata(container: Container, port: int | None, protocol: str = "tcp") -> Metadata:
    """SERVICE_* values that apply to `port`/`protocol` (container-wide only when port is None)."""
    ranked: dict[str, tuple[tuple[int, int, int, int], str, str, int]] = {}
    for kind_rank, source, kind in ((0, container.env, "env"), (1, container.labels, "label")):
        for raw_key, value in source.items():
            scoped = scoped_key(raw_key)
            if scoped is None or not scoped.applies(port, protocol):
                continue
            # Most specific first; at equal specificity the label, then the lower range start
            # so that the answer never depends on dict order.
            rank = (scoped.level, scoped.low - scoped.high, kind_rank, -scoped.low)
            current = ranked.get(scoped.key)
            if current is None or rank > current[0]:
                ranked[scoped.key] = (rank, value, f"{kind} {raw_key}", scoped.level)
    return Metadata(
        values={key: value for key, (_, value, _, _) in ranked.items()},
        origins={key: origin for key, (_, _, origin, _) in ranked.items()},
        port_scoped=frozenset(key for key, (*_, level) in ranked.items() if level >= _PORT),
    )


def problems_with_keys(container: Container) -> list[Problem]:
    """Keys that look like ours but cannot mean anything (e.g. `SERVICE_80` with no key)."""
    problems = []
    for kind, source in (("env", container.env), ("label", container.labels)):
        for raw_key in source:
            scoped = scoped_key(raw_key)
            if scoped is None:
                continue
            if scoped.problem:
                problems.append(Problem(container.name, f"{kind} {raw_key}", scoped.problem))
    return problems


def own_key_problems(problems: Iterable[Problem]) -> list[Problem]:
    """The problems with a label or env var the container carries ("label SERVICE_NETWORK",
    "env SERVICE_80", a -useIpFromLabel label), not with an option of the operator's: those a
    service shows in Consul (its misconfigured check), as its own SERVICE_* values do."""
    return [problem for problem in problems if problem.key.startswith(("label ", "env "))]


def flag(metadata: Metadata, key: str, container: Container) -> tuple[bool, list[Problem]]:
    """A yes/no key: absent or blank is no; a word that is neither is reported and ignored."""
    raw = metadata.get(key)
    if not raw.strip():
        return False, []
    value = bool_word(raw)
    if value is None:
        reason = f"{raw.strip()!r} is not true/false, yes/no, on/off or 1/0; ignored"
        return False, [Problem(container.name, metadata.origin(key), reason)]
    return value, []


def weights(
    metadata: Metadata, container: Container
) -> tuple[tuple[int, int] | None, list[Problem]]:
    """SERVICE_WEIGHT / SERVICE_WEIGHT_WARNING → Consul `Weights` (Passing, Warning).

    None when neither is set, so Consul keeps its defaults (1, 1); a missing half takes 1.
    """
    values = [1, 1]
    problems: list[Problem] = []
    given = False
    for index, key in enumerate(("WEIGHT", "WEIGHT_WARNING")):
        raw = metadata.get(key).strip()
        if not raw:
            continue
        number = whole_number(raw, 1, WEIGHT_MAX)
        if number is None:
            reason = (
                f"{raw!r} is not a whole number from 1 to {WEIGHT_MAX}; Consul's default 1 used"
            )
            problems.append(Problem(container.name, metadata.origin(key), reason))
            continue
        values[index] = number
        given = True
    return ((values[0], values[1]) if given else None), problems


@dataclass(frozen=True)
class ServiceFields:
    """What SERVICE_* sets on one registration besides name, id, address, checks and Meta."""

    tags: list[str]  # SERVICE_TAGS, templates filled in
    weights: tuple[int, int] | None  # Consul Weights (Passing, Warning); None: Consul's (1, 1)
    enable_tag_override: bool
    problems: list[Problem]


def service_fields(metadata: Metadata, container: Container, node: str) -> ServiceFields:
    """SERVICE_TAGS (templates as in -tags), SERVICE_WEIGHT*, SERVICE_ENABLE_TAG_OVERRIDE."""
    problems = [
        Problem(container.name, metadata.origin("TAGS"), f"{reason}; that field expands to nothing")
        for reason in template_problems(metadata.get("TAGS"))
    ]
    tags = parse_tags(expand_template(metadata.get("TAGS"), container, node))
    service_weights, weight_problems = weights(metadata, container)
    tag_override, override_problems = flag(metadata, "ENABLE_TAG_OVERRIDE", container)
    return ServiceFields(
        tags, service_weights, tag_override, problems + weight_problems + override_problems
    )


def address_override(
    metadata: Metadata, container: Container, opt_in: str
) -> tuple[str, list[Problem]]:
    """SERVICE_IP for this port, when the operator allowed it with `-useIpFromLabel SERVICE_IP`.

    CIDR notation (as IPAM labels write it) gives its address part. Without the opt-in the
    key is refused with a warning, never silently dropped.
    """
    raw = metadata.get(IP_KEY).strip()
    if not raw:
        return "", []
    origin = metadata.origin(IP_KEY)
    if opt_in != IP_OPT_IN:
        reason = (
            "ignored: a container sets its own address only when the operator allows it "
            f"with -useIpFromLabel {IP_OPT_IN}"
        )
        return "", [Problem(container.name, origin, reason)]
    try:
        return str(ipaddress.ip_address(raw.split("/", 1)[0])), []
    except ValueError:
        return "", [Problem(container.name, origin, f"{raw!r} is not an IP address; ignored")]


def is_true_ignore(value: str) -> bool:
    """gliderlabs: any non-empty SERVICE_IGNORE ignores, except a false word (no, off, 0, ...)."""
    return bool(value.strip()) and bool_word(value) is not False


def parse_tags(text: str) -> list[str]:
    """Comma-separated tags; `\\,` is a literal comma; trimmed; no empties; no duplicates."""
    tags: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] == ",":
            current.append(",")
            index += 2
            continue
        if char == ",":
            tags.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    tags.append("".join(current))
    return unique([tag.strip() for tag in tags if tag.strip()])


def unique(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def service_meta(metadata: Metadata, container: Container) -> tuple[dict[str, str], list[Problem]]:
    """Other SERVICE_<X> keys → Consul Meta (lower-cased); invalid ones are reported."""
    meta: dict[str, str] = {}
    problems: list[Problem] = []
    for key in sorted(metadata.values):
        if key in RESERVED_KEYS or key in NON_META_KEYS or key.startswith(NON_META_PREFIXES):
            continue
        value = metadata.values[key]
        meta_key = key.lower()
        origin = metadata.origin(key)
        reason = ""
        if not _META_KEY.fullmatch(meta_key):
            reason = "not a valid Consul meta key (letters, digits, '_' and '-' only)"
        elif len(meta_key) > META_MAX_KEY_LENGTH:
            reason = f"meta key longer than {META_MAX_KEY_LENGTH} characters"
        elif meta_key.startswith("consul-"):
            reason = "meta keys starting with 'consul-' are reserved by Consul"
        elif meta_key in OWNER_META_KEYS:
            reason = "meta key is reserved by registrator for ownership"
        elif len(value.encode("utf-8")) > META_MAX_VALUE_LENGTH:
            # Consul counts bytes (Go string length), not characters.
            reason = f"meta value longer than {META_MAX_VALUE_LENGTH} characters"
        elif len(meta) >= META_MAX_KEYS - len(OWNER_META_KEYS):
            reason = f"more than {META_MAX_KEYS - len(OWNER_META_KEYS)} meta keys"
        if reason:
            problems.append(Problem(container.name, origin, f"skipped: {reason}"))
            continue
        meta[meta_key] = value
    return meta, problems
