"""The blocked-loop detector: a warning with the blocking stack when the event loop stops running.

A task on the loop notes the time every ``step`` seconds (the heartbeat); a
daemon thread looks at that note every ``step`` seconds too. When the next
beat is more than ``LOOP_BLOCK_WARN`` seconds late, the loop has not run for
that long, and whatever it is running right now is what blocks it: the
thread samples the loop thread's stack (``sys._current_frames()``) and logs
one warning with it, and counts it (``nacelle_loop_blocked_total``). One
warning per blocked stretch, which makes it at most one per
``LOOP_BLOCK_WARN`` seconds: a new stretch is seen only that long after it
began, which is after the last one ended. When the loop runs again, an info
line says how long the stretch lasted in all.

A sample that finds the loop in its I/O wait is dropped: the loop was idle
and only its timers were late, which is what a paused process (SIGSTOP, a
suspended VM) looks like afterwards; it is not a block to report.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ._stacks import format_frame, is_idle

__all__ = ["JOIN_TIMEOUT", "THREAD_NAME", "LoopWatch"]

THREAD_NAME = "nacelle loop watch"
JOIN_TIMEOUT = 1.0
"""Seconds the end of ``serve()`` waits for the watching thread (it ends within one ``step``)."""


def step_for(threshold: float) -> float:
    """How often the loop beats and the thread looks: a fifth of the threshold, within 10 to 100 ms."""
    return min(max(threshold / 5, 0.01), 0.1)


class LoopWatch:
    """Watches one event loop for as long as ``running()`` lasts; ``blocked`` counts the blocked stretches."""

    def __init__(self, threshold: float | None, logger: Any) -> None:
        self.threshold = threshold  # None: off
        self.blocked = 0
        self._log = logger
        self._beat = time.monotonic()  # written by the loop, read by the thread: a float, swapped whole

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Beat on the loop and watch from a thread for the length of the block (nothing if off)."""
        threshold = self.threshold
        if threshold is None:
            yield
            return
        step = step_for(threshold)
        stop = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(threading.get_ident(), threshold, step, stop), name=THREAD_NAME, daemon=True
        )
        self._beat = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat, step, name="nacelle loop heartbeat")
            watcher.start()
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                stop.set()
                # It wakes from stop.wait() at once; the bound is for a logger stuck on a full pipe.
                watcher.join(JOIN_TIMEOUT)
                if watcher.is_alive():
                    self._log.warning("the loop watch thread did not end; abandoned", timeout=JOIN_TIMEOUT)

    async def _heartbeat(self, step: float) -> None:
        while True:
            self._beat = time.monotonic()
            await anyio.sleep(step)

    def _watch(self, loop_thread: int, threshold: float, step: float, stop: threading.Event) -> None:
        reported: float | None = None  # the last beat before the stretch being reported, if any
        while not stop.wait(step):
            beat = self._beat
            late = time.monotonic() - beat - step
            if late <= threshold:
                if reported is not None and beat != reported:  # it beat again: the stretch is over
                    took = beat - reported - step
                    self._log.info("event loop running again", blocked_ms=round(took * 1000))
                    reported = None
                continue
            if reported is not None:
                continue  # one warning per stretch
            frame = sys._current_frames().get(loop_thread)
            if frame is None or is_idle(frame):
                continue
            try:
                stack = format_frame(frame)
            finally:
                del frame  # a frame holds its locals alive
            reported = beat
            self.blocked += 1
            self._log.warning("event loop blocked", blocked_ms=round(late * 1000), threshold=threshold, stack=stack)
