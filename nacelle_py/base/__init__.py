"""Built-in processes: ordinary components built on the public core API.

Each one is imported on first use (``from nacelle_py.base import Dispatcher``),
so that ``import nacelle_py`` stays as cheap as importing its dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Dispatcher",
    "DispatcherError",
    "DispatcherStats",
    "DispatcherStatus",
    "Pipeline",
    "PipelineError",
    "PipelineSettings",
    "Stage",
    "StageStats",
]

_WHERE = {
    "Dispatcher": "._dispatcher",
    "DispatcherError": "._dispatcher",
    "DispatcherStats": "._dispatcher",
    "DispatcherStatus": "._dispatcher",
    "Pipeline": "._pipeline",
    "PipelineError": "._pipeline",
    "PipelineSettings": "._pipeline",
    "Stage": "._pipeline",
    "StageStats": "._pipeline",
}

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher, DispatcherError, DispatcherStats, DispatcherStatus
    from ._pipeline import Pipeline, PipelineError, PipelineSettings, Stage, StageStats


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nacelle_py.base' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
