"""What a machine tree shares, made by its root: the task group, the bus, and which functions take the routine."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc

from ._bus import Bus, Owned, Owner, Subscription, Supervisor
from ._shared import Handler, Overflow

__all__ = ["Host"]


class Host:
    """The root's task group, which runs every routine and subscription task of the tree, and what they share.

    ``tg`` is None until the root is opened and after it is closed; ``bus``
    holds the tree's subscriptions; ``takes_routine`` caches whether a
    function takes the routine (see ``_checks.prepare``).
    """

    __slots__ = ("bus", "takes_routine", "tg")

    def __init__(self) -> None:
        self.tg: anyio.abc.TaskGroup | None = None
        self.bus = Bus()
        self.takes_routine: dict[Any, bool] = {}

    async def open(self) -> None:
        """Open the task group."""
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self.tg = tg

    async def close(self, cancel: bool) -> None:
        """Close the task group, after cancelling every task in it when ``cancel``, else once they ended."""
        tg = self.tg
        assert tg is not None
        if cancel:
            tg.cancel_scope.cancel()
        try:
            await tg.__aexit__(None, None, None)
        finally:
            self.tg = None

    def subscribe(
        self,
        machine: Supervisor,
        owner: Owner | None,
        holder: Owned,
        pattern: str,
        handler: Handler,
        cap: int,
        overflow: Overflow,
    ) -> Subscription:
        """A new subscription (its arguments checked by the caller), on the bus and in ``holder``, its task started.

        ``holder`` is its owner's (the routine ``owner``, else ``machine``'s own); it leaves it as its task ends.
        """
        sub = Subscription(self.bus, machine, pattern, handler, cap, overflow, owner)
        holder.add(sub)
        self.bus.add(sub)
        tg = self.tg
        assert tg is not None
        tg.start_soon(_consume, sub, holder, name=f"subscription {pattern}")
        return sub


async def _consume(sub: Subscription, holder: Owned) -> None:
    try:
        await sub.consume()
    finally:
        holder.discard(sub)
