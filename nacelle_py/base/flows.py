"""Flows: tasks with revert and retry, in linear, unordered and graph patterns, on every engine.

``from nacelle_py.base import flows``; see docs/flows.md.
"""

from __future__ import annotations

from ._flows._atoms import Task
from ._flows._build import graph, linear, unordered
from ._flows._events import Listener, Transition
from ._flows._failure import Failure, Failures, FlowFailed, FlowSuspended
from ._flows._patterns import Flow
from ._flows._persist import Persistence
from ._flows._plan import FlowError
from ._flows._retry import RETRY, REVERT, REVERT_ALL, Decision, ForEach, Retry, Times
from ._flows._run import FlowEngine, load, resume, resumed, run
from ._flows._runner import FlowRunner, FlowRunnerStats
from ._flows._settings import ENGINES, FlowsSettings
from ._flows._sqlite import SQLiteStore
from ._flows._states import State
from ._flows._workers import serve

FAILED = State.FAILED
FAILURE = State.FAILURE
PENDING = State.PENDING
RETRYING = State.RETRYING
REVERTED = State.REVERTED
REVERTING = State.REVERTING
RUNNING = State.RUNNING
SUCCESS = State.SUCCESS
SUSPENDED = State.SUSPENDED

__all__ = [
    "ENGINES",
    "FAILED",
    "FAILURE",
    "PENDING",
    "RETRY",
    "RETRYING",
    "REVERT",
    "REVERTED",
    "REVERTING",
    "REVERT_ALL",
    "RUNNING",
    "SUCCESS",
    "SUSPENDED",
    "Decision",
    "Failure",
    "Failures",
    "Flow",
    "FlowEngine",
    "FlowError",
    "FlowFailed",
    "FlowRunner",
    "FlowRunnerStats",
    "FlowSuspended",
    "FlowsSettings",
    "ForEach",
    "Listener",
    "Persistence",
    "Retry",
    "SQLiteStore",
    "State",
    "Task",
    "Times",
    "Transition",
    "graph",
    "linear",
    "load",
    "resume",
    "resumed",
    "run",
    "serve",
    "unordered",
]
