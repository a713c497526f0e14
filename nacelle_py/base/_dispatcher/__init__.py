"""Dispatcher: a worker pool with named tasks, on memory or on Redis Streams."""

from ._dispatcher import Dispatcher
from ._jobs import DeadLetter, TaskFailed
from ._settings import DispatcherSettings
from ._state import DispatcherStatus
from ._stats import DispatcherError, DispatcherStats

__all__ = [
    "DeadLetter",
    "Dispatcher",
    "DispatcherError",
    "DispatcherSettings",
    "DispatcherStats",
    "DispatcherStatus",
    "TaskFailed",
]
