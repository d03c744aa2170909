"""Pure: SERVICE_* metadata of a container, as gliderlabs/registrator users write it.

Precedence for one key, highest first (a port-scoped entry is more specific than any
container-wide one, and a label is more deliberate than an env var baked into an image):

    label SERVICE_<port>_KEY > env SERVICE_<port>_KEY > label SERVICE_KEY > env SERVICE_KEY
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from registrator.model import OWNER_META_KEYS, Container, Problem

PREFIX = "SERVICE_"

# Keys with a meaning of their own; everything else not excluded below becomes Consul Meta.
RESERVED_KEYS = frozenset({"NAME", "ID", "TAGS", "IGNORE", "PORT", "NETWORK", "IP", "WEIGHT"})
NON_META_PREFIXES = ("CHECK_", "CONNECT_")
NON_META_KEYS = frozenset({"CHECK", "CONNECT"})

_PORT_SCOPED = re.compile(r"^(\d+)_(.+)$")
_META_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
META_MAX_KEYS = 64
META_MAX_KEY_LENGTH = 128
META_MAX_VALUE_LENGTH = 512

_FALSE_WORDS = frozenset({"false", "0", "no"})


@dataclass(frozen=True)
class Metadata:
    """Merged SERVICE_* values for one container port (or the whole container)."""

    values: Mapping[str, str]
    # For each key, the exact label/env name it came from, so messages point at what the
    # user wrote ("label SERVICE_80_CHECK_TTL"), not at our normalised key.
    origins: Mapping[str, str]
    port_scoped: frozenset[str]

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def origin(self, key: str) -> str:
        return self.origins.get(key, f"SERVICE_{key}")


def service_metadata(container: Container, port: int | None) -> Metadata:
    """SERVICE_* values that apply to `port` (container-wide only when port is None)."""
    ranked: dict[str, tuple[int, str, str]] = {}
    for rank_base, source, kind in ((0, container.env, "env"), (1, container.labels, "label")):
        for raw_key, value in source.items():
            if not raw_key.startswith(PREFIX):
                continue
            rest = raw_key[len(PREFIX) :].upper()
            if not rest:
                continue
            rank = rank_base
            scoped = _PORT_SCOPED.match(rest)
            if scoped:
                # Compared as text: int() refuses digit strings over 4300 long and reads
                # non-ASCII digits ("٨٠") that no Docker port is written in.
                if port is None or scoped.group(1).lstrip("0") != str(port):
                    continue
                rest = scoped.group(2)
                rank += 2
            elif rest.isdigit():
                # "SERVICE_80" alone names no key; reported by `problems_with_keys`.
                continue
            current = ranked.get(rest)
            if current is None or rank > current[0]:
                ranked[rest] = (rank, value, f"{kind} {raw_key}")
    return Metadata(
        values={key: value for key, (_, value, _) in ranked.items()},
        origins={key: origin for key, (_, _, origin) in ranked.items()},
        port_scoped=frozenset(key for key, (rank, _, _) in ranked.items() if rank >= 2),
    )


def problems_with_keys(container: Container) -> list[Problem]:
    """Keys that look like ours but cannot mean anything (e.g. `SERVICE_80` with no key)."""
    problems = []
    for kind, source in (("env", container.env), ("label", container.labels)):
        for raw_key in source:
            if raw_key.startswith(PREFIX) and raw_key[len(PREFIX) :].isdigit():
                problems.append(
                    Problem(
                        container.name,
                        f"{kind} {raw_key}",
                        "port-scoped key without a name (expected SERVICE_<port>_<KEY>)",
                    )
                )
    return problems


def is_true_ignore(value: str) -> bool:
    """gliderlabs: any non-empty SERVICE_IGNORE ignores, except explicit negatives."""
    stripped = value.strip()
    return bool(stripped) and stripped.lower() not in _FALSE_WORDS


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


_TEMPLATE_FIELD = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_INDEX_LABEL = re.compile(r'^index \.Labels "([^"]+)"$')


def expand_template(template: str, container: Container, node: str) -> str:
    """Expand the -tags template for one container (forms validated by settings)."""

    def field_value(match: re.Match[str]) -> str:
        expr = match.group(1)
        simple = {
            ".Name": container.name,
            ".Image": container.image,
            ".Hostname": container.hostname,
            ".Node": node,
        }
        if expr in simple:
            return simple[expr]
        if expr.startswith(".Labels."):
            return container.labels.get(expr[len(".Labels.") :], "")
        indexed = _INDEX_LABEL.match(expr)
        if indexed:
            return container.labels.get(indexed.group(1), "")
        return ""

    return _TEMPLATE_FIELD.sub(field_value, template)


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
