"""The worker pool: the queue, the workers that drain it, and how the pool grows and shrinks.

The hot path is built to cost no more than a hand-written pool over a queue:

- ``dispatch`` (``_intake``) appends to a deque and wakes sleeping workers
  only when there are any; a worker drains the deque in a tight loop and
  awaits each task directly, so a task that does not block costs no
  scheduler round-trip.
- Per-task timeouts use no cancel scope per task (one costs more than a whole
  no-op task). Each worker runs under one cancel scope; the monitor
  (``_monitor``) looks at what every worker is running, a few times per
  timeout, and cancels the worker's scope when one task has run too long. The
  worker counts that task as timed out and carries on under a fresh scope.
- Plain functions go to a pool of daemon threads (``_threads``), bounded by
  ``max_threads``.

What the queue holds is described in ``_items``.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio

from ._call import Reported
from ._intake import Intake
from ._items import UNSET, Worker, describe, handed_back, job_of, resolve, task_of, timed_out

__all__ = ["WorkerPool"]

_CO_COROUTINE = inspect.CO_COROUTINE
_perf_counter = time.perf_counter


class WorkerPool(Intake):
    """The pool half of a Dispatcher: queue, workers, scaling, thread hand-off and counters.

    The Dispatcher subclasses it (so ``dispatch`` is one method call, not two)
    and adds the lifecycle (``run``, ``quit``, ``join``) and the named tasks.
    """

    # -- workers ------------------------------------------------------------------------

    def _scale_up(self) -> None:
        if self._spawn():
            self._scale_ups += 1
            self._log_event("debug", "dispatcher scaled up", workers=len(self._workers))

    def _spawn(self) -> bool:
        """Start one worker; False when run() is ending (a worker started now would never run)."""
        if self._tg is None or self._tg.cancel_scope.cancel_called:
            return False
        worker = Worker()
        self._workers.add(worker)
        self._update_scale_at()
        self._tg.start_soon(self._worker, worker, name="nacelle dispatcher worker")
        return True

    def _update_scale_at(self) -> None:
        """While the pool can grow, a dispatch that finds no idle worker adds one (the task would wait)."""
        can_grow = self._tg is not None and len(self._workers) < self.max_workers
        self._scale_at = 0 if can_grow else sys.maxsize

    def _running(self) -> int:
        return sum(1 for w in self._workers if w.item is not None)

    async def _worker(self, worker: Worker) -> None:
        try:
            while True:
                with anyio.CancelScope() as scope:
                    worker.scope = scope
                    await self._work(worker)
                if not worker.timing_out:
                    return  # retired
                # The monitor cancelled this worker's scope: its task ran too long (whether
                # the cancellation ended it or the task swallowed it and returned).
                worker.timing_out = False
                item, worker.item = worker.item, None
                worker.seen_done = -1  # the monitor times the next task afresh
                if item is not None:
                    self._timed_out += 1
                    if not timed_out(task_of(item)):
                        self._log_event("warning", "task timed out", task=describe(task_of(item)))
        finally:
            self._workers.discard(worker)
            self._retired_done += worker.done
            self._update_scale_at()
            if worker.item is not None:  # cancelled by an unwind while running a task
                self._hand_back([task_of(worker.item)])
                worker.item = None
            self._notify()

    async def _work(self, worker: Worker) -> None:
        queue = self._queue
        popleft = queue.popleft
        add_latency = self._latency.add
        # Locals, not globals or builtins, on the per-task path.
        is_tuple, type_of, get_attr, coroutine_flag = tuple, type, getattr, _CO_COROUTINE
        while True:
            # No status check per task: quit(drain=False) empties the queue itself and
            # dispatch is refused while quitting, so an empty queue is the only stop sign.
            while queue:
                item = popleft()
                if type_of(item) is is_tuple:
                    task = item[0]
                    add_latency(_perf_counter() - item[2])
                else:
                    task = item
                code = get_attr(task, "__code__", None)
                if code is not None and code.co_flags & coroutine_flag:
                    function: Callable[[], Any] = task
                else:
                    function, is_async = resolve(task)
                    if not is_async:
                        self._to_thread(function, item)
                        continue
                worker.item = item
                try:
                    await function()
                except Exception as exc:
                    if worker.timing_out:
                        return  # timed out, then failed: _worker counts the timeout
                    self._failed += 1
                    if type(exc) is not Reported:  # a call()'s failure is its caller's to report
                        self._log_event("error", "task failed", task=describe(task), exc_info=exc)
                except BaseException as exc:
                    if worker.timing_out or anyio.current_effective_deadline() == -math.inf:
                        raise  # our timeout, or the dispatcher itself is being cancelled
                    # A cancellation of the task's own (it awaited a future someone else
                    # cancelled), or a SystemExit: that task's failure, not the worker's end.
                    self._failed += 1
                    self._log_event("error", "task failed", task=describe(task), exc_info=exc)
                if worker.timing_out:
                    return  # the task swallowed its timeout: the scope must be renewed
                worker.done += 1
            worker.item = None
            if not await self._idle(worker):
                return

    def _to_thread(self, function: Callable[[], Any], item: Any) -> None:
        if type(item) is tuple:
            task, timeout, dispatched = item
        else:
            task, timeout, dispatched = item, UNSET, 0.0
        self._pool.submit((function, self.task_timeout if timeout is UNSET else timeout, dispatched, task))
        self._reserved += 1  # keep the fast path's room an over-estimate of the pool's backlog
        self._room = self.max_buffered - self._reserved

    async def _idle(self, worker: Worker) -> bool:
        """Sleep until there is work; False when this worker should exit (retired)."""
        event = self._work_event
        assert event is not None
        retire = len(self._workers) > self.min_workers
        self._sleepers += 1
        if self._sleepers >= len(self._workers):  # the last busy worker: join(), quit() and submit() wait for it
            self._notify()
        if not retire:  # no deadline: a cancel scope per wait would cost more than a no-op task
            await event.wait()
            return True
        with anyio.move_on_after(self.scale_down_after) as scope:
            await event.wait()
        if scope.cancelled_caught and not self._queue and len(self._workers) > self.min_workers:
            self._sleepers = max(0, self._sleepers - 1)
            self._scale_downs += 1
            self._log_event("debug", "dispatcher scaled down", workers=len(self._workers) - 1)
            return False
        if scope.cancelled_caught:
            self._sleepers = max(0, self._sleepers - 1)
        return True

    # -- tasks that will not run --------------------------------------------------------

    def _take_queued(self) -> list[Any]:
        taken = [task_of(item) for item in self._queue]
        self._queue.clear()
        taken += self._pool.take_queued()
        self._handed_back += len(taken)
        for task in taken:
            handed_back(task)
        return taken

    def _withdraw(self, owned: Callable[[Any], bool]) -> list[Any]:
        """Take out of the queue the tasks whose owner (a job) ``owned`` accepts; those owners.

        The Redis backend hands them back to the stream; the pool counts them
        as handed back without listing them (they are not lost: another
        replica runs them).
        """

        def mine(task: Any) -> bool:
            job = job_of(task)
            return job is not None and owned(job)

        kept: list[Any] = []
        taken: list[Any] = []
        for item in self._queue:
            task = task_of(item)
            if mine(task):
                taken.append(task)
            else:
                kept.append(item)
        if taken:
            self._queue.clear()
            self._queue.extend(kept)
        taken += self._pool.take_queued(mine)  # plain ones a worker already handed to the threads
        self._handed_back += len(taken)
        return [job_of(task) for task in taken]

    def _hand_back(self, tasks: list[Any]) -> None:
        self._handed.extend(tasks)
        self._handed_back += len(tasks)
        for task in tasks:
            handed_back(task)

    def _on_thread_failure(self, task: Any, error: BaseException) -> None:
        if type(error) is not Reported:
            self._log_event("error", "task failed", task=describe(task), exc_info=error)
