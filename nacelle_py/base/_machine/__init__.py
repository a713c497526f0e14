"""Machine: supervised background routines, throttling, middlewares and pub/sub."""

from ._bus import MachineOverflowError, Subscription
from ._machine import Machine
from ._middleware import cron, every, recover, retry, timeout
from ._routine import Routine, RoutineInfo
from ._settings import MachineSettings
from ._shared import MachineError
from ._stats import MachineStats

__all__ = [
    "Machine",
    "MachineError",
    "MachineOverflowError",
    "MachineSettings",
    "MachineStats",
    "Routine",
    "RoutineInfo",
    "Subscription",
    "cron",
    "every",
    "recover",
    "retry",
    "timeout",
]
