"""The named-task half of the Dispatcher's public surface: ``task``, ``enqueue``, ``result``, ...

Everything here checks its arguments and then asks the backend (memory or
Redis), so both backends refuse the same mistakes with the same words.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from ._backend import Backend
from ._jobs import DeadLetter
from ._tasks import TaskRegistry

if TYPE_CHECKING:
    from ._call import Calls

__all__ = ["NamedTasks"]

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_KEEP_RESULT = 3600.0


def _seconds(where: str, name: str, value: object, *, zero: bool) -> float:
    """A finite number of seconds (>= 0 when ``zero``, else > 0), or TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{where}: {name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def _due(where: str, delay: object, at: object) -> float | None:
    """The Unix time a task becomes due (None: now), from ``delay`` seconds or an aware ``at``."""
    if delay is not None and at is not None:
        raise TypeError(f"{where}: give delay= or at=, not both")
    if delay is not None:
        return time.time() + _seconds(where, "delay", delay, zero=True)
    if at is not None:
        if not isinstance(at, datetime.datetime):
            raise TypeError(f"{where}: at must be a datetime, got {at!r}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"{where}: at must be timezone-aware (e.g. datetime.now(timezone.utc)), got {at!r}")
        return at.timestamp()
    return None


class NamedTasks:
    """Named tasks (mixed into ``Dispatcher``); see docs/dispatcher.md."""

    _registry: TaskRegistry
    _calls: Calls
    max_processes: int | None
    _note_timeout: Callable[[float | None], None]  # the pool's (see _core)

    async def _ready_backend(self) -> Backend:
        raise NotImplementedError  # the Dispatcher builds and opens its backend

    def task(
        self,
        name: str,
        *,
        retries: int = 0,
        timeout: float | None = None,
        backoff: tuple[float, float] = (0.5, 60.0),
        process: bool = False,
    ) -> Callable[[F], F]:
        """Register the decorated function as the named task ``name``; the function is returned unchanged.

        It takes one pydantic model argument (or none) and returns something
        JSON can carry. ``retries=N`` allows up to N+1 runs, waiting
        ``backoff=(first, cap)`` seconds between them (doubling from
        ``first``, capped at ``cap``, jittered). ``timeout`` bounds each run
        (None: the dispatcher's ``task_timeout``); a run past it fails with
        ``TimeoutError`` and is retried like any failure. A plain ``def`` runs
        on the dispatcher's threads, or with ``process=True`` in one of its
        ``max_processes`` worker processes.
        """
        registry = self._registry

        def register(function: F) -> F:
            spec = registry.add(
                name,
                function,
                retries=retries,
                timeout=timeout,
                backoff=backoff,
                process=process,
                processes_available=self.max_processes is not None,
            )
            self._note_timeout(spec.timeout)
            return function

        return register

    @property
    def tasks(self) -> list[str]:
        """The names of the registered tasks."""
        return sorted(self._registry.tasks)

    async def enqueue(
        self,
        name: str,
        payload: BaseModel | dict[str, Any] | None = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        at: datetime.datetime | None = None,
        keep_result: float = DEFAULT_KEEP_RESULT,
    ) -> str:
        """Queue one run of the named task; its id.

        The payload is validated against the task's model before anything is
        written (``TypeError`` naming the task). With ``key``, a second
        enqueue within the key's time to live returns the first task's id and
        queues nothing. ``delay`` (seconds) or ``at`` (an aware datetime)
        schedules it; ``keep_result`` is how long its outcome stays readable
        by ``result()`` (0: not kept).
        """
        where = "Dispatcher.enqueue"
        spec = self._registry.get(name, where)
        checked = spec.validate(payload, where)
        if key is not None and (not isinstance(key, str) or not key or len(key) > 1000):
            raise TypeError(f"{where}: key must be a non-empty string (at most 1000 characters), got {key!r}")
        due = _due(where, delay, at)
        keep = _seconds(where, "keep_result", keep_result, zero=True)
        backend = await self._ready_backend()
        ids = await backend.enqueue(spec, [checked], key=key, due=due, keep_result=keep)
        return ids[0]

    async def enqueue_many(
        self,
        name: str,
        payloads: Iterable[BaseModel | dict[str, Any] | None],
        *,
        delay: float | None = None,
        at: datetime.datetime | None = None,
        keep_result: float = DEFAULT_KEEP_RESULT,
    ) -> list[str]:
        """Queue one run per payload in one round trip; their ids, in order.

        Every payload is validated first: one that does not fit queues
        nothing (``TypeError`` naming the task and the payload's position).
        """
        where = "Dispatcher.enqueue_many"
        spec = self._registry.get(name, where)
        if isinstance(payloads, (str, bytes, BaseModel, dict)) or not isinstance(payloads, Iterable):
            raise TypeError(f"{where}: payloads must be a list (or other iterable) of payloads, got {payloads!r}")
        checked: list[Any] = list(payloads)
        model = spec.model
        for index, payload in enumerate(checked):
            if payload is None if model is None else type(payload) is model:
                continue  # already what the task takes
            try:
                checked[index] = spec.validate(payload, where)
            except TypeError as exc:
                raise TypeError(f"{exc} (payload #{index})") from exc.__cause__
        due = _due(where, delay, at)
        keep = _seconds(where, "keep_result", keep_result, zero=True)
        if not checked:
            return []
        backend = await self._ready_backend()
        return await backend.enqueue(spec, checked, key=None, due=due, keep_result=keep)

    async def result(self, task_id: str, *, timeout: float = 10.0) -> Any:
        """The return value of task ``task_id``, waiting up to ``timeout`` seconds.

        Raises ``TaskFailed`` (with the remote error's type, message and
        traceback) when the task failed for good, and ``TimeoutError`` when no
        outcome is kept within the timeout (still queued or running, not kept,
        expired, or an unknown id). The value is JSON data, validated into the
        task's return annotation when the task is registered here.
        """
        where = "Dispatcher.result"
        if not isinstance(task_id, str) or not task_id:
            raise TypeError(f"{where}: task_id must be the string enqueue() returned, got {task_id!r}")
        wait = _seconds(where, "timeout", timeout, zero=False)
        backend = await self._ready_backend()
        try:
            name, ok, value = await backend.outcome(task_id, wait)
        except TimeoutError:
            raise TimeoutError(
                f"{where}: no outcome of task {task_id!r} within {wait:g} s (still queued or running, "
                "not kept (keep_result=0) or expired, or not an id enqueue() returned)"
            ) from None
        if not ok:
            raise value.raise_for(task_id, name)
        spec = self._registry.tasks.get(name)
        return value if spec is None else spec.result_value(value)

    async def dead_letters(self) -> list[DeadLetter]:
        """The tasks that failed for good (retries or deliveries exhausted, or a poison payload), oldest first."""
        backend = await self._ready_backend()
        return await backend.dead_letters()

    async def retry_dead(self, task_id: str) -> None:
        """Queue the dead letter ``task_id`` again (same id, attempts reset); ``LookupError`` if there is none."""
        if not isinstance(task_id, str) or not task_id:
            raise TypeError(f"Dispatcher.retry_dead: task_id must be a dead letter's id, got {task_id!r}")
        backend = await self._ready_backend()
        if not await backend.retry_dead(task_id):
            raise LookupError(f"Dispatcher.retry_dead: no dead letter with id {task_id!r}")

    async def call(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` through the pool and return its value (or raise its error).

        An async function runs on a worker, a plain one on the dispatcher's
        threads, or with ``process=True`` in a worker process (arguments and
        result are pickled). ``timeout=`` (keyword) bounds the run (default:
        the dispatcher's ``task_timeout``; ``None``: no limit); past it the
        call raises ``TimeoutError``.
        """
        return await self._calls.call(function, args, kwargs)
