"""Slots: how many routines a machine tree runs, and the root's queue of ``go`` callers waiting for one.

A routine holds a slot in its machine and in every ancestor from the moment
``go`` admits it until its task ends; waiting callers queue at the root in
arrival order and are handed their slots by the routine that frees them, so
a slot is given once and taken back once.
"""

from __future__ import annotations

from collections import deque

import anyio

__all__ = ["Slots"]


class _Waiter:
    __slots__ = ("event", "granted", "slots")

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.event = anyio.Event()
        self.granted = False


class Slots:
    """One machine's admission: its limit, the routines it and its descendants run, whether it was cancelled.

    ``path`` is the node itself, then its ancestors' up to the root's;
    ``queue`` is the root's, shared by the whole tree.
    """

    __slots__ = ("active", "cancelled", "idle", "limit", "path", "queue")

    def __init__(self, limit: int | None, parent: Slots | None = None) -> None:
        self.limit = limit
        self.active = 0  # routines of this machine and its descendants
        self.idle: anyio.Event | None = None  # set when active drops to 0
        self.cancelled = False  # it admits nothing more; its queued callers are refused
        self.path: tuple[Slots, ...] = (self,) if parent is None else (self, *parent.path)
        self.queue: deque[_Waiter] = deque() if parent is None else parent.queue

    def fits(self) -> bool:
        """Whether one more routine fits the limit of this machine and of every ancestor."""
        for node in self.path:
            limit = node.limit
            if limit is not None and node.active >= limit:
                return False
        return True

    def acquire(self) -> None:
        """Take a slot here and in every ancestor (``fits()`` said there is room)."""
        for node in self.path:
            node.active += 1

    def release(self) -> None:
        """Give a slot back here and in every ancestor, and hand what is free to the queued callers."""
        for node in self.path:
            node.active -= 1
            if node.active == 0 and node.idle is not None:
                node.idle.set()
                node.idle = None
        if self.queue:
            self.grant()

    def grant(self) -> None:
        """Hand free slots to queued callers, oldest first; one that does not fit yet keeps its place.

        A caller of a cancelled machine is woken without a slot (its ``go`` raises ``MachineError``).
        """
        queue = self.queue
        for waiter in list(queue):
            slots = waiter.slots
            if slots.cancelled:
                queue.remove(waiter)
                waiter.event.set()
                continue
            if slots.fits():
                queue.remove(waiter)
                slots.acquire()
                waiter.granted = True
                waiter.event.set()

    async def wait(self) -> bool:
        """Queue for a slot behind the earlier callers: True once handed one, False if woken without one."""
        waiter = _Waiter(self)
        queue = self.queue
        queue.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:  # handed its slots as the wait was cancelled: give them back
                self.release()
            elif waiter in queue:  # not already taken off by a cancel of its machine
                queue.remove(waiter)
                self.grant()  # it may have been holding up a caller behind it
            raise
        return waiter.granted

    def waiting(self) -> int:
        """How many callers wait for a slot of this machine."""
        return sum(1 for waiter in self.queue if waiter.slots is self)

    async def wait_idle(self) -> None:
        """Wait until no routine of this machine or its descendants holds a slot."""
        while self.active:
            if self.idle is None:
                self.idle = anyio.Event()
            await self.idle.wait()
