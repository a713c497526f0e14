"""Publish/subscribe for a machine tree: bounded per-subscriber buffers, each drained by its own task.

A publish appends to each matching subscription's buffer and wakes its task
only if it sleeps: no task and no await per delivery on the fast path. A
full buffer is the subscription's choice: ``block`` makes the publisher wait
for room in that buffer alone, ``drop_oldest`` drops its oldest message,
``error`` refuses the message to that subscription and makes ``publish``
raise once every other subscriber has it.
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from ..._calls import is_async
from ._patterns import check_channel, is_exact, matches
from ._shared import Handler, Overflow

__all__ = ["Bus", "MachineOverflowError", "Owned", "Owner", "Subscription", "Supervisor"]


class Supervisor(Protocol):
    """What a subscription asks of the machine it belongs to (a ``Machine``): to report its handler's failure."""

    def subscription_failed(self, sub: Subscription, exc: Exception) -> None: ...


class Owner(Protocol):
    """The routine a subscription belongs to, as far as the subscription knows it: its id."""

    @property
    def id(self) -> str: ...


class MachineOverflowError(Exception):
    """``publish`` found the buffer of an ``overflow="error"`` subscription full; the others got the message."""

    def __init__(self, channel: str, full: list[Subscription]) -> None:
        self.channel = channel
        self.subscriptions = full
        names = ", ".join(repr(s.pattern) for s in full)
        super().__init__(
            f"publish to {channel!r}: the buffer of subscription {names} (overflow='error') is full; "
            "the message was not delivered to it. Give it a larger buffer, or overflow='block' or 'drop_oldest'"
        )


class Subscription:
    """A handler subscribed to a pattern; its task calls the handler for each message, in order.

    ``cancel()`` unsubscribes (safe at any time, also during a publish);
    ``pending`` is what waits in its buffer, ``dropped`` what ``drop_oldest``
    or its end discarded, ``delivered`` what its handler was called with.
    """

    __slots__ = (
        "_closing",
        "_room",
        "_scope",
        "_task",
        "_wake",
        "active",
        "bus",
        "cap",
        "delivered",
        "dropped",
        "handler",
        "is_async",
        "items",
        "limit",
        "machine",
        "overflow",
        "owner",
        "pattern",
    )

    def __init__(
        self,
        bus: Bus,
        machine: Supervisor,
        pattern: str,
        handler: Handler,
        cap: int,
        overflow: Overflow,
        owner: Owner | None,
    ) -> None:
        self.bus = bus
        self.machine = machine
        self.pattern = pattern
        self.handler = handler
        self.is_async = is_async(handler)
        self.cap = cap
        self.limit = cap  # the publishers' fast-path bound: -1 once it accepts nothing more
        self.overflow = overflow
        self.owner = owner
        self.items: deque[Any] = deque()
        self.active = True
        self.delivered = 0
        self.dropped = 0
        self._closing = False  # drain what is buffered, then end
        self._wake: anyio.Event | None = None  # set to wake the sleeping task
        self._room: anyio.Event | None = None  # set to wake blocked publishers
        self._scope = anyio.CancelScope()
        self._task: Any = None

    @property
    def pending(self) -> int:
        """Messages waiting in the buffer."""
        return len(self.items)

    def cancel(self) -> None:
        """Unsubscribe now; what waits in the buffer is dropped (and counted)."""
        if not self.active:
            return
        self._end()
        if self._task != anyio.get_current_task().id:  # a handler unsubscribing itself just returns
            self._scope.cancel()

    def close(self) -> None:
        """Unsubscribe once the buffer is drained (the owner ended gracefully)."""
        if self.active:
            self.bus.remove(self)
            self._closing = True
            self.limit = -1
            self._notify()

    def _end(self) -> None:
        self.active = False
        self.limit = -1
        self.bus.remove(self)
        self.dropped += len(self.items)
        self.items.clear()
        self._notify()
        room = self._room
        if room is not None:
            self._room = None
            room.set()

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    async def wait_room(self) -> None:
        """Wait until the buffer has room or the subscription ended (a ``block`` publisher)."""
        while self.limit >= 0 and len(self.items) >= self.cap:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    async def put(self, msg: Any) -> bool:
        """Append ``msg`` once the buffer has room (a full ``block`` subscription); False if it ended meanwhile."""
        await self.wait_room()
        if self.limit < 0:
            return False
        self.items.append(msg)
        self._notify()
        return True

    async def consume(self) -> None:
        """The subscription's task: call the handler for each message until it ends."""
        self._task = anyio.get_current_task().id
        items, handler, is_async = self.items, self.handler, self.is_async
        popleft = items.popleft
        try:
            with self._scope:
                while self.active:
                    if not items:
                        if self._closing:
                            break
                        wake = self._wake = anyio.Event()
                        await wake.wait()
                        continue
                    count = 0
                    try:
                        while items and count < 1024:
                            msg = popleft()
                            count += 1
                            if self._room is not None:
                                self._room.set()
                                self._room = None
                            result = await handler(msg) if is_async else handler(msg)
                            if result is not None and self._finished_by(result):
                                return
                    finally:
                        self.delivered += count
                    if count == 1024:  # a handler that never waits must not starve the loop
                        await anyio.lowlevel.checkpoint()
        except Exception as exc:
            self.machine.subscription_failed(self, exc)
        except (SystemExit, KeyboardInterrupt) as exc:  # a handler does not end the process
            error = RuntimeError(f"subscription {self.pattern!r}: the handler raised {type(exc).__name__}")
            error.__cause__ = exc
            self.machine.subscription_failed(self, error)
        finally:
            if self.active:
                self._end()

    def _finished_by(self, result: object) -> bool:
        """Whether the handler's result ends the subscription (``False``); a coroutine is an error."""
        if result is False:
            return True
        if inspect.isawaitable(result):  # a plain handler that returned a coroutine forgot 'async'
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise TypeError(f"subscription {self.pattern!r}: the handler returned an awaitable; declare it 'async def'")
        return False


class Owned:
    """The subscriptions that end with their owner: a routine's, or a machine's own (made outside a routine).

    A subscription is in it from its start until its task ends.
    """

    __slots__ = ("subs",)

    def __init__(self) -> None:
        self.subs: list[Subscription] = []

    def add(self, sub: Subscription) -> None:
        """Hold ``sub`` (just subscribed)."""
        self.subs.append(sub)

    def discard(self, sub: Subscription) -> None:
        """Let go of ``sub`` (its task ended)."""
        if sub in self.subs:
            self.subs.remove(sub)

    def cancel(self) -> None:
        """Cancel each subscription held (the owner was cancelled or ended)."""
        for sub in list(self.subs):
            sub.cancel()

    def close(self) -> None:
        """Close each subscription held: it ends once its buffer is drained (the owner ended gracefully)."""
        for sub in list(self.subs):
            sub.close()

    def active(self) -> int:
        """How many of the subscriptions held are active."""
        return sum(1 for sub in self.subs if sub.active)


class Bus:
    """The subscriptions of one machine tree, with a cache of who matches each channel."""

    __slots__ = ("_cache", "exact", "wild")

    def __init__(self) -> None:
        self.exact: dict[str, list[Subscription]] = {}
        self.wild: list[Subscription] = []
        self._cache: dict[str, tuple[Subscription, ...]] = {}

    def add(self, sub: Subscription) -> None:
        """Subscribe ``sub`` to its pattern."""
        if is_exact(sub.pattern):
            self.exact.setdefault(sub.pattern, []).append(sub)
        else:
            self.wild.append(sub)
        self._cache.clear()

    def remove(self, sub: Subscription) -> None:
        """Unsubscribe ``sub``: later publishes no longer see it (one in progress checks ``active``)."""
        group = self.exact.get(sub.pattern) if is_exact(sub.pattern) else self.wild
        if group is not None and sub in group:
            group.remove(sub)
            if not group and group is not self.wild:
                del self.exact[sub.pattern]
            self._cache.clear()

    def match(self, channel: str) -> tuple[Subscription, ...]:
        """Every subscription whose pattern matches ``channel``, in subscription order per kind.

        A channel not in the cache is checked first: a bad one is a ``ValueError``
        before anything is delivered; a known one costs no check.
        """
        found = self._cache.get(channel)
        if found is None:
            check_channel(channel)
            found = tuple(self.exact.get(channel, ())) + tuple(s for s in self.wild if matches(s.pattern, channel))
            if len(self._cache) > 4096:  # many distinct channels: keep the cache bounded
                self._cache.clear()
            self._cache[channel] = found
        return found

    def offer(self, channel: str, msg: Any) -> tuple[int, list[Subscription] | None, list[Subscription] | None]:
        """Deliver without waiting: (delivered, full ``error`` subscriptions, full ``block`` subscriptions)."""
        found = self._cache.get(channel)
        if found is None:
            found = self.match(channel)
        delivered = 0
        slow: list[Subscription] | None = None
        for sub in found:
            items = sub.items
            if len(items) < sub.limit:  # the fast path: room, and still accepting
                items.append(msg)
                if sub._wake is not None:
                    sub._wake.set()
                    sub._wake = None
                delivered += 1
            elif slow is None:
                slow = [sub]
            else:
                slow.append(sub)
        if slow is None:
            return delivered, None, None
        refused: list[Subscription] | None = None
        blocked: list[Subscription] | None = None
        for sub in slow:
            if sub.limit < 0:  # ended or ending: it takes nothing more
                continue
            if sub.overflow == "drop_oldest":
                sub.items.popleft()
                sub.items.append(msg)
                sub.dropped += 1
                delivered += 1
            elif sub.overflow == "error":
                refused = [sub] if refused is None else [*refused, sub]
            else:
                blocked = [sub] if blocked is None else [*blocked, sub]
        return delivered, refused, blocked
