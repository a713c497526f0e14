"""Dispatcher: a worker pool with named tasks, on memory or on Redis Streams."""

from ._dispatcher import Dispatcher
from ._state import DispatcherStatus
from ._stats import DispatcherError, DispatcherStats

__all__ = ["Dispatcher", "DispatcherError", "DispatcherStats", "DispatcherStatus"]
