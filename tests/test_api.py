"""The public surface: names, docstrings, types, and the import cost promise's precondition."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import nacelle_py
import nacelle_py.testing

ROOT = Path(__file__).resolve().parent.parent


def test_contract_names_are_exported() -> None:
    for name in ("App", "Process", "Initializer", "Health", "ServiceContainer", "Inject"):
        assert name in nacelle_py.__all__
        assert getattr(nacelle_py, name) is not None


def test_every_public_name_has_a_docstring() -> None:
    for module in (nacelle_py, nacelle_py.testing):
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
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
