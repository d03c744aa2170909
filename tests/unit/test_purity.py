"""The planner's modules stay pure: no I/O libraries, no environment, only pure neighbours.

That is what lets every other unit test run without Docker, Consul or an event loop, and what
keeps configuration in one place (cli.py hands the environment to arguments.parse_args).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import registrator

PACKAGE = Path(registrator.__file__).resolve().parent
# connect.py, swarm.py, vocabulary.py, endpoints.py and reaping.py are here because planner.py
# imports them; option_values.py because settings.py does; arguments.py (argv + an environment
# mapping → Settings) because configuration is parsed without touching the process.
PURE = (
    "model",
    "labels",
    "checks",
    "planner",
    "endpoints",
    "payload",
    "settings",
    "option_values",
    "arguments",
    "containers",
    "connect",
    "swarm",
    "events",
    "plan",
    "vocabulary",
    "addresses",
    "ids",
    "reaping",
)
IO_MODULES = frozenset(
    {"aiohttp", "asyncio", "docker", "socket", "subprocess", "tenacity", "prometheus_client"}
)
ENV_NAMES = frozenset({"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"})


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(module: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # `from registrator import checks` imports registrator.checks.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def environment_uses(module: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(module):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ENV_NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            found.append(f"line {node.lineno}: os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found.extend(
                f"line {node.lineno}: from os import {alias.name}"
                for alias in node.names
                if alias.name in ENV_NAMES
            )
    return found


def test_pure_modules_exist() -> None:
    assert all((PACKAGE / f"{name}.py").is_file() for name in PURE)


@pytest.mark.parametrize("name", PURE)
def test_no_io_imports(name: str) -> None:
    imported = imported_modules(tree(PACKAGE / f"{name}.py"))
    assert {module.split(".")[0] for module in imported} & IO_MODULES == set()


@pytest.mark.parametrize("name", PURE)
def test_imports_only_pure_registrator_modules(name: str) -> None:
    imported = imported_modules(tree(PACKAGE / f"{name}.py"))
    ours = {m.split(".")[1] for m in imported if m.startswith("registrator.")}
    assert ours <= set(PURE)


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda path: path.name)
def test_only_cli_reads_the_environment(path: Path) -> None:
    uses = environment_uses(tree(path))
    if path.name == "cli.py":
        assert uses, "cli.py is where the environment is read; did that move?"
    else:
        assert uses == []


def test_importing_pure_modules_loads_no_io_library() -> None:
    # A fresh interpreter, so modules other tests imported do not hide a transitive import.
    code = (
        "import sys\n"
        + "".join(f"import registrator.{name}\n" for name in PURE)
        + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(IO_MODULES)!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"
