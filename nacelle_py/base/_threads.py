"""The dispatcher's pool of daemon threads for plain-function tasks.

One shared ``SimpleQueue`` feeds up to ``max_threads`` threads, started only
when a task waits and no thread is idle, and retired after ``idle_timeout``.
Outcomes are counted per thread (no shared counter to lock); a thread whose
task overran its timeout is abandoned: the task is counted as timed out by
the dispatcher's monitor, the pool may start a replacement, and the thread
exits once the function finally returns.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadPool", "ThreadSlot"]

_STOP = object()
Item = tuple[Callable[[], Any], "float | None", float, Any]  # (function, timeout, dispatched at, task)


class ThreadSlot:
    """One pool thread: its current task and its own outcome counters."""

    __slots__ = ("abandoned", "completed", "failed", "lock", "started", "task", "timed_out", "timeout")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.task: Item | None = None
        self.started = 0.0
        self.timeout: float | None = None
        self.timed_out = False
        self.abandoned = False
        self.completed = 0
        self.failed = 0


class ThreadPool:
    """Runs plain functions on daemon threads; see the module docstring."""

    def __init__(
        self,
        max_threads: int,
        idle_timeout: float,
        default_timeout: float | None,
        on_failure: Callable[[Any, BaseException], None],
        on_idle: Callable[[], None],
    ) -> None:
        self.max_threads = max_threads
        self.idle_timeout = idle_timeout
        self.default_timeout = default_timeout
        self._on_failure = on_failure
        self._on_idle = on_idle
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.slots: list[ThreadSlot] = []  # live (not abandoned) threads
        self.retired: list[ThreadSlot] = []  # their counters still count
        self._idle = 0
        self._stops = 0  # exit requests queued for threads
        self.submitted = 0
        self.timed_out = 0  # counted on the loop thread by the monitor
        self.latencies: collections.deque[float] = collections.deque(maxlen=1024)
        self.started_threads = 0
        self.retired_threads = 0

    def submit(self, item: Item) -> None:
        """Queue one task; start a thread if none is idle and the limit allows."""
        self.submitted += 1
        self._queue.put(item)
        if self._idle == 0:
            with self._lock:
                if self._idle == 0 and len(self.slots) < self.max_threads:
                    self._start_locked()

    def _start_locked(self) -> None:
        slot = ThreadSlot()
        self.slots.append(slot)
        self.started_threads += 1
        threading.Thread(target=self._work, args=(slot,), name="nacelle dispatcher thread", daemon=True).start()

    def pending(self) -> int:
        """Tasks submitted that have no outcome yet (queued or running)."""
        finished = self.timed_out
        with self._lock:
            for slot in self.slots + self.retired:
                finished += slot.completed + slot.failed
        return self.submitted - finished

    def queued(self) -> int:
        """Tasks waiting for a thread."""
        size: int = self._queue.qsize() - self._stops
        return max(0, size)

    def running(self) -> int:
        """Threads running a task."""
        return sum(1 for slot in self.slots if slot.task is not None)

    def take_queued(self) -> list[Any]:
        """Remove and return the tasks no thread has taken yet (they will never run)."""
        taken = []
        stops = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stops += 1
            else:
                taken.append(item[3])
        for _ in range(stops):  # exit requests are not tasks: they go back
            self._queue.put(_STOP)
        self.submitted -= len(taken)
        return taken

    def check_timeouts(self, now: float) -> list[Any]:
        """Mark overdue tasks timed out and abandon their threads; returns those tasks."""
        overdue = []
        with self._lock:
            for slot in list(self.slots):
                with slot.lock:
                    item = slot.task
                    if item is None or slot.timed_out or slot.timeout is None:
                        continue
                    if now - slot.started < slot.timeout:
                        continue
                    slot.timed_out = True
                    slot.abandoned = True
                self.slots.remove(slot)
                self.retired.append(slot)
                self.timed_out += 1
                overdue.append(item[3])
            if overdue and self._queue.qsize():
                while len(self.slots) < self.max_threads and len(self.slots) < self._queue.qsize():
                    self._start_locked()
        return overdue

    def next_deadline(self) -> float | None:
        """The earliest monotonic time at which a running task times out."""
        deadlines = [s.started + s.timeout for s in self.slots if s.task is not None and s.timeout is not None]
        return min(deadlines) if deadlines else None

    def close(self) -> None:
        """Ask every live thread to exit once the queue ahead of the request is done."""
        with self._lock:
            for _ in self.slots:
                self._stops += 1
                self._queue.put(_STOP)

    def _work(self, slot: ThreadSlot) -> None:
        get = self._queue.get
        while True:
            with self._lock:
                self._idle += 1
            try:
                item = get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._queue.qsize() == 0 and slot in self.slots:
                        self.slots.remove(slot)
                        self.retired.append(slot)
                        self.retired_threads += 1
                        return
                continue
            with self._lock:
                self._idle -= 1
            if item is _STOP:
                with self._lock:
                    self._stops -= 1
                    if slot in self.slots:
                        self.slots.remove(slot)
                        self.retired.append(slot)
                return
            function, timeout, dispatched, _task = item
            if dispatched:  # only sampled tasks carry their dispatch time
                self.latencies.append(time.perf_counter() - dispatched)
            with slot.lock:
                slot.task = item
                slot.started = time.monotonic()
                slot.timeout = self.default_timeout if timeout is None else timeout
            error: BaseException | None = None
            try:
                function()
            except Exception as exc:  # counted and logged; the thread lives on
                error = exc
            with slot.lock:
                counted = not slot.timed_out
                if counted:
                    if error is None:
                        slot.completed += 1
                    else:
                        slot.failed += 1
                slot.task = None
                abandoned = slot.abandoned
            if error is not None and counted:
                self._on_failure(item[3], error)
            if counted and self._queue.qsize() == 0:
                self._on_idle()
            if abandoned:
                return
