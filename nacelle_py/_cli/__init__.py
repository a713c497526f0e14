"""The ``nacelle-py`` command line (also ``python -m nacelle_py``): ``run``, ``check`` and ``config``."""

from __future__ import annotations

from ._check import CheckReport, ComponentRow, Problem, check_app
from ._main import main
from ._settings_table import SettingRow, settings_rows
from ._target import TargetError, load_app

__all__ = [
    "CheckReport",
    "ComponentRow",
    "Problem",
    "SettingRow",
    "TargetError",
    "check_app",
    "load_app",
    "main",
    "settings_rows",
]
