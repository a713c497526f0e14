"""Machine: supervised routines with throttling, cancellation, stats and pub/sub.

One task group, opened by the root machine (``async with`` or the App),
hosts every routine of the tree; each routine has its own cancel scope, so
cancelling one, a machine, or a whole subtree is exact. A routine holds a
slot in its machine and in every ancestor (``_slots``). Errors never cancel
siblings: each is logged and kept until ``wait()`` raises them together.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import anyio
import structlog

from ..._validate import positive
from ._bus import MachineOverflowError, Owned, Subscription
from ._checks import check_id, check_subscription, check_tags, prepare, seconds
from ._errors import Errors
from ._host import Host
from ._middleware import Middleware
from ._routine import Routine, current
from ._shared import Handler, MachineError, Overflow
from ._slots import Slots
from ._stats import MachineStats

__all__ = ["Machine"]


class Machine:
    """Supervised routines and pub/sub: ``async with Machine(max_routines=3) as m: await m.go(fn)``.

    ``go`` starts a routine, waiting for a slot while ``max_routines`` run
    (``try_go`` never waits); ``cancel()`` cancels every routine of the
    machine and its sub-machines; ``wait()`` waits for them and raises an
    ``ExceptionGroup`` of every error. Leaving ``async with`` waits the same
    way. ``sub(name)`` makes a child machine whose routines also count
    against this one's limit. ``publish``/``subscribe`` connect routines of
    the whole tree. In an App, ``Inject("machine")`` gives each component a
    sub-machine of its own that ends with it.

    The methods whose docstrings say so are internal to nacelle_py (its
    routines, subscriptions, middlewares and the App's machine service call
    them); they are not part of the public API.
    """

    def __init__(
        self, max_routines: int | None = None, *, name: str = "machine", buffer: int = 1024, logger: Any = None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Machine: name must be a non-empty string, got {name!r}")
        self.name = name
        limit: int | None = positive(f"Machine {name!r}", "max_routines", max_routines, integer=True, allow_none=True)
        self.buffer: int = positive(f"Machine {name!r}", "buffer", buffer, integer=True)
        self.parent: Machine | None = None
        self._host = Host()  # the root's, shared by the tree
        self._slots = Slots(limit)
        self._errors = Errors(name, logger if logger is not None else structlog.get_logger().bind(component=name))
        self._children: dict[str, Machine] = {}
        self._routines: dict[str, Routine] = {}
        self._total = 0
        self._ids = itertools.count(1)
        self._owned = Owned()  # the subscriptions it owns itself (a routine's are the routine's)

    @property
    def max_routines(self) -> int | None:
        """How many routines of this machine and its sub-machines may run at once (None: no limit)."""
        return self._slots.limit

    @max_routines.setter
    def max_routines(self, value: int | None) -> None:
        self._slots.limit = value

    # -- tree --------------------------------------------------------------------------------

    def sub(self, name: str, max_routines: int | None = None) -> Machine:
        """A child machine: its routines count against its own limit and every ancestor's.

        ``cancel()`` here cascades to it; cancelling it leaves this machine running.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"Machine {self.name!r}: a sub-machine's name is a non-empty string, got {name!r}")
        if name in self._children:
            raise ValueError(f"Machine {self.name!r} already has a sub-machine named {name!r}; pick another name")
        if self.cancelled:
            raise MachineError(f"Machine {self.name!r} was cancelled; it makes no more sub-machines")
        child = Machine(max_routines, name=name, buffer=self.buffer, logger=self.log.bind(component=name))
        child.parent = self
        child._host = self._host
        child._slots = Slots(child.max_routines, self._slots)  # its slots count in every ancestor's
        self._children[name] = child
        return child

    @property
    def children(self) -> dict[str, Machine]:
        """The sub-machines by name."""
        return dict(self._children)

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called (on it or an ancestor): it starts nothing new."""
        return self._slots.cancelled

    def detach(self, name: str) -> Machine | None:
        """Take the sub-machine named ``name`` out of the tree (None if there is none) and return it.

        Internal to nacelle_py: the App's machine service ends a component's
        sub-machine with it (then ``end_quietly()``), and a later ``sub(name)``
        makes a new one. Until it is ended, its routines run on and hold their
        slots here; ``cancel()`` and ``stats()`` here no longer reach it.
        """
        return self._children.pop(name, None)

    def _walk(self) -> list[Machine]:
        found, todo = [], [self]
        while todo:
            machine = todo.pop()
            found.append(machine)
            todo.extend(machine._children.values())
        return found

    # -- opening and closing (the root) ------------------------------------------------------

    async def __aenter__(self) -> Machine:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._host.tg is not None
        try:
            if exc is None:
                try:
                    await self._slots.wait_idle()
                except BaseException:  # the block's task was cancelled while it waited
                    self.cancel()
                    raise
                for machine in self._walk():  # the routines are done: machine-owned subscriptions drain
                    machine._owned.close()
            else:
                self.cancel()
        finally:
            # Every routine and subscription task catches its own errors: nothing of theirs
            # reaches the task group, so the block's own exception propagates as itself.
            await self._host.close(cancel=exc is not None)
        if exc is None:
            self._raise_errors()

    def configure(self, *, max_routines: int | None, buffer: int, logger: Any) -> None:
        """Take the App's settings and logger before ``open()``.

        Internal to nacelle_py: the App's machine service configures its root
        with the ``MACHINE_`` settings (checked by them) and the app's logger.
        """
        self.max_routines = max_routines
        self.buffer = buffer
        self._errors.log = logger

    async def open(self) -> None:
        """Open the root's task group, as entering ``async with`` does.

        Internal to nacelle_py: the App's machine service opens its root
        around the lifecycle with it, and closes it with ``close()``.
        """
        if self.parent is not None:
            raise MachineError(f"Machine {self.name!r} is a sub-machine: enter its root machine instead")
        if self._host.tg is not None:
            raise MachineError(f"Machine {self.name!r} is already open")
        self._slots.cancelled = False
        await self._host.open()

    async def close(self) -> None:
        """Cancel whatever still runs in the tree, wait for it and close the task group (if open).

        Internal to nacelle_py: the App's machine service closes its root with
        it. The errors are dropped (each was logged as it happened), also those
        a routine raises while it is cancelled.
        """
        if self.parent is not None or self._host.tg is None:
            return
        await self.end_quietly()
        await self.__aexit__(None, None, None)

    async def end_quietly(self) -> None:
        """Cancel the tree and wait for it; drop its errors (each was logged as it happened).

        Internal to nacelle_py: the App's machine service ends a released
        component's sub-machine with it.
        """
        self.cancel()
        await self._slots.wait_idle()
        self._take_errors()

    # -- starting routines -------------------------------------------------------------------

    async def go(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        id: str | None = None,
        tags: Iterable[str] = (),
        timeout: float | None = None,
        middlewares: Sequence[Middleware] = (),
    ) -> Routine:
        """Start ``fn`` as a routine, waiting (oldest caller first) for a slot while a limit is reached.

        ``fn`` is an async callable taking nothing or the ``Routine``.
        ``timeout`` ends it as ``timed_out`` after that many seconds;
        ``middlewares`` wrap it, the first outermost.
        """
        start = self._request(fn, id, tags, timeout, middlewares)
        slots = self._slots
        # Every caller still queued lacks a slot (each release hands out what fits), so a
        # caller that fits takes no slot any of them could use: it goes ahead.
        if not slots.fits():
            if not await slots.wait():  # woken because the machine was cancelled or closed
                self._check_open()
                raise MachineError(f"Machine {self.name!r} closed while go() waited for a slot")
            if id is not None and id in self._routines:
                slots.release()
                check_id(id, self._routines, self.name)
        else:
            slots.acquire()
        return self._start(*start)

    def try_go(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        id: str | None = None,
        tags: Iterable[str] = (),
        timeout: float | None = None,
        middlewares: Sequence[Middleware] = (),
    ) -> Routine | None:
        """Start ``fn`` as a routine if a slot is free now; None otherwise (never waits)."""
        start = self._request(fn, id, tags, timeout, middlewares)
        if not self._slots.fits():
            return None
        self._slots.acquire()
        return self._start(*start)

    def _request(
        self, fn: Any, id: str | None, tags: Iterable[str], timeout: float | None, middlewares: Sequence[Middleware]
    ) -> tuple[Any, bool, str | None, tuple[str, ...], float]:
        """Check a go()/try_go() call before it takes a slot: the arguments of ``_start``."""
        call, takes = prepare(fn, middlewares, self._host.takes_routine, self.name)
        checked = check_tags(tags, self.name)
        limit = seconds(timeout, self.name)
        if id is not None:
            check_id(id, self._routines, self.name)
        self._check_open()
        return call, takes, id, checked, limit

    def _check_open(self) -> None:
        if self._slots.cancelled:
            raise MachineError(f"Machine {self.name!r} was cancelled; it starts no more routines")
        if self._host.tg is None:
            raise MachineError(
                f"Machine {self.name!r} is not open: use 'async with Machine(...) as m', or Inject('machine') "
                "in a component of a served App"
            )

    def _start(self, call: Any, takes: bool, id: str | None, tags: tuple[str, ...], limit: float) -> Routine:
        if id is None:
            id = f"{self.name}-{next(self._ids)}"
            while id in self._routines:
                id = f"{self.name}-{next(self._ids)}"
        routine = Routine(self, id, tags, limit if limit == math.inf else anyio.current_time() + limit)
        self._routines[id] = routine
        self._total += 1
        tg = self._host.tg
        assert tg is not None
        tg.start_soon(self._run, routine, call, takes, name=f"routine {id}")
        return routine

    async def _run(self, routine: Routine, call: Any, takes: bool) -> None:
        try:
            exc = await routine.run(call, takes)
            if exc is not None:
                self._errors.failed(exc, "routine failed", routine=routine.id, tags=list(routine.tags))
        finally:
            routine.finish()
            del self._routines[routine.id]
            self._slots.release()

    # -- ending ------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Cancel every routine of this machine and its sub-machines; they start nothing new after."""
        for machine in self._walk():
            machine._slots.cancelled = True
            for routine in list(machine._routines.values()):
                routine.cancel()
            machine._owned.cancel()
        if self._slots.queue:
            self._slots.grant()  # queued callers of cancelled machines raise MachineError

    async def wait(self) -> None:
        """Wait until no routine of this machine or its subs runs; raise an ExceptionGroup of every error.

        The errors are those of routines and subscriptions that failed since the
        last ``wait()``; each is raised once.
        """
        routine = current()
        if routine is not None and not routine.done and self._slots in routine.machine._slots.path:
            raise MachineError(
                f"Machine {self.name!r}.wait() called from its own routine {routine.id!r}: it would wait for itself"
            )
        await self._slots.wait_idle()
        self._raise_errors()

    def _raise_errors(self) -> None:
        errors = self._take_errors()
        if errors:
            raise ExceptionGroup(f"machine {self.name!r}: {len(errors)} routine(s) failed", errors)

    def _take_errors(self) -> list[Exception]:
        return [exc for machine in self._walk() for exc in machine._errors.take()]

    # -- what its routines, subscriptions and middlewares report (internal to nacelle_py) ----

    @property
    def log(self) -> Any:
        """The machine's logger (bound to its component). Internal to nacelle_py: the middlewares log with it."""
        return self._errors.log

    def recovered(self, routine: Routine, exc: BaseException) -> None:
        """Log and count an error ``recover()`` caught. Internal to nacelle_py: the middleware calls it."""
        self._errors.caught(routine.id, routine.tags, exc)

    def subscription_failed(self, sub: Subscription, exc: Exception) -> None:
        """Log and keep a handler's error, as a routine's. Internal to nacelle_py: the subscription's task calls it."""
        owner = sub.owner
        self._errors.failed(
            exc, "subscription handler failed", pattern=sub.pattern, routine=owner.id if owner is not None else None
        )

    # -- pub/sub -----------------------------------------------------------------------------

    async def publish(self, channel: str, msg: Any) -> int:
        """Deliver ``msg`` to every subscription matching ``channel``; the number it reached.

        Waits only for full ``overflow="block"`` subscriptions; raises
        ``MachineOverflowError`` for full ``overflow="error"`` ones after the
        others have the message.
        """
        delivered, refused, blocked = self._host.bus.offer(channel, msg)
        if blocked:
            for sub in blocked:
                if await sub.put(msg):
                    delivered += 1
        if refused:
            raise MachineOverflowError(channel, refused)
        return delivered

    def publish_nowait(self, channel: str, msg: Any) -> int:
        """``publish`` without waiting: a full ``block`` subscription raises ``anyio.WouldBlock`` (the others have it)."""
        delivered, refused, blocked = self._host.bus.offer(channel, msg)
        if refused:
            raise MachineOverflowError(channel, refused)
        if blocked:
            raise anyio.WouldBlock(f"publish to {channel!r}: a subscription with overflow='block' is full")
        return delivered

    def subscribe(
        self, pattern: str, handler: Handler, *, buffer: int | None = None, overflow: Overflow = "block"
    ) -> Subscription:
        """Call ``handler(msg)`` (async or plain) for each message published to a channel matching ``pattern``.

        Called inside a routine, the subscription ends with that routine;
        otherwise with the machine. ``buffer`` (default: the machine's) bounds
        what waits for the handler; ``overflow`` says what a full buffer does.
        A handler returning ``False`` ends its subscription.
        """
        routine = current()
        if routine is not None and (routine.done or routine.machine._host is not self._host):
            routine = None  # not a routine of this tree (or one that ended): the machine owns it
        return self.subscribe_for(routine, pattern, handler, buffer, overflow)

    def subscribe_for(
        self, owner: Routine | None, pattern: str, handler: Handler, buffer: int | None, overflow: Overflow
    ) -> Subscription:
        """``subscribe``, owned by the routine ``owner`` (None: by the machine).

        Internal to nacelle_py: ``subscribe`` and ``Routine.subscribe`` call it.
        """
        cap = check_subscription(self.name, pattern, handler, overflow, buffer, self.buffer)
        self._check_open()
        if owner is None:
            return self._host.subscribe(self, None, self._owned, pattern, handler, cap, overflow)
        return self._host.subscribe(owner.machine, owner, owner.owned(), pattern, handler, cap, overflow)

    # -- stats -------------------------------------------------------------------------------

    def stats(self) -> MachineStats:
        """Active and total routines, queued callers, errors, each active routine, and the sub-machines'."""
        routines = list(self._routines.values())
        return MachineStats(
            name=self.name,
            active=len(routines),
            total=self._total,
            waiting=self._slots.waiting(),
            max_routines=self.max_routines,
            errors=self._errors.count,
            recovered=self._errors.recovered,
            routines=tuple(r.info() for r in routines),
            subs={name: child.stats() for name, child in self._children.items()},
            subscriptions=self._owned.active() + sum(r.active_subscriptions() for r in routines),
        )

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, active={len(self._routines)}, max_routines={self.max_routines})"
