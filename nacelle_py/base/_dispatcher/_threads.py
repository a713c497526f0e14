"""The dispatcher's pool of daemon threads for plain-function tasks.

One shared ``SimpleQueue`` feeds up to ``max_threads`` threads, started only
when a task waits and no thread is idle, and retired after ``idle_timeout``.

The per-task path takes no lock: with a dozen threads on a couple of cores a
shared lock taken per task turns into a queue of its own. Instead:

- idle threads are members of a set (``add`` and ``discard`` are atomic);
  ``submit`` puts the task *before* it looks for an idle thread, and a
  thread about to retire leaves the set *before* it looks at the queue, so
  a task is never left without a thread;
- a task's outcome is claimed by popping a one-element list: the thread
  that finished it and the monitor that declared it timed out race for the
  pop, and only the winner counts it.

A thread whose task overran cannot be interrupted: the monitor counts the
task as timed out, and the thread keeps its place (``max_threads`` is a
bound) and goes back to work once the function finally returns.
"""

from __future__ import annotations

import collections
import inspect
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..._histogram import Histogram

__all__ = ["ThreadPool", "ThreadSlot"]

_STOP = object()
Item = tuple[Callable[[], Any], "float | None", float, Any]  # (function, timeout, dispatched at or 0, task)


class ThreadSlot:
    """One pool thread: its current task, the claim on its outcome and its own counters."""

    __slots__ = ("claim", "completed", "failed", "latency", "started", "task", "timeout")

    def __init__(self) -> None:
        self.task: Item | None = None
        self.claim: list[int] = []
        self.started = 0.0
        self.timeout: float | None = None
        self.completed = 0
        self.failed = 0
        self.latency = Histogram()  # this thread's sampled dispatch-to-start latencies (it alone writes)


class ThreadPool:
    """Runs plain functions on daemon threads; see the module docstring."""

    def __init__(
        self,
        max_threads: int,
        idle_timeout: float,
        on_failure: Callable[[Any, BaseException], None],
        on_idle: Callable[[], None],
    ) -> None:
        self.max_threads = max_threads
        self.idle_timeout = idle_timeout
        self.on_failure = on_failure
        self.on_idle = on_idle
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # starting and retiring threads only
        self._idle: set[ThreadSlot] = set()
        self.slots: list[ThreadSlot] = []  # live threads
        self.retired: list[ThreadSlot] = []  # exited or abandoned: their counters still count
        self.submitted = 0
        self.timed_out = 0  # counted on the loop thread by the monitor
        self._stops = 0  # exit requests queued for threads
        self.latencies: collections.deque[float] = collections.deque(maxlen=1024)

    def submit(self, item: Item) -> None:
        """Queue one task; start a thread if none is idle and the limit allows."""
        self.submitted += 1
        self._queue.put(item)
        if not self._idle and len(self.slots) < self.max_threads:
            with self._lock:
                if not self._idle and len(self.slots) < self.max_threads:
                    self._start_locked()

    def _start_locked(self) -> None:
        slot = ThreadSlot()
        self.slots.append(slot)
        threading.Thread(target=self._work, args=(slot,), name="nacelle dispatcher thread", daemon=True).start()

    def _retire_locked(self, slot: ThreadSlot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
            self.retired.append(slot)

    def pending(self) -> int:
        """Tasks submitted that have no outcome yet (queued or running)."""
        finished = self.timed_out
        for slot in self.slots + self.retired:
            finished += slot.completed + slot.failed
        return self.submitted - finished

    def queued(self) -> int:
        """Tasks waiting for a thread."""
        size: int = self._queue.qsize() - self._stops
        return max(0, size)

    def running(self) -> int:
        """Threads running a task that still has no outcome."""
        return sum(1 for slot in self.slots if slot.task is not None and slot.claim)  # timed out: not counted

    def _drain(self) -> tuple[list[Item], int]:
        """Empty the queue: the tasks in order, and how many exit requests were in it."""
        items: list[Item] = []
        stops = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items, stops
            if item is _STOP:
                stops += 1
            else:
                items.append(item)

    def take_queued(self, which: Callable[[Any], bool] | None = None) -> list[Any]:
        """Remove and return the tasks no thread has taken yet (all, or those ``which`` accepts)."""
        items, stops = self._drain()
        kept = [] if which is None else [item for item in items if not which(item[3])]
        for item in kept:  # in their order, behind nothing: the loop's thread is the only producer
            self._queue.put(item)
        for _ in range(stops):  # exit requests are not tasks: they go back
            self._queue.put(_STOP)
        taken = items if not kept else [item for item in items if which(item[3])]  # type: ignore[misc]
        self.submitted -= len(taken)
        return [item[3] for item in taken]

    def check_timeouts(self, now: float) -> list[Any]:
        """Claim the outcome of overdue tasks as timed out; returns those tasks.

        The thread cannot be interrupted: it keeps its slot (``max_threads``
        stays a bound) and goes back to work, uncounted, once the function returns.
        """
        overdue = []
        for slot in list(self.slots):
            item, started, timeout, claim = slot.task, slot.started, slot.timeout, slot.claim
            if item is None or timeout is None or now - started < timeout or not claim:
                continue
            try:
                claim.pop()
            except IndexError:  # the thread finished it meanwhile
                continue
            self.timed_out += 1
            overdue.append(item[3])
        return overdue

    def saturated(self) -> bool:
        """Every thread busy, at the limit, with tasks waiting."""
        return len(self.slots) >= self.max_threads and not self._idle and self.queued() > 0

    def reopen(self) -> None:
        """Withdraw the exit requests of an earlier ``close()``: its threads serve the new run."""
        with self._lock:
            items, stops = self._drain()
            self._stops -= stops
            for item in items:
                self._queue.put(item)

    def close(self) -> None:
        """Ask every live thread to exit once the tasks queued before the request are done."""
        with self._lock:
            for _ in self.slots:
                self._stops += 1
                self._queue.put(_STOP)

    def _work(self, slot: ThreadSlot) -> None:
        get = self._queue.get
        idle = self._idle
        while True:
            idle.add(slot)
            try:
                item = get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    idle.discard(slot)  # leave the idle set before looking at the queue
                    if self._queue.qsize() == 0:
                        self._retire_locked(slot)
                        return
                continue
            idle.discard(slot)
            if item is _STOP:
                with self._lock:
                    self._stops -= 1
                    self._retire_locked(slot)
                return
            function, timeout, dispatched, task = item
            if dispatched:  # only sampled tasks carry their dispatch time
                waited = time.perf_counter() - dispatched
                self.latencies.append(waited)
                slot.latency.observe(waited)
            claim = [1]
            slot.claim = claim
            slot.timeout = timeout  # the dispatcher resolved the default; None: no limit
            slot.started = time.monotonic()
            slot.task = item  # last: the monitor reads task first, then the rest
            error: BaseException | None = None
            try:
                result = function()
            except BaseException as exc:  # SystemExit too: counted and logged; the thread lives on
                error = exc
            else:
                if inspect.isawaitable(result):  # a plain callable that returned a coroutine
                    if inspect.iscoroutine(result):
                        result.close()
                    error = TypeError(
                        f"{task!r} returned an awaitable from a plain call; dispatch the async function itself"
                    )
            slot.task = None
            try:
                claim.pop()
            except IndexError:  # the monitor counted it as timed out: back to work, uncounted
                continue
            if error is None:
                slot.completed += 1
            else:
                slot.failed += 1
                self.on_failure(task, error)
            if self._queue.qsize() == 0:
                self.on_idle()
