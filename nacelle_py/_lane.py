"""Lane: one daemon thread that runs plain functions one after another, for a loop that awaits each.

The thread is a daemon of our own (as in ``nacelle_py._calls``): a plain
function blocked in I/O must not keep the interpreter alive at exit. One
long-lived thread per lane, not one per call: a pipeline's plain stage worker
and the Lambda listener's plain ``handle`` hand it every call. Cancelling
``run`` abandons the call in flight (nothing can interrupt a thread); the
owner then ``close()``s the lane and takes a new one, and the old thread
exits once its call returns. Completions wake the loop through the owner's
``Waker`` (a socket pair), which works the same on asyncio and trio.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

from ._waker import Waker

__all__ = ["Lane"]


class Lane:
    """One daemon thread that runs jobs one after another; ``await lane.run(job)`` waits for one."""

    def __init__(self, waker: Waker, name: str) -> None:
        self._waker = waker
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` on the lane's thread; return its result or raise its exception."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        box: list[Any] = []
        self._jobs.put((contextvars.copy_context(), job, box))
        waker = self._waker
        while not box:
            await waker.changed()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Let the thread exit after the job it runs (if any)."""
        if self._thread is not None:
            self._jobs.put(None)

    def _serve(self) -> None:
        jobs, notify = self._jobs, self._waker.notify
        while (entry := jobs.get()) is not None:
            context, job, box = entry
            try:
                box.append((True, context.run(job)))
            except BaseException as exc:  # handed to the loop and raised there
                box.append((False, exc))
            notify()
