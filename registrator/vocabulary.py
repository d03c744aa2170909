"""Pure: the words every input shares — booleans, port numbers, the tags template grammar.

Options (flags, environment) and container metadata (labels, env) are read with the same
words, so `off` means false in `-internal=off` and in `SERVICE_CHECK_TCP=off` alike, and a
template that `-tags` accepts works the same in `SERVICE_TAGS`.
"""

from __future__ import annotations

import re

from registrator.model import Container

TRUE_WORDS = frozenset({"1", "t", "true", "y", "yes", "on"})
FALSE_WORDS = frozenset({"0", "f", "false", "n", "no", "off"})


def bool_word(text: str) -> bool | None:
    """True or False for a boolean word (any case, padded), None for anything else."""
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    return None


def parse_bool(text: str) -> bool:
    """A boolean word, or ValueError naming the words accepted."""
    value = bool_word(text)
    if value is None:
        raise ValueError(f"{text!r} is not a boolean (use true/false, yes/no, on/off or 1/0)")
    return value


def whole_number(text: str, low: int, high: int) -> int | None:
    """A whole number from `low` to `high` written in ASCII digits (no sign), else None.

    ASCII and short: int() reads non-ASCII digits ("٨٠", "²") that Docker and Consul do not,
    and raises on digit strings over 4300 long.
    """
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit() and len(stripped) <= len(str(high))):
        return None
    number = int(stripped)
    return number if low <= number <= high else None


def port_number(text: str) -> int | None:
    """A TCP/UDP port 1-65535, else None."""
    return whole_number(text, 1, 65535)


# --- the tags template: Go-template-like placeholders as gliderlabs' -tags wrote them.

_TEMPLATE_FIELD = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_INDEX_LABEL = re.compile(r'^index \.Labels "([^"]+)"$')
_LABEL_FIELD = re.compile(r"^\.Labels\.([A-Za-z0-9_.\-]+)$")
_SIMPLE_FIELDS = (".Name", ".Image", ".Hostname", ".Node")
KNOWN_FIELDS = '.Name .Image .Hostname .Node .Labels.KEY index .Labels "KEY"'


def _label_key(expr: str) -> str | None:
    match = _LABEL_FIELD.match(expr) or _INDEX_LABEL.match(expr)
    return match.group(1) if match else None


def template_problems(text: str) -> list[str]:
    """Why `text` is not a valid tags template (empty when it is)."""
    problems = [
        f"unknown template field {{{{{match.group(1)}}}}} (known: {KNOWN_FIELDS})"
        for match in _TEMPLATE_FIELD.finditer(text)
        if match.group(1) not in _SIMPLE_FIELDS and _label_key(match.group(1)) is None
    ]
    if text.count("{{") != text.count("}}"):
        problems.append("unbalanced {{ }} in template")
    return problems


def validate_template(text: str) -> str:
    """The template, stripped; ValueError with the first problem if it has one."""
    problems = template_problems(text)
    if problems:
        raise ValueError(problems[0])
    return text.strip()


def expand_template(template: str, container: Container, node: str) -> str:
    """Fill the placeholders for one container; unknown fields and missing labels give ""."""

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
        key = _label_key(expr)
        return container.labels.get(key, "") if key is not None else ""

    return _TEMPLATE_FIELD.sub(field_value, template)
