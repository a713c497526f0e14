"""One delivery of a named task (``Job``), its outcome, and what users see of failures.

A ``Job`` is what a backend hands the worker pool: ``job.run`` is an async
bound method (the pool's fast path), or ``job.run_plain`` for a plain
function, which runs on the pool's threads. Either reports exactly one
outcome to its backend (``Settle``): the first of success, failure, or the
pool's timeout wins, and later reports are ignored. A run cancelled by the
dispatcher's own shutdown reports nothing: the backend decides what becomes
of it (memory: handed back; Redis: left unacknowledged, reclaimed after its
lease).
"""

from __future__ import annotations

import math
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.to_process
from pydantic import BaseModel

from ._call import Reported
from ._items import from_thread
from ._tasks import PLAIN_JSON, TaskSpec, backoff_delay, jsonable

__all__ = ["DeadLetter", "Failure", "Job", "Settle", "TaskFailed", "log_failure", "next_step"]


class TaskFailed(Exception):
    """A named task ended in failure; raised by ``result()`` with the remote error's details.

    ``error_type`` is the exception's class name (``"TimeoutError"`` for a
    task past its timeout), ``message`` its text and ``traceback`` the
    formatted traceback from the replica that ran it.
    """

    def __init__(self, task_id: str, task: str, error_type: str, message: str, traceback: str) -> None:
        super().__init__(f"task {task!r} ({task_id}) failed: {error_type}: {message}")
        self.task_id = task_id
        self.task = task
        self.error_type = error_type
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (a process pool, a test runner) keep every field
        return (type(self), (self.task_id, self.task, self.error_type, self.message, self.traceback))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that will not be retried again: listed by ``dead_letters()``, re-run by ``retry_dead(id)``.

    ``id`` is the task's id (the one ``enqueue`` returned), ``task`` its name,
    ``payload`` the JSON payload as enqueued, ``error`` its last error as
    ``"Type: message"``, ``attempts`` how many times it ran, and the times
    are Unix timestamps.
    """

    id: str
    task: str
    payload: Any
    error: str
    attempts: int
    error_type: str = ""
    traceback: str = ""
    enqueued_at: float = 0.0
    failed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed run, in the form that crosses processes."""

    error_type: str
    message: str
    traceback: str
    retryable: bool = True  # False: poison (a payload that does not fit) or too many deliveries
    exc: BaseException | None = field(default=None, compare=False)  # here only, for the log

    @classmethod
    def of(cls, exc: BaseException, *, retryable: bool = True) -> Failure:
        """The failure of ``exc``, with its formatted traceback."""
        text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__name__, str(exc), text, retryable, exc)

    def error(self) -> str:
        """``"Type: message"``."""
        return f"{self.error_type}: {self.message}" if self.message else self.error_type

    def raise_for(self, task_id: str, task: str) -> TaskFailed:
        """The ``TaskFailed`` that ``result()`` raises for this failure."""
        return TaskFailed(task_id, task, self.error_type, self.message, self.traceback)


class Settle(Protocol):
    """What a backend does with a job's outcome (always called on the event loop's thread)."""

    def succeeded(self, job: Job, value: Any) -> None: ...

    def failed(self, job: Job, failure: Failure) -> None: ...

    def handed_back(self, job: Job) -> None: ...


def log_failure(log: Callable[..., None], job: Job, failure: Failure, delay: float | None) -> None:
    """The one log line of a failed run: what failed, and whether it is retried or dead-lettered."""
    fields: dict[str, Any] = {"task": job.spec.name, "task_id": job.id, "attempt": job.attempts}
    if failure.exc is not None:
        fields["exc_info"] = failure.exc
    else:
        fields["error"] = failure.error()
    if delay is None:
        log("error", "task failed; dead-lettered", **fields)
    else:
        log("warning", f"task failed; retry in {delay:.3g} s", **fields)


def next_step(job: Job, failure: Failure) -> float | None:
    """After ``failure``: the delay before the next run, or None when the job is dead."""
    if not failure.retryable or job.attempts > job.spec.retries:
        return None
    return backoff_delay(job.attempts, job.spec.backoff)


class Job:
    """One delivery of a named task to this process; see the module docstring.

    Only what every backend needs is set here (a job is made per task, on the
    hot path); the Redis backend adds ``entry``, ``raw`` and ``deliveries``
    (``delivered``), and ``runner`` sets ``token`` for plain functions.
    """

    __slots__ = (
        "attempts",
        "backend",
        "deliveries",
        "enqueued_at",
        "entry",
        "id",
        "keep_result",
        "payload",
        "raw",
        "settled",
        "spec",
        "token",
    )

    nacelle_job = True  # the pool describes a job's failure by the job, not its bound method

    def __init__(
        self,
        task_id: str,
        spec: TaskSpec,
        payload: BaseModel | None,
        backend: Settle,
        keep_result: float,
        enqueued_at: float,
        attempts: int = 0,
    ) -> None:
        self.id = task_id
        self.spec = spec
        self.payload = payload
        self.backend = backend
        self.keep_result = keep_result
        self.enqueued_at = enqueued_at
        self.attempts = attempts  # runs started, this one included once it starts
        self.settled = False

    def delivered(self, entry: Any, raw: dict[str, Any], deliveries: int) -> Job:
        """Attach what the Redis backend knows of the delivery: the entry id, the entry, its delivery count."""
        self.entry = entry
        self.raw = raw
        self.deliveries = deliveries
        return self

    def __repr__(self) -> str:
        return f"<task {self.spec.name!r} id={self.id} attempt {self.attempts}/{self.spec.retries + 1}>"

    def runner(self, processes: anyio.CapacityLimiter | None, token: Any) -> Any:
        """The callable the pool runs: async (fast path), in a process, or plain (the pool's threads)."""
        spec = self.spec
        if spec.is_async:
            return self
        if spec.process and processes is not None:
            return self.run_process
        self.token = token  # a plain function reports its outcome from its thread through the loop's token
        return self.run_plain

    async def run(self) -> None:
        """Run an async task and report its outcome."""
        self.attempts += 1
        spec = self.spec
        try:
            if spec.model is None:
                value = await spec.function()
            else:
                value = await spec.function(self.payload)
        except Exception as exc:
            self._failed(exc)
            raise Reported() from None  # counted by the pool, logged once by the backend
        except BaseException as exc:
            if anyio.current_effective_deadline() != -math.inf:  # not our cancellation: the task's own
                self._failed(exc)
            raise
        if type(value) not in PLAIN_JSON:  # a model, a list...: as JSON data (or a failure)
            self._succeeded(value)
        elif not self.settled:
            self.settled = True
            self.backend.succeeded(self, value)

    # The pool's fast path awaits ``task()`` for any task whose ``__code__`` is a coroutine
    # function's: a job queued as itself is run that way, with no bound method made per task.
    __call__ = run
    __code__ = run.__code__

    def run_plain(self) -> None:
        """Run a plain task on a pool thread and report its outcome on the loop."""
        self.attempts += 1
        spec = self.spec
        try:
            value = spec.function() if spec.model is None else spec.function(self.payload)
        except BaseException as exc:
            from_thread(self.token, self._failed, exc)
            raise Reported() from None
        from_thread(self.token, self._succeeded, value)

    async def run_process(self) -> None:
        """Run a plain task in one of the dispatcher's worker processes."""
        self.attempts += 1
        spec = self.spec
        limiter = getattr(self.backend, "processes", None)
        args = () if spec.model is None else (self.payload,)
        try:
            value = await anyio.to_process.run_sync(spec.function, *args, cancellable=True, limiter=limiter)
        except anyio.BrokenWorkerProcess as exc:
            message = "its worker process died (it is replaced for the next run)"
            self._report_failure(Failure("BrokenWorkerProcess", message, Failure.of(exc).traceback, True, exc))
            raise Reported() from None
        except Exception as exc:
            self._failed(exc)
            raise Reported() from None
        self._succeeded(value)

    def handed_back(self) -> None:
        """The pool took this job back without running it (``quit(drain=False)``, an unwind)."""
        if not self.settled:
            self.settled = True
            self.backend.handed_back(self)

    def timed_out(self) -> None:
        """The pool's timeout ended (or abandoned) this run."""
        timeout = self.spec.timeout
        message = f"task {self.spec.name!r} ran longer than its timeout" + (f" ({timeout:g} s)" if timeout else "")
        self._report_failure(Failure("TimeoutError", message, ""))

    def _succeeded(self, value: Any) -> None:
        if self.settled:
            return
        try:
            data = jsonable(value)
        except TypeError as exc:
            self._failed(exc)
            return
        self.settled = True
        self.backend.succeeded(self, data)

    def _failed(self, exc: BaseException) -> None:
        self._report_failure(Failure.of(exc))

    def _report_failure(self, failure: Failure) -> None:
        if not self.settled:
            self.settled = True
            self.backend.failed(self, failure)
