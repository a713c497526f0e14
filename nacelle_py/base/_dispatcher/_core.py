"""The state every part of a dispatcher's pool shares, and the one place that changes its status.

The pool is three layers over one set of fields, each in its own module:
``PoolState`` (here: the fields, the status mover, waking and waiting),
``Intake`` (how tasks come in: ``dispatch``, ``submit``) and ``WorkerPool``
(the workers that run them). They share fields rather than calling each
other, because the per-task path must not pay a call per layer.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from typing import Any

import anyio

from ..._waker import Waker
from ._items import Worker
from ._latency import LatencyRing
from ._state import DispatcherStatus, Phase, RunState
from ._threads import ThreadPool

__all__ = ["PoolState"]


class PoolState:
    """The fields of a pool (see the module docstring) and the moves that need no worker."""

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

    def _note_timeout(self, value: float | None) -> None:
        """A task may have ``value`` as its timeout: the monitor looks often enough to honour it."""
        if value is not None and value < self._min_timeout:
            self._min_timeout = value
            if self._monitor_kick is not None:
                self._monitor_kick.set()

    # -- provided by the layers above ----------------------------------------------------

    def _scale_up(self) -> None:
        raise NotImplementedError

    def _check_task_timeout(self, timeout: Any) -> float | None:
        raise NotImplementedError

    def _on_thread_failure(self, task: Any, error: BaseException) -> None:
        raise NotImplementedError
