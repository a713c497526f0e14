"""Edges of the parallel engine: bounded inboxes and the ``emit`` functions that fill them.

The per-message path is the reason this module exists; it does as little as
a hand-written producer/consumer pair would:

- ``emit(item)`` is a plain function: it appends to the child's list and,
  while there is room and the child is awake, returns ``READY``, an
  awaitable that completes at once without a coroutine or a scheduler
  round-trip. Only a full edge or a sleeping consumer takes the slow path.
- A consumer takes the whole list at once (swapping in an empty one) and
  walks it with a plain ``for`` loop: no per-message pop, lock or counter.
  The iterator it walks tells the stats how far it got, and an error's
  message index, at no cost per message.
- While a consumer sleeps, ``room`` is 0, so the next ``emit`` takes the slow
  path and wakes it; one flag check serves both cases.

So an edge holds at most ``buffer`` waiting messages, and the stage works on
at most one batch it took earlier (the list it swapped out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import anyio
import anyio.lowlevel

from ._lanes import Stopped

__all__ = ["READY", "Collector", "Inbox", "emitter"]


class _Ready(tuple):  # type: ignore[type-arg]
    """An awaitable that is already done: awaiting it iterates an empty tuple."""

    __slots__ = ()
    __await__ = tuple.__iter__


READY: Any = _Ready()


class Inbox:
    """A stage's input edge: a list the parent appends to and the stage swaps out.

    The bound covers the messages waiting here *and* those the stage took and has
    not started (``node.remaining()``): ``buffer`` is what may wait for the stage.
    """

    __slots__ = ("cap", "closed", "consumer", "items", "node", "on_take", "producer", "room", "sealed")

    def __init__(self, cap: int, node: Any) -> None:
        self.items: list[Any] = []
        self.cap = cap
        self.node = node  # the consumer stage: how much of its batch it has not started
        # The fast path admits a put while len(items) < room: cap less the consumer's
        # unstarted messages when last looked (a safe under-estimate as it works through
        # them), or 0 while the consumer sleeps, so that the next put wakes it.
        self.room = cap
        self.consumer: anyio.Event | None = None  # set to wake sleeping consumers
        self.producer: anyio.Event | None = None  # set to wake producers waiting for room
        self.closed = False  # the parent has finished: no more messages
        self.sealed = False  # the parent is a stopped root: a put raises Stopped
        # Called when the stage takes its edge or finds it empty: a plain root's thread waits for that.
        self.on_take: Callable[[], None] | None = None

    def after_put(self) -> Any:
        """The slow path of a put: wake the consumer, refresh ``room``, wait while the edge is full."""
        if self.sealed:
            self.items.pop()  # the message this put appended: a stopped root emits nothing more
            raise Stopped
        self.wake()
        if len(self.items) >= self.room:
            return self.wait_room()
        return READY

    def wake(self) -> None:
        """Wake a sleeping consumer and refresh ``room``."""
        consumer = self.consumer
        if consumer is not None:
            self.consumer = None
            consumer.set()
        if not self.sealed:
            self.room = self.cap - self.node.remaining()

    def seal(self) -> None:
        """The parent (a root) stopped: every later put raises ``Stopped``; what is here drains."""
        self.sealed = True
        self.room = 0  # every put takes the slow path, which checks ``sealed``

    def full(self) -> bool:
        """Whether the waiting messages reach the bound."""
        waiting: int = len(self.items) + self.node.remaining()
        return waiting >= self.cap

    async def wait_room(self) -> None:
        """Wait until the consumer takes the waiting messages."""
        while self.full():
            producer = self.producer
            if producer is None:
                producer = self.producer = anyio.Event()
            await producer.wait()

    def free(self) -> int:
        """How many messages fit now."""
        free: int = self.cap - self.node.remaining() - len(self.items)
        return free

    async def put_many(self, items: Iterable[Any]) -> None:
        """Append ``items`` in order, in pieces that fit the bound; an iterator is read as room allows."""
        if type(items) is list or type(items) is tuple:
            await self.put_list(items)  # type: ignore[arg-type]
            return
        iterator = iter(items)
        while piece := list(islice(iterator, max(1, self.free()))):
            await self.put_list(piece)

    async def put_list(self, items: list[Any]) -> None:
        """Append a list in order, in pieces that fit the bound."""
        position, total = 0, len(items)
        while position < total:
            if self.sealed:
                raise Stopped
            room = self.free()
            if room <= 0:
                self.wake()
                await self.wait_room()
                continue
            if position == 0 and room >= total:
                self.items.extend(items)
            else:
                self.items.extend(items[position : position + room])
            position += room
            self.wake()

    def take(self) -> list[Any] | None:
        """Everything waiting (and an empty list in its place), or None."""
        items = self.items
        if not items:
            return None
        self.items = []
        if not self.sealed:
            # The consumer is about to start on these: they count against the bound until started.
            self.room = self.cap - len(items) - self.node.remaining()
        producer = self.producer
        if producer is not None:
            self.producer = None
            producer.set()
        if self.on_take is not None:
            self.on_take()
        return items

    async def wait(self) -> None:
        """Sleep until a put or ``close()``."""
        self.room = 0
        producer = self.producer
        if producer is not None:  # nothing left to take: whoever waits for room has it now
            self.producer = None
            producer.set()
        if self.on_take is not None:
            self.on_take()
        consumer = self.consumer
        if consumer is None:
            consumer = self.consumer = anyio.Event()
        await consumer.wait()

    def close(self) -> None:
        """No more messages: wake the consumers so they finish."""
        self.closed = True
        consumer = self.consumer
        if consumer is not None:
            self.consumer = None
            consumer.set()


def pieces(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` as lists of at most ``size`` (a list as itself): an iterator is never read ahead further."""
    if type(items) is list:
        yield items
        return
    iterator = iter(items)
    while piece := list(islice(iterator, size)):
        yield piece


def emitter(inboxes: list[Inbox], node: Any) -> Any:
    """The async ``emit`` of a stage whose children read ``inboxes`` (with ``emit.many``)."""
    if not inboxes:

        def emit(item: Any) -> Any:
            node.out = out = node.out + 1
            # Nothing downstream ever makes this wait: let other tasks run now and then.
            return READY if out & 255 else anyio.lowlevel.checkpoint()

        async def many(items: Iterable[Any]) -> None:
            for piece in pieces(items, 1024):
                node.out += len(piece)
                await anyio.lowlevel.checkpoint()

    elif len(inboxes) == 1:
        inbox = inboxes[0]

        def emit(item: Any) -> Any:
            items = inbox.items
            items.append(item)
            if len(items) >= inbox.room:
                return inbox.after_put()
            return READY

        async def many(items: Iterable[Any]) -> None:
            await inbox.put_many(items)

    else:

        def emit(item: Any) -> Any:
            slow = False
            for inbox in inboxes:
                items = inbox.items
                items.append(item)
                if len(items) >= inbox.room:
                    slow = True
            return _after_put_all(inboxes) if slow else READY

        smallest = min(inbox.cap for inbox in inboxes)

        async def many(items: Iterable[Any]) -> None:
            for piece in pieces(items, smallest):
                for inbox in inboxes:
                    await inbox.put_list(piece)

    emit.many = many  # type: ignore[attr-defined]
    return emit


def _after_put_all(inboxes: list[Inbox]) -> Any:
    """A fan-out put's slow path: wake every child first, then wait for room where it is short."""
    if any(inbox.sealed for inbox in inboxes):
        for inbox in inboxes:
            inbox.items.pop()
        raise Stopped
    for inbox in inboxes:
        inbox.wake()
    return _wait_all(inboxes)


async def _wait_all(inboxes: list[Inbox]) -> None:
    for inbox in inboxes:
        await inbox.wait_room()


class Collector(list):  # type: ignore[type-arg]
    """A plain stage's ``emit``: collects what one slice of work emitted, for the loop to forward."""

    __slots__ = ()
    __call__ = list.append
    many = list.extend


class AsyncCollector(list):  # type: ignore[type-arg]
    """An async stage's ``emit`` that collects one message's output (ordered stages with workers)."""

    __slots__ = ()

    def __call__(self, item: Any) -> Any:
        self.append(item)
        return READY

    async def many(self, items: Iterable[Any]) -> None:
        self.extend(items)
