"""Dispatcher: an autoscaling worker pool that is also an ordinary Process.

The hot path is built to cost no more than a hand-written pool over a queue:

- ``dispatch`` appends to a deque and wakes sleeping workers only when there
  are any; a worker drains the deque in a tight loop and awaits each task
  directly, so a task that does not block costs no scheduler round-trip.
- Per-task timeouts use no cancel scope per task (one costs more than a whole
  no-op task). Each worker runs under one cancel scope; a monitor task looks
  at what every worker is running, a few times per timeout, and cancels the
  worker's scope when one task has run too long. The worker counts that task
  as timed out and carries on under a fresh scope.
- Plain functions go to a pool of daemon threads (``_threads``), bounded by
  ``max_threads``.

Every accepted task ends in exactly one outcome (completed, failed, timed
out) or is handed back: by ``quit(drain=False)`` (returned) or by an unwind
that cancels ``run()`` (``handed_back``).
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple

import anyio
import anyio.from_thread
import anyio.lowlevel
import structlog

from .._components import Process
from .._errors import RegistrationError
from .._health import Health, HealthComponent
from .._inject import Inject
from .._validate import positive
from .._waker import Waker
from ._latency import LatencyRing
from ._threads import ThreadPool

__all__ = ["Dispatcher", "DispatcherError", "DispatcherStats", "DispatcherStatus"]

DEFAULT_TASK_TIMEOUT = 10.0
_UNSET: Any = object()
_CO_COROUTINE = inspect.CO_COROUTINE
_perf_counter = time.perf_counter
_get_ident = threading.get_ident


class DispatcherStatus(enum.IntEnum):
    """What the dispatcher is doing (the Go package's values).

    Compares equal to its int value and, for convenience, to its name:
    ``d.status == DispatcherStatus.RUNNING == 2 == "RUNNING"``.
    """

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.name == other.upper()
        return int.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = int.__hash__

    def __str__(self) -> str:
        return self.name

    STOPPED = 0
    """Not running; dispatched tasks wait in the buffer."""
    STOPPING = 1
    """``quit(drain=False)``: running tasks finish, queued ones are handed back."""
    RUNNING = 2
    """Accepting and executing tasks."""
    DRAINING = 3
    """``quit(drain=True)``: no new tasks; everything accepted runs to an outcome."""


STOPPED, STOPPING, RUNNING, DRAINING = (
    DispatcherStatus.STOPPED,
    DispatcherStatus.STOPPING,
    DispatcherStatus.RUNNING,
    DispatcherStatus.DRAINING,
)


class DispatcherError(RuntimeError):
    """A dispatcher call that cannot be honoured (``submit`` while quitting, say)."""


class DispatcherStats(NamedTuple):
    """A snapshot of a dispatcher's counters.

    ``accepted == completed + failed + timed_out + handed_back + queued + running``
    at every quiet moment: nothing accepted is lost.
    """

    status: DispatcherStatus
    accepted: int
    rejected: int
    queued: int
    running: int
    completed: int
    failed: int
    timed_out: int
    handed_back: int
    workers: int
    threads: int
    scale_ups: int
    scale_downs: int
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None

    @property
    def succeeded(self) -> int:
        """Tasks that completed without an error (the same as ``completed``)."""
        return self.completed

    @property
    def queue_depth(self) -> int:
        """Tasks accepted and not started (the same as ``queued``)."""
        return self.queued

    def __getitem__(self, key: Any) -> Any:
        """Fields by name too: ``stats()["completed"]``."""
        if isinstance(key, str):
            try:
                return getattr(self, key)
            except AttributeError:
                raise KeyError(key) from None
        return tuple.__getitem__(self, key)


class _Worker:
    """One worker's state, read by the monitor: the item it runs and how many it has finished."""

    __slots__ = ("done", "item", "scope", "seen_at", "seen_done", "timing_out")

    def __init__(self) -> None:
        self.item: Any = None  # the queue item being run; None while idle
        self.scope: anyio.CancelScope | None = None
        self.done = 0  # tasks that ended completed or failed: also the monitor's "same task?" token
        self.seen_done = -1
        self.seen_at = 0.0
        self.timing_out = False  # the monitor cancelled this worker's scope for its current task


def _task_of(item: Any) -> Any:
    """Queue items are the bare task, or ``(task, timeout, dispatched_at)`` when either is set."""
    return item[0] if type(item) is tuple else item


def _check_positive(name: str, value: object, *, integer: bool, allow_none: bool = False) -> Any:
    return positive("Dispatcher", name, value, integer=integer, allow_none=allow_none)


def _resolve(task: Any) -> tuple[Callable[[], Any], bool]:
    """The callable to run for a task and whether it is a coroutine function."""
    execute = getattr(task, "execute", None)
    function = execute if execute is not None and not inspect.isfunction(task) else task
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    if code is not None:
        return function, bool(code.co_flags & _CO_COROUTINE)
    return function, inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)
    )


class Dispatcher(Process):
    """An autoscaling pool of workers that run tasks; register it as a process or use it standalone.

    ``dispatch(task)`` never blocks: it queues up to ``max_buffered`` tasks
    (also before ``run`` starts) and returns False, counted, when the buffer
    is full. A task is an async callable, an object with ``execute()`` (async
    or not), or a plain function (run on one of ``max_threads`` daemon
    threads). Each task is bounded by ``task_timeout`` (or its own
    ``timeout``); failures and timeouts are logged and counted and never stop
    a worker. Workers scale from ``min_workers`` up to ``max_workers`` while
    tasks wait, and idle ones retire after ``scale_down_after`` seconds. The
    health key (the component's name) turns healthy once the workers run, and
    unhealthy while the pool is saturated for longer than ``saturated_after``.
    """

    health: Health | None = Inject("health", optional=True)
    logger: Any = Inject("logger", optional=True)

    STOPPED = DispatcherStatus.STOPPED
    STOPPING = DispatcherStatus.STOPPING
    RUNNING = DispatcherStatus.RUNNING
    DRAINING = DispatcherStatus.DRAINING

    def __init__(
        self,
        max_buffered: int = 1000,
        min_workers: int = 1,
        max_workers: int = 64,
        task_timeout: float | None = DEFAULT_TASK_TIMEOUT,
        scale_down_after: float = 300.0,
        *,
        max_threads: int = 16,
        saturated_after: float = 30.0,
    ) -> None:
        self.max_buffered: int = _check_positive("max_buffered", max_buffered, integer=True)
        self.min_workers: int = _check_positive("min_workers", min_workers, integer=True)
        self.max_workers: int = _check_positive("max_workers", max_workers, integer=True)
        if self.min_workers > self.max_workers:
            raise RegistrationError(
                f"Dispatcher: min_workers ({min_workers}) must not exceed max_workers ({max_workers})"
            )
        self.task_timeout: float | None = _check_positive("task_timeout", task_timeout, integer=False, allow_none=True)
        self.scale_down_after: float = _check_positive("scale_down_after", scale_down_after, integer=False)
        self.max_threads: int = _check_positive("max_threads", max_threads, integer=True)
        self.saturated_after: float = _check_positive("saturated_after", saturated_after, integer=False)
        self._queue: deque[tuple[Any, Any, float]] = deque()
        self._status = STOPPED
        self._accepting = True  # False while draining or stopping: dispatch is rejected
        self._accepted = 0
        self._rejected = 0
        self._failed = 0
        self._timed_out = 0
        self._handed_back = 0
        self._handed: list[Any] = []
        self._workers: set[_Worker] = set()
        self._retired_done = 0  # finished tasks of workers that have exited
        self._sleepers = 0
        self._scale_ups = 0
        self._scale_downs = 0
        self._latency = LatencyRing()
        self._min_timeout = task_timeout if task_timeout is not None else math.inf
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
        self._stopped: anyio.Event | None = None
        self._quit_requested = False
        self._was_quit = False  # a run ended and no run has started since
        self._closed = False  # stopped for good (stop() or an unwind): dispatch is refused
        self._health: HealthComponent | None = None
        self._log: Any = None
        self._exit_stack: Any = None

    # -- the public surface -----------------------------------------------------------

    @property
    def status(self) -> DispatcherStatus:
        """STOPPED, RUNNING, DRAINING or STOPPING."""
        return self._status

    @property
    def handed_back(self) -> list[Any]:
        """Tasks an unwind took back without running them (``quit`` returns its own)."""
        return list(self._handed)

    def dispatch(self, task: Any, *, timeout: float | None = _UNSET) -> bool:
        """Queue ``task`` without blocking; False (and counted as rejected) when it cannot be taken.

        ``timeout`` overrides ``task_timeout`` for this task (``None``: no limit).
        From another thread while the dispatcher runs, the call hops to the
        event loop's thread (one blocking round-trip) and answers the same.
        """
        if timeout is not _UNSET or not callable(task):
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
        queue.append(task if accepted & 15 else (task, _UNSET, _perf_counter()))
        self._accepted = accepted + 1
        if self._sleepers:
            self._wake()
        elif waiting >= self._scale_at:  # no idle worker: the task would wait
            self._scale_up()
        return True

    def _has_room(self) -> bool:
        """The exact check behind the fast path's: refresh the thread pool's share of the buffer."""
        if not self._accepting:
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
        if timeout is not _UNSET:
            timeout = self._check_task_timeout(timeout)
        if self._loop_thread is not None and _get_ident() != self._loop_thread:
            return self._from_thread(task, timeout)
        queue = self._queue
        if len(queue) >= self._room and not self._has_room():
            self._rejected += 1
            return False
        queue.append((task, timeout, _perf_counter()))
        self._accepted += 1
        if self._sleepers:
            self._wake()
        elif len(queue) > self._scale_at:
            self._scale_up()
        return True

    async def submit(self, task: Any, *, timeout: float | None = _UNSET) -> None:
        """Queue ``task``, waiting for room in the buffer (backpressure) instead of failing.

        Raises ``DispatcherError`` if the dispatcher drains or stops meanwhile,
        or if it has been quit and the buffer is full (nothing would make room
        until ``run()`` is called again).
        """
        while True:
            if not self._accepting:
                raise DispatcherError("Dispatcher.submit: the dispatcher is quitting and accepts no new tasks")
            if self.dispatch(task, timeout=timeout):
                return
            self._rejected -= 1  # waiting for room is not a rejection
            if self._was_quit and self._tg is None:
                raise DispatcherError(
                    "Dispatcher.submit: the dispatcher was quit and its buffer is full; "
                    "nothing makes room until run() is called again"
                )
            await self._wait_changed(0.05)

    async def quit(self, drain: bool = True) -> list[Any]:
        """Stop the dispatcher; returns the tasks that will never run.

        ``drain=True`` runs everything already accepted first; ``drain=False``
        lets running tasks finish and hands back the queued ones. Called while
        not running, it hands back everything queued.
        """
        if not isinstance(drain, bool):
            raise TypeError(f"Dispatcher.quit(drain=...) takes a bool, got {drain!r}")
        handed: list[Any] = []
        if self._tg is None:
            handed = self._take_queued()
            self._was_quit = True
            self._log_event("info", "dispatcher quit while stopped", handed_back=len(handed))
            return handed
        try:
            if drain and self._status != STOPPING:
                self._set_status(DRAINING)
                self._wake()
                await self.join()
            else:
                self._set_status(STOPPING)
                handed = self._take_queued()
                while self._running() or self._pool.running():
                    await self._wait_changed(0.05)
        except BaseException:
            # The caller gave up quitting (a cancelled quit): the dispatcher runs on, and
            # tasks already taken back stay findable with the unwind's.
            self._handed.extend(handed)
            if self._tg is not None and not self._quit_requested:
                self._set_status(RUNNING)
            raise
        self._quit_requested = True
        self._notify()
        if self._stopped is not None:
            await self._stopped.wait()
        self._was_quit = True
        return handed

    async def join(self) -> None:
        """Wait until every task accepted so far has an outcome (nothing queued or running).

        Before the first ``run()`` it waits for the run to start; after a run
        has ended, with tasks still queued, it raises ``DispatcherError`` (no
        worker would ever finish them).
        """
        while self._queue or self._running() or self._pool.pending():
            if self._was_quit and self._tg is None and self._queue:
                raise DispatcherError(
                    "Dispatcher.join: the dispatcher is not running and tasks are queued; call run() first"
                )
            await self._wait_changed(0.05)

    def stats(self) -> DispatcherStats:
        """A snapshot of the counters, the pool's size and the recent dispatch-to-start latencies."""
        pool = self._pool
        failed, timed_out = self._failed, self._timed_out
        completed = self._retired_done + sum(w.done for w in self._workers) - self._failed
        queued = len(self._queue)
        running = self._running()
        for slot in pool.slots + pool.retired:
            completed += slot.completed
            failed += slot.failed
        timed_out += pool.timed_out
        threads = len(pool.slots)
        queued += pool.queued()
        running += pool.running()
        p50, p90, p99 = self._latency.percentiles(0.5, 0.9, 0.99, extra=list(pool.latencies))
        return DispatcherStats(
            status=self._status,
            accepted=self._accepted,
            rejected=self._rejected,
            queued=queued,
            running=running,
            completed=completed,
            failed=failed,
            timed_out=timed_out,
            handed_back=self._handed_back,
            workers=len(self._workers),
            threads=threads,
            scale_ups=self._scale_ups,
            scale_downs=self._scale_downs,
            latency_p50=p50,
            latency_p90=p90,
            latency_p99=p99,
        )

    # -- as a Process -------------------------------------------------------------------

    async def init(self) -> None:
        """Register the health key (the component's name) when run under an App."""
        health = vars(self).get("health")
        if health is not None:
            self._health = health.register(health.owner or "dispatcher")

    async def run(self) -> None:
        """Run the workers until ``quit``; a second concurrent call waits for the first (reentrant)."""
        if self._tg is not None:
            assert self._stopped is not None
            await self._stopped.wait()
            return
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        self._stopped = anyio.Event()
        self._waker = Waker()
        self._work_event = anyio.Event()
        self._monitor_kick = anyio.Event()
        self._quit_requested = False
        self._was_quit = False
        self._closed = False
        self._log = vars(self).get("logger") or structlog.get_logger().bind(component="dispatcher")
        self._pool.reopen()  # exit requests left from the last run would take new tasks' threads
        self._set_status(RUNNING)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._waker.pump)
                for _ in range(self.min_workers):
                    self._spawn()
                # Tasks queued before run() get workers at once, up to the maximum.
                for _ in range(min(len(self._queue), self.max_workers) - self.min_workers):
                    self._scale_up()
                tg.start_soon(self._monitor)
                if self._health is not None:
                    self._health.update(True)
                while not self._quit_requested:
                    await self._wait_changed(None)
                tg.cancel_scope.cancel()
        finally:
            self._unwound()

    async def stop(self) -> None:
        """Drain: everything accepted runs before ``run`` returns; then accept nothing more.

        Under an App no run follows a stop, so a task dispatched afterwards would
        never run: ``dispatch`` returns False instead (until ``run()`` is called again).
        """
        await self.quit(drain=True)
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._accepting = False
        self._room = -1

    # -- standalone ---------------------------------------------------------------------

    async def __aenter__(self) -> Dispatcher:
        self._exit_stack = anyio.create_task_group()
        await self._exit_stack.__aenter__()
        self._exit_stack.start_soon(self.run)
        while self._tg is None:
            await anyio.sleep(0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        stack, self._exit_stack = self._exit_stack, None
        failed = isinstance(exc, Exception)
        try:
            if self._tg is not None:
                with anyio.CancelScope(shield=failed):
                    await self.quit(drain=exc_type is None)
        finally:
            # The body's own error propagates as itself, not wrapped in the task
            # group's ExceptionGroup; cancellation still goes through the group.
            if failed:
                await stack.__aexit__(None, None, None)
            else:
                await stack.__aexit__(exc_type, exc, tb)
        return None

    # -- internals ----------------------------------------------------------------------

    def _check_task_timeout(self, timeout: Any) -> float | None:
        try:
            value: float | None = _check_positive("timeout", timeout, integer=False, allow_none=True)
        except RegistrationError as exc:  # at dispatch time this is a bad argument, not a bad registration
            raise (TypeError if "must be a number" in str(exc) else ValueError)(
                str(exc).replace("Dispatcher: timeout", "Dispatcher.dispatch: timeout")
            ) from None
        if value is not None and value < self._min_timeout:
            self._min_timeout = value
            if self._monitor_kick is not None:
                self._monitor_kick.set()
        return value

    def _set_status(self, status: DispatcherStatus) -> None:
        self._status = status
        self._accepting = status in (RUNNING, STOPPED) and not self._closed
        self._room = self.max_buffered - self._reserved if self._accepting else -1
        self._log_event("info", "dispatcher status", status=status.name)

    def _log_event(self, level: str, event: str, **fields: Any) -> None:
        log = self._log or vars(self).get("logger")
        if log is not None:
            getattr(log, level)(event, **fields)

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

    def _scale_up(self) -> None:
        if self._spawn():
            self._scale_ups += 1
            self._log_event("debug", "dispatcher scaled up", workers=len(self._workers))

    def _spawn(self) -> bool:
        """Start one worker; False when run() is ending (a worker started now would never run)."""
        if self._tg is None or self._tg.cancel_scope.cancel_called:
            return False
        worker = _Worker()
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

    async def _worker(self, worker: _Worker) -> None:
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
                    self._log_event("warning", "task timed out", task=repr(_task_of(item)))
        finally:
            self._workers.discard(worker)
            self._retired_done += worker.done
            self._update_scale_at()
            if worker.item is not None:  # cancelled by an unwind while running a task
                self._hand_back([_task_of(worker.item)])
                worker.item = None
            self._notify()

    async def _work(self, worker: _Worker) -> None:
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
                    function, is_async = _resolve(task)
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
                    self._log_event("error", "task failed", task=repr(task), exc_info=exc)
                except BaseException as exc:
                    if worker.timing_out or anyio.current_effective_deadline() == -math.inf:
                        raise  # our timeout, or the dispatcher itself is being cancelled
                    # A cancellation of the task's own (it awaited a future someone else
                    # cancelled), or a SystemExit: that task's failure, not the worker's end.
                    self._failed += 1
                    self._log_event("error", "task failed", task=repr(task), exc_info=exc)
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
            task, timeout, dispatched = item, _UNSET, 0.0
        self._pool.submit((function, self.task_timeout if timeout is _UNSET else timeout, dispatched, task))
        self._reserved += 1  # keep the fast path's room an over-estimate of the pool's backlog
        self._room = self.max_buffered - self._reserved

    async def _idle(self, worker: _Worker) -> bool:
        """Sleep until there is work; False when this worker should exit (retired)."""
        self._notify()  # quit() waits for workers to go idle
        event = self._work_event
        assert event is not None
        retire = len(self._workers) > self.min_workers
        self._sleepers += 1
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

    async def _monitor(self) -> None:
        """Timeouts, thread-pool timeouts, scale-up for queued work, and the saturation health."""
        saturated_since: float | None = None
        while True:
            tick = min(max(min(self._min_timeout, self.saturated_after) / 10, 0.005), 0.5)
            kick = self._monitor_kick
            assert kick is not None
            with anyio.move_on_after(tick):
                await kick.wait()
            if kick.is_set():
                self._monitor_kick = anyio.Event()
            now = time.monotonic()
            for worker in list(self._workers):
                item = worker.item
                if item is None:
                    continue
                if worker.seen_done != worker.done:  # another task since the last look
                    worker.seen_done, worker.seen_at = worker.done, now
                    continue
                limit = item[1] if type(item) is tuple and item[1] is not _UNSET else self.task_timeout
                if limit is not None and now - worker.seen_at >= limit and worker.scope is not None:
                    worker.timing_out = True
                    worker.scope.cancel()
            for task in self._pool.check_timeouts(now):
                self._log_event("warning", "task timed out in a thread", task=repr(task))
                self._notify()
            if self._queue and not self._sleepers:  # work waits and nobody is idle
                for _ in range(min(len(self._queue), self.max_workers - len(self._workers))):
                    self._scale_up()
            saturated = (
                bool(self._queue) and len(self._workers) >= self.max_workers and not self._sleepers
            ) or self._pool.saturated()
            saturated_since = (saturated_since or now) if saturated else None
            if self._health is not None:
                unhealthy = saturated_since is not None and now - saturated_since >= self.saturated_after
                if unhealthy == self._health.healthy:
                    self._health.update(
                        not unhealthy, "saturated: every worker busy and tasks waiting" if unhealthy else None
                    )
            if self._status == DRAINING:
                self._notify()

    def _take_queued(self) -> list[Any]:
        taken = [_task_of(item) for item in self._queue]
        self._queue.clear()
        taken += self._pool.take_queued()
        self._handed_back += len(taken)
        return taken

    def _hand_back(self, tasks: list[Any]) -> None:
        self._handed.extend(tasks)
        self._handed_back += len(tasks)

    def _on_thread_failure(self, task: Any, error: BaseException) -> None:
        self._log_event("error", "task failed", task=repr(task), exc_info=error)

    def _unwound(self) -> None:
        """After run() ends: by quit (nothing left) or by cancellation (hand back what is left)."""
        leftover = [_task_of(item) for item in self._queue] if not self._quit_requested else []
        if leftover:
            self._queue.clear()
        if not self._quit_requested:
            leftover += self._pool.take_queued()
        if leftover:
            self._hand_back(leftover)
            self._log_event("warning", "dispatcher unwound with tasks not run", handed_back=len(leftover))
        self._pool.close()
        self._tg = None
        self._sleepers = 0
        self._update_scale_at()
        self._set_status(STOPPED)
        if self._health is not None and self._health.healthy:
            self._health.update(False, "stopped")
        if not self._quit_requested:  # an unwind cancelled run(): nothing will run what comes next
            self._close()
        self._was_quit = True
        self._loop_thread = self._token = None  # not running: any thread may queue
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.close()
        stopped = self._stopped
        if stopped is not None:
            stopped.set()
