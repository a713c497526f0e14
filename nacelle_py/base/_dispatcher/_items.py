"""What the pool's queue holds and what its workers are: items, tasks, worker records.

Queue items are the bare task, or ``(task, timeout, dispatched_at)`` when
either is set (one task in sixteen carries its dispatch time for the latency
sample); ``UNSET`` in the timeout place means the dispatcher's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread

__all__ = ["UNSET", "Worker", "describe", "from_thread", "handed_back", "job_of", "resolve", "task_of", "timed_out"]

UNSET: Any = object()
_CO_COROUTINE = inspect.CO_COROUTINE


class Worker:
    """One worker's state, read by the monitor: the item it runs and how many it has finished."""

    __slots__ = ("done", "item", "scope", "seen_at", "seen_done", "timing_out")

    def __init__(self) -> None:
        self.item: Any = None  # the queue item being run; None while idle
        self.scope: anyio.CancelScope | None = None
        self.done = 0  # tasks that ended completed or failed: also the monitor's "same task?" token
        self.seen_done = -1
        self.seen_at = 0.0
        self.timing_out = False  # the monitor cancelled this worker's scope for its current task


def task_of(item: Any) -> Any:
    """The task in a queue item (see the module docstring)."""
    return item[0] if type(item) is tuple else item


def resolve(task: Any) -> tuple[Callable[[], Any], bool]:
    """The callable to run for a task and whether it is a coroutine function."""
    execute = getattr(task, "execute", None)
    function = execute if execute is not None and not inspect.isfunction(task) else task
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    if code is not None:
        return function, bool(code.co_flags & _CO_COROUTINE)
    return function, inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - its __call__, not whether it has one
    )


def job_of(task: Any) -> Any:
    """The job behind a queued task, or None: a job queued as itself, or the owner of a job's bound method."""
    if getattr(task, "nacelle_job", False):
        return task
    owner = getattr(task, "__self__", None)
    return owner if getattr(owner, "nacelle_job", False) else None


def describe(task: Any) -> str:
    """How logs name a task: a named task's run by its job (name, id, attempt), anything else by repr."""
    job = job_of(task)
    return repr(task if job is None else job)


def timed_out(task: Any) -> bool:
    """Tell a call or named task's job that the pool's timeout ended its run; False for other tasks.

    A job reports (and logs) its timeout itself, so the pool does not log it again.
    """
    job = job_of(task)
    if job is None:
        return False
    job.timed_out()
    return True


def handed_back(task: Any) -> None:
    """Tell a call or named task's job that it will not run (an unwind or ``quit(drain=False)`` took it)."""
    hook = getattr(job_of(task), "handed_back", None)
    if hook is not None:
        hook()


def from_thread(token: Any, report: Callable[..., Any], *args: Any) -> None:
    """Call ``report(*args)`` on the event loop of ``token`` from a pool thread (a plain task's outcome);
    nothing when that loop has finished (nobody is left to tell)."""
    try:
        anyio.from_thread.run_sync(report, *args, token=token)
    except anyio.RunFinishedError:
        pass
