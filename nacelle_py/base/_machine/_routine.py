"""A routine: one supervised task of a machine, with an id, tags, a state and an outcome."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

if TYPE_CHECKING:
    from ._bus import Handler, Overflow, Subscription
    from ._machine import Machine

__all__ = ["FINAL_STATES", "Routine", "RoutineInfo"]

FINAL_STATES = frozenset({"done", "failed", "cancelled", "timed_out"})


class RoutineInfo(NamedTuple):
    """One active routine in ``Machine.stats()``: its id, tags, seconds since it started, state."""

    id: str
    tags: tuple[str, ...]
    age: float
    state: str


class Routine:
    """A routine started by ``Machine.go``: cancel it, wait for it, read its state.

    ``state`` is ``"running"`` until it ends as ``"done"`` (returned),
    ``"failed"`` (raised; ``error`` holds it), ``"cancelled"`` (by
    ``cancel()``, its machine's ``cancel()`` or the machine closing) or
    ``"timed_out"`` (its ``go(timeout=...)`` ran out). Inside its function,
    the routine is the function's argument (when it takes one).
    """

    __slots__ = ("_done", "_result", "_subscriptions", "cancel_requested", "error", "id", "machine", "scope",
                 "started", "state", "tags")

    def __init__(self, machine: Machine, id: str, tags: tuple[str, ...], deadline: float) -> None:
        self.machine = machine
        self.id = id
        self.tags = tags
        self.state = "running"
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.scope = anyio.CancelScope(deadline=deadline)
        self.cancel_requested = False
        self._result: Any = None
        self._done: anyio.Event | None = None
        self._subscriptions: list[Subscription] | None = None

    @property
    def done(self) -> bool:
        """Whether the routine has ended."""
        return self.state in FINAL_STATES

    def cancel(self) -> None:
        """Cancel the routine (also from inside it); a routine that already ended is left as it is."""
        if not self.done:
            self.cancel_requested = True
            self.scope.cancel()

    async def wait(self) -> Any:
        """Wait until the routine ends: its result, its error raised, or None if it was cancelled or timed out."""
        if not self.done:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
        if self.error is not None:
            raise self.error
        return self._result

    async def publish(self, channel: str, msg: Any) -> int:
        """``Machine.publish`` of the routine's machine."""
        return await self.machine.publish(channel, msg)

    def subscribe(self, pattern: str, handler: Handler, *, buffer: int | None = None,
                  overflow: Overflow = "block") -> Subscription:
        """``Machine.subscribe`` owned by this routine: it ends when the routine ends."""
        return self.machine._subscribe(pattern, handler, buffer, overflow, self)

    def info(self) -> RoutineInfo:
        """The routine as a line of ``stats()``."""
        return RoutineInfo(self.id, self.tags, time.monotonic() - self.started, self.state)

    def __repr__(self) -> str:
        return f"Routine(id={self.id!r}, tags={self.tags!r}, state={self.state!r})"
