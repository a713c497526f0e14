"""The public surface: names, docstrings, types, and the import cost promise's precondition."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import nacelle_py
import nacelle_py.base
import nacelle_py.testing

ROOT = Path(__file__).resolve().parent.parent


def test_contract_names_are_exported() -> None:
    for name in ("App", "Process", "Initializer", "Health", "ServiceContainer", "Inject"):
        assert name in nacelle_py.__all__
        assert getattr(nacelle_py, name) is not None


def test_every_public_name_has_a_docstring() -> None:
    for module in (nacelle_py, nacelle_py.testing, nacelle_py.base):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"
                for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
                    if not attr.startswith("_") and inspect.isfunction(member):
                        assert inspect.getdoc(member), f"{name}.{attr} has no docstring"


def test_import_does_not_load_the_builtin_processes_or_a_backend() -> None:
    code = (
        "import sys, nacelle_py; "
        "bad = [m for m in sys.modules if m.startswith(('nacelle_py.base', 'trio', 'sqlite3'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_is_typed_and_passes_strict_mypy() -> None:
    assert (ROOT / "nacelle_py" / "py.typed").exists()
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "nacelle_py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "command", [["check", "."], ["format", "--check", "."]], ids=["ruff check", "ruff format --check"]
)
def test_ruff_is_clean(command: list[str]) -> None:
    # The rules are pyproject.toml's [tool.ruff]; `ruff check --fix . && ruff format .` makes it pass.
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


# What each declared dependency may be imported as; the extras' modules are imported only
# after ``_extras.require`` has checked for them (those modules are listed here too).
IMPORT_NAMES = {
    "anyio": {"anyio"},
    "dependency-injector": {"dependency_injector"},
    "pydantic": {"pydantic", "pydantic_core"},
    "pydantic-settings": {"pydantic_settings"},
    "structlog": {"structlog"},
    "croniter": {"croniter"},
    "sniffio": {"sniffio"},
}
EXTRA_ONLY = {
    "nacelle_py/_ops/_metrics.py": {"prometheus_client"},
    "nacelle_py/_ops/_families.py": {"prometheus_client"},  # imported by _metrics.py only
    "nacelle_py/base/_grpc/_health.py": {"grpc", "grpc_health"},
    "nacelle_py/base/_redis/_client.py": {"coredis"},
    "nacelle_py/base/_redis/_streams.py": {"coredis"},
    "nacelle_py/base/_dispatcher/_redis.py": {"coredis"},
    "nacelle_py/testing/plugin.py": {"pytest"},  # the pytest plugin: only pytest imports it
}


def test_every_module_level_import_is_a_declared_dependency() -> None:
    """A venv with the core dependencies only can import every module (the extras' come lazily)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    allowed = set().union(*(IMPORT_NAMES[d.split(">")[0].split("=")[0].split("[")[0]] for d in declared))
    stdlib = set(sys.stdlib_module_names) | {"__future__", "nacelle_py"}
    for path in sorted((ROOT / "nacelle_py").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or top in allowed or top in EXTRA_ONLY.get(where, ()), (
                    f"{where} imports {top!r}, which is neither a declared dependency nor checked by require()"
                )


def test_the_servers_and_the_ops_endpoint_import_no_extra_until_used() -> None:
    code = (
        "import sys, nacelle_py, nacelle_py.base as b; "
        "b.HTTPServer, b.GRPCServer, b.HTTPSettings, b.GRPCSettings, b.Dispatcher, b.RedisSettings; "
        "import nacelle_py._ops._operations; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('hypercorn', 'grpc', 'grpc_health', 'prometheus_client', 'coredis')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
