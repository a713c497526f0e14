"""Built-in processes: ordinary components built on the public core API.

Each one is imported on first use (``from nacelle_py.base import Dispatcher``),
so that ``import nacelle_py`` stays as cheap as importing its dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "DeadLetter",
    "Dispatcher",
    "DispatcherError",
    "DispatcherSettings",
    "DispatcherStats",
    "DispatcherStatus",
    "FlowRunner",
    "FlowRunnerStats",
    "FlowsSettings",
    "GRPCServer",
    "GRPCSettings",
    "HTTPServer",
    "HTTPSettings",
    "HTTPStats",
    "LambdaContext",
    "LambdaListener",
    "LambdaSettings",
    "LambdaStats",
    "RuntimeAPIError",
    "Machine",
    "MachineError",
    "MachineOverflowError",
    "MachineSettings",
    "MachineStats",
    "Message",
    "Pipeline",
    "PipelineError",
    "PipelineSettings",
    "RedisSettings",
    "Routine",
    "RoutineInfo",
    "Stage",
    "StageStats",
    "Subscription",
    "TaskFailed",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
    "cron",
    "every",
    "flows",
    "recover",
    "retry",
    "service",
    "services_of",
    "timeout",
]

_WHERE = {
    "GRPCServer": "._grpc",
    "GRPCSettings": "._grpc",
    "HTTPServer": "._http",
    "HTTPSettings": "._http",
    "HTTPStats": "._http",
    "LambdaContext": "._lambda",
    "LambdaListener": "._lambda",
    "LambdaSettings": "._lambda",
    "LambdaStats": "._lambda",
    "RuntimeAPIError": "._lambda",
    "service": "._asgi_services",
    "services_of": "._asgi_services",
    "Worker": "._worker",
    "WorkerSettings": "._worker",
    "WorkerStats": "._worker",
    "Machine": "._machine",
    "MachineError": "._machine",
    "MachineOverflowError": "._machine",
    "MachineSettings": "._machine",
    "MachineStats": "._machine",
    "Routine": "._machine",
    "RoutineInfo": "._machine",
    "Subscription": "._machine",
    "cron": "._machine",
    "every": "._machine",
    "recover": "._machine",
    "retry": "._machine",
    "timeout": "._machine",
    "DeadLetter": "._dispatcher",
    "Dispatcher": "._dispatcher",
    "DispatcherError": "._dispatcher",
    "DispatcherSettings": "._dispatcher",
    "TaskFailed": "._dispatcher",
    "RedisSettings": "._redis",
    "DispatcherStats": "._dispatcher",
    "DispatcherStatus": "._dispatcher",
    "FlowRunner": "._flows._runner",
    "FlowRunnerStats": "._flows._runner",
    "FlowsSettings": "._flows._settings",
    "Message": "._pipeline",
    "Pipeline": "._pipeline",
    "PipelineError": "._pipeline",
    "PipelineSettings": "._pipeline",
    "Stage": "._pipeline",
    "StageStats": "._pipeline",
}

if TYPE_CHECKING:
    from . import flows
    from ._asgi_services import service, services_of
    from ._dispatcher import (
        DeadLetter,
        Dispatcher,
        DispatcherError,
        DispatcherSettings,
        DispatcherStats,
        DispatcherStatus,
        TaskFailed,
    )
    from ._flows._runner import FlowRunner, FlowRunnerStats
    from ._flows._settings import FlowsSettings
    from ._grpc import GRPCServer, GRPCSettings
    from ._http import HTTPServer, HTTPSettings, HTTPStats
    from ._lambda import LambdaContext, LambdaListener, LambdaSettings, LambdaStats, RuntimeAPIError
    from ._machine import (
        Machine,
        MachineError,
        MachineOverflowError,
        MachineSettings,
        MachineStats,
        Routine,
        RoutineInfo,
        Subscription,
        cron,
        every,
        recover,
        retry,
        timeout,
    )
    from ._pipeline import Message, Pipeline, PipelineError, PipelineSettings, Stage, StageStats
    from ._redis import RedisSettings
    from ._worker import Worker, WorkerSettings, WorkerStats


def __getattr__(name: str) -> Any:
    if name == "flows":  # a module of its own: flows.Task, flows.linear, flows.run, ...
        return importlib.import_module(".flows", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nacelle_py.base' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
