"""How tasks come into a dispatcher's pool: ``dispatch`` (never blocks) and ``submit`` (waits for room).

``dispatch`` appends to a deque and wakes sleeping workers only when there
are any; from another thread it hops to the event loop's. What the queue
holds is described in ``_items``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread

from ._core import PoolState
from ._items import UNSET
from ._stats import DispatcherError

__all__ = ["Intake"]

_perf_counter = time.perf_counter
_get_ident = threading.get_ident


class Intake(PoolState):
    """``dispatch``, ``submit`` and the internal ``_offer``/``_put`` of checked tasks."""

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

    def _offer_many(self, tasks: list[Callable[[], Any]], timeout: float | None = UNSET) -> int:
        """``_offer`` for several tasks at once; how many were taken (the first ones)."""
        queue = self._queue
        room = self._room - len(queue)
        if room < len(tasks) and self._has_room():  # the exact check refreshes the room
            room = self._room - len(queue)
        taken = tasks if room >= len(tasks) else tasks[: max(room, 0)]
        if not taken:
            return 0
        if timeout is UNSET:
            queue.extend(taken)
        else:
            now = _perf_counter()
            queue.extend((task, timeout, now) for task in taken)
        self._accepted += len(taken)
        if self._sleepers:
            self._wake()
        added = 0
        while len(queue) > self._scale_at and added < len(taken):  # as dispatch would, one per waiting task
            self._scale_up()
            added += 1
        return len(taken)

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
