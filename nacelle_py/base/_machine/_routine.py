"""A routine: one supervised task of a machine, with an id, tags, a state and an outcome.

The routine runs its function and settles how it ended; its machine starts
it, counts it, and logs and keeps its error.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from ._bus import Owned

if TYPE_CHECKING:
    from ._bus import Subscription

    # For the annotation of ``Routine.machine`` only (documented, so typed as the Machine itself):
    # a Machine makes Routines, and a routine's machine is a Machine, so this is the one import
    # that points back up; nothing of ``_machine`` is used here at run time.
    from ._machine import Machine
    from ._shared import Handler, Overflow

__all__ = ["FINAL_STATES", "Routine", "RoutineInfo", "current"]

FINAL_STATES = frozenset({"done", "failed", "cancelled", "timed_out"})
_FAILURES = (Exception, SystemExit, KeyboardInterrupt)  # a routine's, never the process's end
_CURRENT: ContextVar[Routine | None] = ContextVar("nacelle_machine_routine", default=None)


def current() -> Routine | None:
    """The routine the calling task runs (or was started by: a task it started inherits it), if any."""
    return _CURRENT.get()


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

    __slots__ = (
        "_done",
        "_result",
        "_subscriptions",
        "cancel_requested",
        "error",
        "id",
        "machine",
        "scope",
        "started",
        "state",
        "tags",
    )

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
        self._subscriptions: Owned | None = None  # made when it first subscribes

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

    def subscribe(
        self, pattern: str, handler: Handler, *, buffer: int | None = None, overflow: Overflow = "block"
    ) -> Subscription:
        """``Machine.subscribe`` owned by this routine: it ends when the routine ends."""
        return self.machine.subscribe_for(self, pattern, handler, buffer, overflow)

    def info(self) -> RoutineInfo:
        """The routine as a line of ``stats()``."""
        return RoutineInfo(self.id, self.tags, time.monotonic() - self.started, self.state)

    def __repr__(self) -> str:
        return f"Routine(id={self.id!r}, tags={self.tags!r}, state={self.state!r})"

    # -- internal to nacelle_py: what its machine calls -------------------------------------

    async def run(self, call: Any, takes: bool) -> Exception | None:
        """Run ``call`` (given the routine when ``takes``) under the routine's scope; the error it failed with.

        Internal to nacelle_py: the machine's task for the routine awaits it
        and then ``finish()``. It ends ``done`` or ``failed`` here (a
        ``SystemExit`` or ``KeyboardInterrupt`` is its failure, not the
        process's end); cancelled by its scope, it is still ``running``.
        """
        _CURRENT.set(self)  # subscribe() inside the routine is owned by it
        try:
            with self.scope:
                self._result = await (call(self) if takes else call())
                self.state = "done"
        except _FAILURES as raised:
            exc = raised if isinstance(raised, Exception) else _escaped(self, raised)
            self.state = "failed"
            self.error = exc
            return exc
        return None

    def finish(self) -> None:
        """Settle how it ended, end the subscriptions it owns and wake its ``wait()`` callers.

        Internal to nacelle_py: the machine's task calls it last, however
        the routine ended (also when the host's cancellation reached it).
        """
        scope = self.scope
        if self.state == "running":  # cancelled by its scope, or from outside (the host ending)
            timed_out = scope.cancelled_caught and not self.cancel_requested
            self.state = "timed_out" if timed_out and anyio.current_time() >= scope.deadline else "cancelled"
        if self._subscriptions is not None:
            self._subscriptions.cancel()
        if self._done is not None:
            self._done.set()

    def owned(self) -> Owned:
        """The subscriptions it owns, which end with it. Internal to nacelle_py: its machine's ``subscribe``."""
        if self._subscriptions is None:
            self._subscriptions = Owned()
        return self._subscriptions

    def active_subscriptions(self) -> int:
        """How many of its subscriptions are active. Internal to nacelle_py: its machine's ``stats()``."""
        return 0 if self._subscriptions is None else self._subscriptions.active()


def _escaped(routine: Routine, exc: BaseException) -> Exception:
    """A routine may not end the process: its SystemExit or KeyboardInterrupt is its failure."""
    error = RuntimeError(f"routine {routine.id!r} raised {type(exc).__name__}({exc}); raise an error instead")
    error.__cause__ = exc
    return error
