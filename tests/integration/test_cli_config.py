"""Every option with a bad value: exit 2 and one stderr line naming it.

The table is `registrator.settings.OPTIONS` itself, so an option added later is covered without
touching this file: its bad value is the first of CANDIDATES the package's own parsing refuses.
An option that refuses none of them must be listed in FREE_TEXT, deliberately.

The flag form runs the real command in a subprocess. The environment-variable form goes
through the same entry point (`registrator.cli.main`) in-process, because a Python start-up per
run is most of this file's time on a two-core runner.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from registrator.arguments import parse_args
from registrator.cli import main, resolve_environment
from registrator.settings import OPTIONS, ConfigError, Option
from tests.helpers_cli import run_cli

CANDIDATES = (
    "maybe",
    "abc",
    "-5",
    "{{.Bogus}}",
    "etcd://127.0.0.1:2379",
    "/nonexistent/registrator-test-file",
)
# Options whose every value means something (names, labels, the token itself).
FREE_TEXT = {"node", "network", "use_ip_from_label", "consul_token"}


def refuses(environ: Mapping[str, str]) -> bool:
    try:
        resolve_environment(parse_args([], environ).settings, environ)
    except ConfigError:
        return True
    return False


def bad_value(option: Option) -> str | None:
    return next((value for value in CANDIDATES if refuses({option.env: value})), None)


def test_only_free_text_options_accept_every_candidate() -> None:
    unvalidated = {option.field for option in OPTIONS if bad_value(option) is None}
    assert unvalidated == FREE_TEXT


@pytest.mark.parametrize(
    "option",
    [o for o in OPTIONS if o.field not in FREE_TEXT],
    ids=lambda o: o.names[0],
)
def test_bad_value_exits_2_with_one_line_naming_the_option(
    option: Option, capsys: pytest.CaptureFixture[str]
) -> None:
    value = bad_value(option)
    assert value is not None
    flag = f"-{option.names[0]}"
    # The flag through the real command in a subprocess...
    result = run_cli(*([f"{flag}={value}"] if option.is_bool else [flag, value]))
    # ...and the environment variable through the same entry point in-process: a Python
    # start-up per run is most of this file's time on a two-core runner.
    code = main([], {option.env: value})
    env_out, env_err = capsys.readouterr()
    runs = {
        "flag": (result.returncode, result.stdout, result.stderr, {flag, option.env}),
        "env": (code, env_out, env_err, {option.env}),
    }
    for form, (returncode, stdout, stderr, names) in runs.items():
        lines = stderr.splitlines()
        assert returncode == 2, f"{form} {value!r}: exit {returncode}\n{stderr}"
        assert len(lines) == 1, f"{form} {value!r}: expected one line:\n{stderr}"
        assert any(name in lines[0] for name in names), (
            f"{form}: {lines[0]!r} names none of {names}"
        )
        assert lines[0].startswith("registrator: "), lines[0]
        assert stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["etcd://127.0.0.1:2379"], "etcd://"),
        (["consul://a:1", "consul://b:2"], "at most one registry URI"),
        (["-no-such-option"], "-no-such-option"),
        (["-resync"], "-resync"),
        (["explain"], "explain"),
    ],
    ids=["unsupported-backend", "two-uris", "unknown-option", "missing-value", "explain-alone"],
)
def test_other_command_line_mistakes_exit_2_with_one_line(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
