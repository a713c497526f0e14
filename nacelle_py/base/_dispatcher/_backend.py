"""The queue-backend interface behind a Dispatcher's named tasks.

A backend decides where named tasks wait and where their outcomes go: the
memory backend keeps them in this process, the Redis backend in a stream
that every replica consumes. Both hand the tasks they deliver to the same
worker pool as ``Job`` runs, and both answer the same calls, so that one
semantics suite runs against each of them.
"""

from __future__ import annotations

import abc
import os
from typing import Any

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from ..._health import HealthComponent
from ._jobs import DeadLetter, Failure, Job
from ._tasks import TaskSpec

__all__ = ["Backend", "Outcome", "TaskIds"]

# What result() finds: (task name, True, value) or (task name, False, Failure).
Outcome = tuple[str, bool, Any]


class TaskIds:
    """Task ids: a random prefix per dispatcher and a counter (unique across replicas, cheap to make)."""

    def __init__(self) -> None:
        self._prefix = f"{os.urandom(8).hex()}-"
        self._next = 1

    def many(self, count: int) -> list[str]:
        """``count`` new ids."""
        start, prefix = self._next, self._prefix
        self._next = start + count
        return [f"{prefix}{n}" for n in range(start, start + count)]  # decimal: the cheapest to format


class Backend(abc.ABC):
    """Where named tasks wait, and where their outcomes are kept; see the module docstring."""

    kind: str = ""
    health: HealthComponent | None = None  # Redis: "<component>.redis", unhealthy while unreachable

    async def open(self) -> None:
        """Connect and prepare (before the first run); fail with a clear error within a bound."""

    @abc.abstractmethod
    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The backend's loops while the dispatcher runs (the schedule; on Redis the consumer)."""

    @abc.abstractmethod
    async def enqueue(
        self,
        spec: TaskSpec,
        payloads: list[BaseModel | None],
        *,
        key: str | None,
        due: float | None,
        keep_result: float,
    ) -> list[str]:
        """Queue one task per payload (``due``: a Unix time to wait for); their ids."""

    @abc.abstractmethod
    async def outcome(self, task_id: str, timeout: float) -> Outcome:
        """The kept outcome of ``task_id``, waiting up to ``timeout`` seconds (``TimeoutError``)."""

    @abc.abstractmethod
    async def dead_letters(self) -> list[DeadLetter]:
        """The dead letters, oldest first."""

    @abc.abstractmethod
    async def retry_dead(self, task_id: str) -> bool:
        """Move one dead letter back into the queue, attempts reset; False when there is none by that id."""

    async def stop(self) -> None:
        """Stop taking new deliveries (graceful stop); what was delivered and not started goes back."""

    async def finish(self) -> None:
        """After the pool has drained (graceful stop): settle what is still unsettled (bounded)."""

    def extra_stats(self) -> dict[str, Any]:
        """The backend's own counters for ``stats()``."""
        return {}

    # -- outcomes, called by jobs on the loop's thread -----------------------------------

    @abc.abstractmethod
    def succeeded(self, job: Job, value: Any) -> None:
        """``job`` returned ``value`` (already JSON data)."""

    @abc.abstractmethod
    def failed(self, job: Job, failure: Failure) -> None:
        """``job`` failed: retry it, or make it a dead letter."""

    def handed_back(self, job: Job) -> None:
        """The pool gave ``job`` back unrun (counted in ``handed_back``); Redis returns it to the stream."""
