"""The worker pool: the queue, the workers that drain it, and how the pool grows and shrinks.

The hot path is built to cost no more than a hand-written pool over a queue:

- ``dispatch`` appends to a deque and wakes sleeping workers only when there
  are any; a worker drains the deque in a tight loop and awaits each task
  directly, so a task that does not block costs no scheduler round-trip.
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

import functools
import inspect
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread

from ..._waker import Waker
from ._call import Reported
from ._items import UNSET, Worker, describe, handed_back, resolve, task_of, timed_out
from ._latency import LatencyRing
from ._state import DispatcherStatus, Phase, RunState
from ._stats import DispatcherError
from ._threads import ThreadPool

__all__ = ["WorkerPool"]

_CO_COROUTINE = inspect.CO_COROUTINE
_perf_counter = time.perf_counter
_get_ident = threading.get_ident


class WorkerPool:
    """The pool half of a Dispatcher: queue, workers, scaling, thread hand-off and counters.

    The Dispatcher subclasses it (so ``dispatch`` is one method call, not two)
    and adds the lifecycle (``run``, ``quit``, ``join``) and the named tasks.
    """

    max_buffered: int
    min_workers: int
    max_workers: int
    task_timeout: float | None
    scale_down_after: float
    max_threads: int
    saturated_after: float

    def _init_pool(self) -> None:
        self._queue: deque[Any] = deque()
        self._state = RunState()
        self._accepted = 0
        self._rejected = 0
        self._failed = 0
        self._timed_out = 0
        self._handed_back = 0
        self._handed: list[Any] = []
        self._workers: set[Worker] = set()
        self._retired_done = 0  # finished tasks of workers that have exited
        self._sleepers = 0
        self._scale_ups = 0
        self._scale_downs = 0
        self._latency = LatencyRing()
        self._min_timeout = self.task_timeout if self.task_timeout is not None else math.inf
        self._pool = ThreadPool(self.max_threads, self.scale_down_after, self._on_thread_failure, self._on_thread_idle)
        # The fast path admits a task while len(queue) < _room: max_buffered less what the
        # thread pool may still hold (an over-estimate, corrected on the slow path), or -1
        # while not accepting. _scale_at: the queue length above which dispatch adds a worker.
        self._room: int = self.max_buffered
        self._reserved: int = 0
        self._scale_at = sys.maxsize
        self._tg: Any = None
        self._loop_thread: int | None = None  # while running: dispatch from elsewhere hops to it
        self._token: Any = None
        self._work_event: anyio.Event | None = None
        self._waker: Waker | None = None  # wakes join()/quit() waiters, also from pool threads
        self._monitor_kick: anyio.Event | None = None
        self._log: Any = None

    # -- dispatching --------------------------------------------------------------------

    def dispatch(self, task: Any, *, timeout: float | None = UNSET) -> bool:
        """Queue ``task`` without blocking; False (and counted as rejected) when it cannot be taken.

        ``timeout`` overrides ``task_timeout`` for this task (``None``: no limit).
        From another thread while the dispatcher runs, the call hops to the
        event loop's thread (one blocking round-trip) and answers the same.
        """
        if timeout is not UNSET or not callable(task):
            return self._dispatch_slow(task, timeout)
        if self._loop_thread is not None and _get_ident() != self._loop_thread:
            return self._from_thread(task, timeout)
        queue = self._queue
        waiting = len(queue)
        if waiting >= self._room and not self._has_room():
            self._rejected += 1
            return False
        accepted = self._accepted
        # One task in 16 carries its dispatch time: enough samples for the latency
        # percentiles, at a fraction of a clock read and a tuple per task.
        queue.append(task if accepted & 15 else (task, UNSET, _perf_counter()))
        self._accepted = accepted + 1
        if self._sleepers:
            self._wake()
        elif waiting >= self._scale_at:  # no idle worker: the task would wait
            self._scale_up()
        return True

    def _has_room(self) -> bool:
        """The exact check behind the fast path's: refresh the thread pool's share of the buffer."""
        if not self._state.accepting:
            return False
        self._reserved = self._pool.queued()
        self._room = self.max_buffered - self._reserved
        return len(self._queue) < self._room

    def _from_thread(self, task: Any, timeout: Any) -> bool:
        """``dispatch`` from another thread: hop to the event loop (one blocking round-trip).

        The queue, the counters and the workers' wake-up belong to the loop's
        thread; doing the dispatch there keeps them consistent.
        """
        token = self._token
        if token is None:
            raise DispatcherError("Dispatcher.dispatch: the dispatcher is not running on an event loop")
        try:
            accepted: bool = anyio.from_thread.run_sync(
                functools.partial(self.dispatch, task, timeout=timeout), token=token
            )
        except anyio.RunFinishedError:
            raise DispatcherError("Dispatcher.dispatch: the event loop has finished") from None
        return accepted

    def _dispatch_slow(self, task: Any, timeout: Any) -> bool:
        if not callable(task) and not callable(getattr(task, "execute", None)):
            raise TypeError(
                "Dispatcher.dispatch: a task is an async callable, a function or an object with execute(); "
                f"got {task!r}"
            )
        if timeout is not UNSET:
            timeout = self._check_task_timeout(timeout)
        if self._loop_thread is not None and _get_ident() != self._loop_thread:
            return self._from_thread(task, timeout)
        queue = self._queue
        if not self._offer(task, timeout):
            self._rejected += 1
            return False
        return True

    def _offer(self, task: Callable[[], Any], timeout: float | None = UNSET) -> bool:
        """Queue a task already checked (a named task's run, a call); False when there is no room.

        ``timeout``: UNSET for the dispatcher's ``task_timeout``, None for no
        limit. Not counted as a rejection: the caller decides (``_put`` waits).
        """
        queue = self._queue
        if len(queue) >= self._room and not self._has_room():
            return False
        queue.append(task if timeout is UNSET else (task, timeout, _perf_counter()))
        self._accepted += 1
        if self._sleepers:
            self._wake()
        elif len(queue) > self._scale_at:
            self._scale_up()
        return True

    async def _put(self, task: Callable[[], Any], timeout: float | None = UNSET) -> None:
        """``_offer``, waiting for room (``DispatcherError`` when the dispatcher stops accepting)."""
        while not self._offer(task, timeout):
            if not self._state.accepting:
                raise DispatcherError("Dispatcher: the dispatcher is stopping and accepts no new tasks")
            if self._state.was_quit and self._tg is None:
                raise DispatcherError(
                    "Dispatcher: the dispatcher was quit and its buffer is full; "
                    "nothing makes room until run() is called again"
                )
            await self._wait_changed(0.05)

    def _check_task_timeout(self, timeout: Any) -> float | None:
        raise NotImplementedError  # the Dispatcher checks it against its own option rules

    async def submit(self, task: Any, *, timeout: float | None = UNSET) -> None:
        """Queue ``task``, waiting for room in the buffer (backpressure) instead of failing.

        Raises ``DispatcherError`` if the dispatcher drains or stops meanwhile,
        or if it has been quit and the buffer is full (nothing would make room
        until ``run()`` is called again).
        """
        queue = self._queue
        waiting = len(queue)
        # The fast path of dispatch, inlined: a producer that awaits submit() for every task
        # pays no second call (see bench/dispatcher.py, the bounded case).
        if waiting < self._room and timeout is UNSET and self._loop_thread == _get_ident() and callable(task):
            accepted = self._accepted
            queue.append(task if accepted & 15 else (task, UNSET, _perf_counter()))
            self._accepted = accepted + 1
            if self._sleepers:
                self._wake()
            elif waiting >= self._scale_at:
                self._scale_up()
            return
        while True:
            if not self._state.accepting:
                raise DispatcherError("Dispatcher.submit: the dispatcher is quitting and accepts no new tasks")
            if self.dispatch(task, timeout=timeout):
                return
            self._rejected -= 1  # waiting for room is not a rejection
            if self._state.was_quit and self._tg is None:
                raise DispatcherError(
                    "Dispatcher.submit: the dispatcher was quit and its buffer is full; "
                    "nothing makes room until run() is called again"
                )
            await self._wait_changed(0.05)

    # -- the one place that changes the status ------------------------------------------

    def _move(self, status: DispatcherStatus | None = None, phase: Phase | None = None) -> None:
        """Move the run state (see ``_state``) and keep the fast path's room in step with it."""
        self._state.move(status, phase)
        self._room = self.max_buffered - self._reserved if self._state.accepting else -1
        if status is not None:
            self._log_event("info", "dispatcher status", status=status.name)

    def _log_event(self, level: str, event: str, **fields: Any) -> None:
        log = self._log or vars(self).get("logger")
        if log is not None:
            getattr(log, level)(event, **fields)

    # -- waking and waiting -------------------------------------------------------------

    def _wake(self) -> None:
        event = self._work_event
        if event is not None:
            self._sleepers = 0
            self._work_event = anyio.Event()
            event.set()

    def _notify(self) -> None:
        if self._waker is not None:
            self._waker.notify()

    def _on_thread_idle(self) -> None:
        waker = self._waker  # read once: run() may be ending on the loop thread
        if waker is not None:
            waker.notify()

    async def _wait_changed(self, poll: float | None) -> None:
        """Wait for the next notification (bounded by ``poll`` seconds when given)."""
        waker = self._waker
        if waker is None:  # not running: nothing will notify
            await anyio.sleep(0.05 if poll is None else poll)
            return
        with anyio.move_on_after(math.inf if poll is None else poll):
            await waker.changed()

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
        with anyio.move_on_after(self.scale_down_after if retire else math.inf) as scope:
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
        kept, taken = [], []
        for item in self._queue:
            owner = getattr(task_of(item), "__self__", None)
            if owner is not None and owned(owner):
                taken.append(owner)
            else:
                kept.append(item)
        if taken:
            self._queue.clear()
            self._queue.extend(kept)
            self._handed_back += len(taken)
        return taken

    def _hand_back(self, tasks: list[Any]) -> None:
        self._handed.extend(tasks)
        self._handed_back += len(tasks)
        for task in tasks:
            handed_back(task)

    def _on_thread_failure(self, task: Any, error: BaseException) -> None:
        if type(error) is not Reported:
            self._log_event("error", "task failed", task=describe(task), exc_info=error)
