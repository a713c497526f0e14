"""Plain-function stages: a daemon thread per stage worker (``Lane``), and the channel a plain root emits into.

A stopped or failed pipeline abandons a busy lane; it finishes its call and exits.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..._lane import Lane
from ..._waker import Waker

__all__ = ["Lane", "Outbox", "Stopped"]


class Stopped(BaseException):
    """Raised by a plain root's ``emit`` once the pipeline stops: it ends the root's function.

    A ``BaseException``, so that a root's ``except Exception`` does not swallow it.
    """


class Outbox:
    """What a plain root emits, from its thread to the loop: bounded, blocking the thread when full.

    The thread appends and wakes the loop only if the loop sleeps (it says so
    in ``sleeping`` before its last look at the queue, so a wake-up is never
    missed). ``emit`` raises ``Stopped`` once ``stop()`` was called.
    """

    def __init__(
        self,
        waker: Waker,
        cap: int,
        backlog: Callable[[], int] = lambda: 0,
        blocked: Callable[[], None] | None = None,
    ) -> None:
        self._waker = waker
        self.cap = cap
        self._backlog = backlog  # messages waiting downstream, counted against the same bound
        self._blocked = blocked  # told (on the thread) each time the thread is about to wait for room
        self.items: deque[Any] = deque()
        self.room = threading.Event()
        self.sleeping = False
        self.stopped = False
        self.done = False
        self.processing = 0  # taken by the loop and not yet handed on: still within the bound

    # -- the thread's side ----------------------------------------------------------------

    def put(self, item: Any) -> None:
        """``emit(item)`` in a plain root."""
        if self.stopped:
            raise Stopped
        items = self.items
        items.append(item)
        if self.sleeping:  # one wake-up per sleep, not a syscall per message
            self.sleeping = False
            self._waker.notify()
        if len(items) + self.processing + self._backlog() >= self.cap:
            self._wait_room()

    def put_many(self, items: Iterable[Any]) -> None:
        """``emit.many(items)`` in a plain root."""
        for item in items:
            self.put(item)

    __call__ = put  # the outbox is the plain root's emit
    many = put_many

    def _wait_room(self) -> None:
        while len(self.items) + self.processing + self._backlog() >= self.cap:
            if self.stopped:
                raise Stopped
            self.room.clear()
            if len(self.items) + self.processing + self._backlog() < self.cap:
                return
            # Set when the loop forwards, a child takes its edge, or stop(); the timeout
            # only bounds the wait should a wake-up race past the check above.
            if self._blocked is not None:
                self._blocked()
            self.room.wait(0.05)

    def finish(self) -> None:
        """The root's function returned (or raised): the loop forwards what is left and ends."""
        self.done = True
        self._waker.notify()

    # -- the loop's side ------------------------------------------------------------------

    def stop(self) -> None:
        """Make the root's next ``emit`` (or its wait for room) raise ``Stopped``.

        ``forward`` hands on what is already in the outbox, then ends.
        """
        self.stopped = True
        self.room.set()
        self._waker.notify()

    async def forward(self, many: Callable[[list[Any]], Any]) -> None:
        """Hand everything the thread emits to ``many`` (the root's async ``emit.many``) until done."""
        items, waker = self.items, self._waker
        while True:
            if items:
                chunk = [items.popleft() for _ in range(len(items))]
                self.processing = len(chunk)
                try:
                    await many(chunk)
                finally:
                    self.processing = 0
                    self.room.set()
                continue
            if self.done or self.stopped:
                if items:
                    continue
                return
            self.sleeping = True
            if items or self.done or self.stopped:
                self.sleeping = False
                continue
            try:
                await waker.changed()
            finally:
                self.sleeping = False
