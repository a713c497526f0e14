"""The memory backend: named tasks inside this process (the embedded default).

Tasks go straight into the worker pool (waiting for room in its buffer);
delayed tasks and retries wait in a heap that ``serve`` moves into the pool
when they are due. Results, idempotency keys and dead letters live in
dictionaries and expire like their Redis counterparts. Nothing survives the
process: scheduled tasks still waiting when the dispatcher stops are counted
as handed back and logged.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from ._backend import Backend, Outcome, TaskIds
from ._jobs import DeadLetter, Failure, Job, log_failure, next_step
from ._tasks import TaskSpec

if TYPE_CHECKING:
    from ._pool import WorkerPool

__all__ = ["MemoryBackend"]

_now = time.time


class MemoryBackend(Backend):
    """See the module docstring."""

    kind = "memory"

    def __init__(self, pool: WorkerPool, *, key_ttl: float, processes: anyio.CapacityLimiter | None) -> None:
        self.pool = pool
        self.key_ttl = key_ttl
        self.processes = processes
        self.ids = TaskIds()
        self._results: dict[str, tuple[float, str, bool, Any]] = {}  # id -> (expires, task, ok, value)
        self._expiry: deque[str] = deque()  # ids in the order their results were kept (mostly expiry order)
        self._waiters: dict[str, anyio.Event] = {}
        self._keys: dict[str, tuple[float, str]] = {}
        self._schedule: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._kick: anyio.Event | None = None
        self._dead: dict[str, tuple[DeadLetter, Job]] = {}
        self.retried = 0
        self.dead_lettered = 0

    # -- enqueueing ---------------------------------------------------------------------

    async def enqueue(
        self,
        spec: TaskSpec,
        payloads: list[BaseModel | None],
        *,
        key: str | None,
        due: float | None,
        keep_result: float,
    ) -> list[str]:
        now = _now()
        if key is not None:
            found = self._keys.get(key)
            if found is not None and found[0] > now:
                return [found[1]]
        jobs = [
            Job(task_id, spec, payload, self, keep_result, now)
            for task_id, payload in zip(self.ids.many(len(payloads)), payloads)
        ]
        if key is not None:  # claimed before any await: a concurrent enqueue with the key finds it
            self._keys[key] = (now + self.key_ttl, jobs[0].id)
        if due is not None and due > now:
            for job in jobs:
                self._later(job, due)
        else:
            await self._start_all(jobs)
        return [job.id for job in jobs]

    async def _start_all(self, jobs: list[Job]) -> None:
        pool, processes, token = self.pool, self.processes, self.pool._token
        # An async task's job is queued as itself (see Job.__call__); others run through a method.
        runners: list[Any] = jobs if jobs[0].spec.is_async else [job.runner(processes, token) for job in jobs]
        timeout = jobs[0].spec.pool_timeout  # one task per call (a retry or a dead letter: one job)
        taken = pool._offer_many(runners, timeout)
        for runner in runners[taken:]:  # the buffer is full: wait for room, one at a time
            await pool._put(runner, timeout)

    def _later(self, job: Job, due: float) -> None:
        heapq.heappush(self._schedule, (due, next(self._seq), job))
        if self._kick is not None and self._schedule[0][2] is job:
            self._kick.set()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Move due tasks into the pool; drop expired results and keys now and then."""
        schedule = self._schedule
        task_status.started()
        try:
            while True:
                kick = self._kick = anyio.Event()
                now = _now()
                due = []
                while schedule and schedule[0][0] <= now:
                    due.append(heapq.heappop(schedule)[2])
                if due:
                    await self._start_all(due)
                    continue
                self._purge(now)
                wait = min(schedule[0][0] - now, 1.0) if schedule else 1.0
                with anyio.move_on_after(wait):
                    await kick.wait()
        finally:
            self._kick = None
            if schedule:
                self.pool._handed_back += len(schedule)
                self.pool._log_event(
                    "warning",
                    "scheduled tasks dropped: the memory backend keeps nothing after the run",
                    dropped=len(schedule),
                )
                schedule.clear()

    # -- outcomes -----------------------------------------------------------------------

    def succeeded(self, job: Job, value: Any) -> None:
        # _keep inlined: this runs once per task, on the hot path.
        keep = job.keep_result
        if keep > 0:
            task_id = job.id
            self._results[task_id] = (_now() + keep, job.spec.name, True, value)
            self._expiry.append(task_id)
            if self._waiters:
                event = self._waiters.pop(task_id, None)
                if event is not None:
                    event.set()

    def failed(self, job: Job, failure: Failure) -> None:
        delay = next_step(job, failure)
        log_failure(self.pool._log_event, job, failure, delay)
        if delay is not None:
            self.retried += 1
            job.settled = False
            self._later(job, _now() + delay)
            return
        self.dead_lettered += 1
        letter = DeadLetter(
            id=job.id,
            task=job.spec.name,
            payload=None if job.payload is None else job.payload.model_dump(mode="json"),
            error=failure.error(),
            attempts=job.attempts,
            error_type=failure.error_type,
            traceback=failure.traceback,
            enqueued_at=job.enqueued_at,
            failed_at=_now(),
        )
        self._dead[job.id] = (letter, job)
        if job.keep_result > 0:
            self._keep(job, False, failure)

    def _keep(self, job: Job, ok: bool, value: Any) -> None:
        expires = _now() + job.keep_result
        task_id = job.id
        self._results[task_id] = (expires, job.spec.name, ok, value)
        self._expiry.append(task_id)
        if self._waiters:
            event = self._waiters.pop(task_id, None)
            if event is not None:
                event.set()

    def _purge(self, now: float) -> None:
        expiry, results = self._expiry, self._results
        while expiry:
            kept = results.get(expiry[0])
            if kept is not None and kept[0] > now:
                break  # the oldest kept result is still valid (a later one with a shorter keep waits)
            task_id = expiry.popleft()
            if kept is not None:
                del results[task_id]
        for key in [k for k, (expires, _) in self._keys.items() if expires <= now]:
            del self._keys[key]

    # -- reading back -------------------------------------------------------------------

    async def outcome(self, task_id: str, timeout: float) -> Outcome:
        kept = self._results.get(task_id)
        if kept is not None and kept[0] > _now():  # kept already: no deadline to set up
            return kept[1:]
        with anyio.move_on_after(timeout):
            while True:
                kept = self._results.get(task_id)
                if kept is not None and kept[0] > _now():
                    return kept[1:]
                event = self._waiters.get(task_id)
                if event is None:
                    event = self._waiters[task_id] = anyio.Event()
                await event.wait()
        raise TimeoutError(task_id)

    async def dead_letters(self) -> list[DeadLetter]:
        return sorted((letter for letter, _ in self._dead.values()), key=lambda letter: letter.failed_at)

    async def retry_dead(self, task_id: str) -> bool:
        found = self._dead.pop(task_id, None)
        if found is None:
            return False
        job = found[1]
        job.attempts = 0
        job.settled = False
        self._results.pop(task_id, None)
        await self._start_all([job])
        return True

    def extra_stats(self) -> dict[str, Any]:
        return {
            "scheduled": len(self._schedule),
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
        }
