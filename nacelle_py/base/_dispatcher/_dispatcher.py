"""Dispatcher: the worker pool as an ordinary Process, with its run/quit/join lifecycle.

Every accepted task ends in exactly one outcome (completed, failed, timed
out) or is handed back: by ``quit(drain=False)`` (returned) or by an unwind
that cancels ``run()`` (``handed_back``).
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import structlog

from ..._components import Process
from ..._errors import RegistrationError
from ..._health import Health, HealthComponent
from ..._inject import Inject
from ..._validate import positive
from ..._waker import Waker
from ._monitor import monitor
from ._items import task_of
from ._pool import WorkerPool
from ._state import DRAINING, RUNNING, STOPPED, STOPPING, DispatcherStatus, Phase
from ._stats import DispatcherError, DispatcherStats, pool_stats

__all__ = ["Dispatcher"]

DEFAULT_TASK_TIMEOUT = 10.0


def _check_positive(name: str, value: object, *, integer: bool, allow_none: bool = False) -> Any:
    return positive("Dispatcher", name, value, integer=integer, allow_none=allow_none)


class Dispatcher(WorkerPool, Process):
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
        self.max_buffered = _check_positive("max_buffered", max_buffered, integer=True)
        self.min_workers = _check_positive("min_workers", min_workers, integer=True)
        self.max_workers = _check_positive("max_workers", max_workers, integer=True)
        if self.min_workers > self.max_workers:
            raise RegistrationError(
                f"Dispatcher: min_workers ({min_workers}) must not exceed max_workers ({max_workers})"
            )
        self.task_timeout = _check_positive("task_timeout", task_timeout, integer=False, allow_none=True)
        self.scale_down_after = _check_positive("scale_down_after", scale_down_after, integer=False)
        self.max_threads = _check_positive("max_threads", max_threads, integer=True)
        self.saturated_after = _check_positive("saturated_after", saturated_after, integer=False)
        self._init_pool()
        self._stopped: anyio.Event | None = None
        self._health: HealthComponent | None = None
        self._exit_stack: Any = None

    # -- the public surface -----------------------------------------------------------

    @property
    def status(self) -> DispatcherStatus:
        """STOPPED, RUNNING, DRAINING or STOPPING."""
        return self._state.status

    @property
    def handed_back(self) -> list[Any]:
        """Tasks an unwind took back without running them (``quit`` returns its own)."""
        return list(self._handed)

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
            if self._state.phase is Phase.NEW:
                self._move(phase=Phase.ENDED)
            self._log_event("info", "dispatcher quit while stopped", handed_back=len(handed))
            return handed
        try:
            if drain and self._state.status != STOPPING:
                self._move(DRAINING)
                self._wake()
                await self.join()
            else:
                self._move(STOPPING)
                handed = self._take_queued()
                while self._running() or self._pool.running():
                    await self._wait_changed(0.05)
        except BaseException:
            # The caller gave up quitting (a cancelled quit): the dispatcher runs on, and
            # tasks already taken back stay findable with the unwind's.
            self._handed.extend(handed)
            if self._tg is not None and self._state.phase is Phase.RUNNING:
                self._move(RUNNING)
            raise
        if self._state.phase in (Phase.RUNNING, Phase.QUITTING):
            self._move(phase=Phase.QUITTING)
        self._notify()
        if self._stopped is not None:
            await self._stopped.wait()
        return handed

    async def join(self) -> None:
        """Wait until every task accepted so far has an outcome (nothing queued or running).

        Before the first ``run()`` it waits for the run to start; after a run
        has ended, with tasks still queued, it raises ``DispatcherError`` (no
        worker would ever finish them).
        """
        while self._queue or self._running() or self._pool.pending():
            if self._state.was_quit and self._tg is None and self._queue:
                raise DispatcherError(
                    "Dispatcher.join: the dispatcher is not running and tasks are queued; call run() first"
                )
            await self._wait_changed(0.05)

    def stats(self) -> DispatcherStats:
        """A snapshot of the counters, the pool's size and the recent dispatch-to-start latencies."""
        return pool_stats(self)

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
        self._log = vars(self).get("logger") or structlog.get_logger().bind(component="dispatcher")
        self._pool.reopen()  # exit requests left from the last run would take new tasks' threads
        self._move(RUNNING, Phase.RUNNING)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._waker.pump)
                for _ in range(self.min_workers):
                    self._spawn()
                # Tasks queued before run() get workers at once, up to the maximum.
                for _ in range(min(len(self._queue), self.max_workers) - self.min_workers):
                    self._scale_up()
                tg.start_soon(monitor, self)
                if self._health is not None:
                    self._health.update(True)
                while not self._state.quitting:
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
        self._move(phase=Phase.CLOSED)

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

    def _unwound(self) -> None:
        """After run() ends: by quit (nothing left) or by cancellation (hand back what is left)."""
        quit_asked = self._state.quitting
        leftover = [task_of(item) for item in self._queue] if not quit_asked else []
        if leftover:
            self._queue.clear()
        if not quit_asked:
            leftover += self._pool.take_queued()
        if leftover:
            self._hand_back(leftover)
            self._log_event("warning", "dispatcher unwound with tasks not run", handed_back=len(leftover))
        self._pool.close()
        self._tg = None
        self._sleepers = 0
        self._update_scale_at()
        # An unwind that cancelled run() closes the dispatcher: nothing will run what comes next.
        self._move(STOPPED, Phase.ENDED if quit_asked else Phase.CLOSED)
        if self._health is not None and self._health.healthy:
            self._health.update(False, "stopped")
        self._loop_thread = self._token = None  # not running: any thread may queue
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.close()
        stopped = self._stopped
        if stopped is not None:
            stopped.set()
