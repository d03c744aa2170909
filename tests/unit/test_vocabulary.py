"""The words options and labels share: booleans, port numbers, the tags template grammar."""

from __future__ import annotations

import pytest

from registrator.vocabulary import (
    FALSE_WORDS,
    TRUE_WORDS,
    bool_word,
    parse_bool,
    port_number,
    template_problems,
    validate_template,
    whole_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *(pytest.param(word, True, id=f"true word {word}") for word in sorted(TRUE_WORDS)),
        *(pytest.param(word, False, id=f"false word {word}") for word in sorted(FALSE_WORDS)),
        pytest.param(" OFF ", False, id="case and padding"),
        pytest.param("True", True, id="capitalised"),
        pytest.param("", None, id="empty"),
        pytest.param("maybe", None, id="other word"),
        pytest.param("2", None, id="other number"),
        pytest.param("yes please", None, id="sentence"),
    ],
)
def test_bool_word(text: str, expected: bool | None) -> None:
    assert bool_word(text) is expected


def test_the_words_are_the_ones_options_and_labels_both_read() -> None:
    assert {"off", "false", "no", "0"} <= FALSE_WORDS
    assert not TRUE_WORDS & FALSE_WORDS


def test_parse_bool_refuses_other_words() -> None:
    assert parse_bool("off") is False
    with pytest.raises(ValueError, match="'maybe' is not a boolean"):
        parse_bool("maybe")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1", 1, id="lowest"),
        pytest.param("65535", 65535, id="highest"),
        pytest.param(" 80 ", 80, id="padded"),
        pytest.param("0080", 80, id="leading zeros"),
        pytest.param("0", None, id="zero"),
        pytest.param("65536", None, id="past 65535"),
        pytest.param("-1", None, id="negative"),
        pytest.param("8o", None, id="letter"),
        pytest.param("٨٠", None, id="non-ASCII digits"),
        pytest.param("9" * 5000, None, id="huge"),
        pytest.param("", None, id="empty"),
    ],
)
def test_port_number(text: str, expected: int | None) -> None:
    assert port_number(text) == expected


@pytest.mark.parametrize(
    ("text", "low", "high", "expected"),
    [
        pytest.param("0", 0, 9, 0, id="low end"),
        pytest.param("9", 0, 9, 9, id="high end"),
        pytest.param("10", 0, 9, None, id="above"),
        pytest.param("0", 1, 9, None, id="below"),
        pytest.param("+1", 0, 9, None, id="sign"),
        pytest.param("²", 0, 9, None, id="superscript digit"),
    ],
)
def test_whole_number(text: str, low: int, high: int, expected: int | None) -> None:
    assert whole_number(text, low, high) == expected


@pytest.mark.parametrize(
    ("template", "problems"),
    [
        pytest.param("", [], id="empty"),
        pytest.param("a,b", [], id="no fields"),
        pytest.param(
            "{{.Name}},{{ .Image }},{{.Hostname}},{{.Node}},"
            '{{.Labels.a.b-c}},{{index .Labels "x y"}}',
            [],
            id="every known field",
        ),
        pytest.param("{{.Env.HOME}}", ["unknown template field {{.Env.HOME}}"], id="unknown"),
        pytest.param("{{.Name}", ["unbalanced {{ }} in template"], id="unbalanced"),
        pytest.param(
            "{{.Nope}},{{.Name",
            ["unknown template field {{.Nope}}", "unbalanced {{ }} in template"],
            id="both",
        ),
    ],
)
def test_template_problems(template: str, problems: list[str]) -> None:
    got = template_problems(template)
    assert len(got) == len(problems)
    assert all(got_one.startswith(want) for got_one, want in zip(got, problems, strict=True))
    if problems:
        with pytest.raises(ValueError, match="template"):
            validate_template(template)
    else:
        assert validate_template(f" {template} ") == template
