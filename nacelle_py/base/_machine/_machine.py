"""Machine: supervised routines with throttling, cancellation, stats and pub/sub.

One task group, opened by the root machine (``async with`` or the App),
hosts every routine of the tree; each routine has its own cancel scope, so
cancelling one, a machine, or a whole subtree is exact. A routine holds a
slot in its machine and in every ancestor from the moment ``go`` admits it
until its task ends; waiting callers queue at the root in arrival order and
are handed their slots by the routine that frees them, so a slot is given
once and taken back once. Errors never cancel siblings: each is logged and
kept until ``wait()`` raises them together.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections import deque
from contextvars import ContextVar
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, NamedTuple

import anyio
import anyio.abc
import structlog

from ..._calls import is_async
from ..._validate import positive
from ._bus import OVERFLOWS, Bus, Handler, MachineOverflowError, Overflow, Subscription
from ._middleware import Middleware, RoutineFn
from ._patterns import check_channel, check_pattern
from ._routine import Routine, RoutineInfo

__all__ = ["Machine", "MachineError", "MachineStats"]

_FAILURES = (Exception, SystemExit, KeyboardInterrupt)  # a routine's, never the process's end
_CURRENT: ContextVar[Routine | None] = ContextVar("nacelle_machine_routine", default=None)


class MachineError(RuntimeError):
    """A machine was used when it could not run routines (not open, or cancelled)."""


class MachineStats(NamedTuple):
    """A machine's counters: routines now and ever, queued ``go`` calls, errors, and each active routine."""

    name: str
    active: int  # routines of this machine running now (its subs' are in ``subs``)
    total: int  # routines this machine ever started
    waiting: int  # go() calls queued for a slot of this machine
    max_routines: int | None
    errors: int  # routines and subscriptions that failed
    recovered: int  # errors caught by recover()
    routines: tuple[RoutineInfo, ...]
    subs: dict[str, MachineStats]
    subscriptions: int  # active subscriptions owned by this machine or its routines


class _Waiter:
    __slots__ = ("event", "granted", "machine")

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.event = anyio.Event()
        self.granted = False


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
    """

    def __init__(self, max_routines: int | None = None, *, name: str = "machine", buffer: int = 1024,
                 logger: Any = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Machine: name must be a non-empty string, got {name!r}")
        self.name = name
        self.max_routines: int | None = positive(f"Machine {name!r}", "max_routines", max_routines,
                                                 integer=True, allow_none=True)
        self.buffer: int = positive(f"Machine {name!r}", "buffer", buffer, integer=True)
        self.parent: Machine | None = None
        self._root: Machine = self
        self._path: tuple[Machine, ...] = (self,)  # itself, then its ancestors up to the root
        self._log: Any = logger if logger is not None else structlog.get_logger().bind(component=name)
        self._children: dict[str, Machine] = {}
        self._routines: dict[str, Routine] = {}
        self._active = 0  # routines of this machine and its descendants
        self._total = 0
        self._errors: list[Exception] = []  # not yet raised by wait()
        self._error_count = 0
        self._recovered_count = 0
        self._ids = itertools.count(1)
        self._idle: anyio.Event | None = None  # set when _active drops to 0
        self._cancelled = False
        self._subscriptions: list[Subscription] = []  # owned by the machine itself
        # The root's own: shared by the tree.
        self._tg: anyio.abc.TaskGroup | None = None
        self._queue: deque[_Waiter] = deque()
        self._bus = Bus()
        self._takes_routine: dict[Any, bool] = {}

    # -- tree --------------------------------------------------------------------------------

    def sub(self, name: str, max_routines: int | None = None) -> Machine:
        """A child machine: its routines count against its own limit and every ancestor's.

        ``cancel()`` here cascades to it; cancelling it leaves this machine running.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"Machine {self.name!r}: a sub-machine's name is a non-empty string, got {name!r}")
        if name in self._children:
            raise ValueError(f"Machine {self.name!r} already has a sub-machine named {name!r}; pick another name")
        if self._cancelled:
            raise MachineError(f"Machine {self.name!r} was cancelled; it makes no more sub-machines")
        child = Machine(max_routines, name=name, buffer=self.buffer, logger=self._log.bind(component=name))
        child.parent = self
        child._root = self._root
        child._path = (child, *self._path)
        self._children[name] = child
        return child

    @property
    def children(self) -> dict[str, Machine]:
        """The sub-machines by name."""
        return dict(self._children)

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called (on it or an ancestor): it starts nothing new."""
        return self._cancelled

    # -- opening (the root) ------------------------------------------------------------------

    async def __aenter__(self) -> Machine:
        if self.parent is not None:
            raise MachineError(f"Machine {self.name!r} is a sub-machine: enter its root machine instead")
        if self._tg is not None:
            raise MachineError(f"Machine {self.name!r} is already open")
        self._cancelled = False
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        tg = self._tg
        assert tg is not None
        try:
            if exc is None:
                try:
                    await self._wait_idle()
                except BaseException:  # the block's task was cancelled while it waited
                    self.cancel()
                    raise
                for machine in self._walk():  # the routines are done: machine-owned subscriptions drain
                    for sub in list(machine._subscriptions):
                        sub.close()
            else:
                self.cancel()
        finally:
            # Every routine and subscription task catches its own errors: nothing of theirs
            # reaches the task group, so the block's own exception propagates as itself.
            if exc is not None:
                tg.cancel_scope.cancel()
            try:
                await tg.__aexit__(None, None, None)
            finally:
                self._tg = None
        if exc is None:
            errors = self._take_errors()
            if errors:
                raise ExceptionGroup(f"machine {self.name!r}: {len(errors)} routine(s) failed", errors)

    # -- starting routines -------------------------------------------------------------------

    async def go(self, fn: Callable[..., Awaitable[Any]], *, id: str | None = None, tags: Iterable[str] = (),
                 timeout: float | None = None, middlewares: Sequence[Middleware] = ()) -> Routine:
        """Start ``fn`` as a routine, waiting (oldest caller first) for a slot while a limit is reached.

        ``fn`` is an async callable taking nothing or the ``Routine``.
        ``timeout`` ends it as ``timed_out`` after that many seconds;
        ``middlewares`` wrap it, the first outermost.
        """
        start = self._request(fn, id, tags, timeout, middlewares)
        root = self._root
        # Every caller still queued lacks a slot (each release hands out what fits), so a
        # caller that fits takes no slot any of them could use: it goes ahead.
        if not self._fits():
            waiter = _Waiter(self)
            root._queue.append(waiter)
            try:
                await waiter.event.wait()
            except BaseException:
                if waiter.granted:  # handed its slots as the wait was cancelled: give them back
                    self._release()
                elif waiter in root._queue:  # not already taken off by a cancel of its machine
                    root._queue.remove(waiter)
                    root._grant()  # it may have been holding up a caller behind it
                raise
            if not waiter.granted:  # woken because the machine was cancelled or closed
                self._check_open()
                raise MachineError(f"Machine {self.name!r} closed while go() waited for a slot")
            if id is not None and id in self._routines:
                self._release()
                self._check_id(id)
        else:
            self._acquire()
        return self._start(*start)

    def try_go(self, fn: Callable[..., Awaitable[Any]], *, id: str | None = None, tags: Iterable[str] = (),
               timeout: float | None = None, middlewares: Sequence[Middleware] = ()) -> Routine | None:
        """Start ``fn`` as a routine if a slot is free now; None otherwise (never waits)."""
        start = self._request(fn, id, tags, timeout, middlewares)
        if not self._fits():
            return None
        self._acquire()
        return self._start(*start)

    def _request(self, fn: Any, id: str | None, tags: Iterable[str], timeout: float | None,
                 middlewares: Sequence[Middleware]) -> tuple[Any, bool, str | None, tuple[str, ...], float]:
        """Check a go()/try_go() call before it takes a slot: the arguments of ``_start``."""
        call, takes = self._prepare(fn, middlewares)
        checked = _tags(tags, self.name)
        seconds = self._timeout(timeout)
        if id is not None:
            self._check_id(id)
        self._check_open()
        return call, takes, id, checked, seconds

    def _prepare(self, fn: Any, middlewares: Sequence[Middleware]) -> tuple[Any, bool]:
        cache = self._root._takes_routine
        try:
            takes = cache.get(fn)
        except TypeError:  # an unhashable callable: checked every time
            takes = None
        if takes is None:
            if not callable(fn):
                raise TypeError(f"Machine {self.name!r}.go: fn must be an async callable, got {fn!r}")
            if not is_async(fn):
                raise TypeError(
                    f"Machine {self.name!r}.go: {_label(fn)} is not an async function; declare it 'async def' "
                    "(a blocking function belongs in anyio.to_thread.run_sync inside a routine)"
                )
            takes = _takes_one(fn)
            if len(cache) > 1024:
                cache.clear()
            try:
                cache[fn] = takes
            except TypeError:  # unhashable callable: not cached
                pass
        if not middlewares:
            return fn, takes
        if isinstance(middlewares, (str, bytes)) or not isinstance(middlewares, Sequence):
            raise TypeError(f"Machine {self.name!r}.go: middlewares must be a sequence, got {middlewares!r}")
        call: RoutineFn = fn if takes else _no_arg(fn)
        for middleware in reversed(middlewares):
            if not callable(middleware):
                raise TypeError(f"Machine {self.name!r}.go: middleware {middleware!r} is not callable")
            call = middleware(call)
        return call, True

    def _timeout(self, timeout: float | None) -> float:
        """The timeout in seconds (inf: none), checked now; it counts from the routine's start, not the call."""
        if timeout is None:
            return math.inf
        seconds: float = positive(f"Machine {self.name!r}.go", "timeout", timeout)
        return seconds

    def _check_id(self, id: object) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError(f"Machine {self.name!r}.go: id must be a non-empty string, got {id!r}")
        if id in self._routines:
            raise ValueError(f"Machine {self.name!r}.go: a routine with id {id!r} is already running; ids are unique")

    def _check_open(self) -> None:
        if self._cancelled:
            raise MachineError(f"Machine {self.name!r} was cancelled; it starts no more routines")
        if self._root._tg is None:
            raise MachineError(
                f"Machine {self.name!r} is not open: use 'async with Machine(...) as m', or Inject('machine') "
                "in a component of a served App"
            )

    def _start(self, call: Any, takes: bool, id: str | None, tags: tuple[str, ...], seconds: float) -> Routine:
        if id is None:
            id = f"{self.name}-{next(self._ids)}"
            while id in self._routines:
                id = f"{self.name}-{next(self._ids)}"
        routine = Routine(self, id, tags, seconds if seconds == math.inf else anyio.current_time() + seconds)
        self._routines[id] = routine
        self._total += 1
        tg = self._root._tg
        assert tg is not None
        tg.start_soon(self._run, routine, call, takes, name=f"routine {id}")
        return routine

    async def _run(self, routine: Routine, call: Any, takes: bool) -> None:
        scope = routine.scope
        _CURRENT.set(routine)  # subscribe() inside the routine is owned by it
        try:
            with scope:
                routine._result = await (call(routine) if takes else call())
                routine.state = "done"
        except _FAILURES as raised:
            exc = raised if isinstance(raised, Exception) else _escaped(routine, raised)
            routine.state = "failed"
            routine.error = exc
            self._error(exc, "routine failed", routine=routine.id, tags=list(routine.tags))
        finally:
            if routine.state == "running":  # cancelled by its scope, or from outside (the host ending)
                timed_out = scope.cancelled_caught and not routine.cancel_requested
                routine.state = "timed_out" if timed_out and anyio.current_time() >= scope.deadline else "cancelled"
            if routine._subscriptions:
                for sub in routine._subscriptions:
                    sub.cancel()
            del self._routines[routine.id]
            if routine._done is not None:
                routine._done.set()
            self._release()

    # -- slots -------------------------------------------------------------------------------

    def _fits(self) -> bool:
        for machine in self._path:
            limit = machine.max_routines
            if limit is not None and machine._active >= limit:
                return False
        return True

    def _acquire(self) -> None:
        for machine in self._path:
            machine._active += 1

    def _release(self) -> None:
        for machine in self._path:
            machine._active -= 1
            if machine._active == 0 and machine._idle is not None:
                machine._idle.set()
                machine._idle = None
        if self._root._queue:
            self._root._grant()

    def _grant(self) -> None:
        """Hand free slots to queued callers, oldest first; one that does not fit yet keeps its place."""
        for waiter in list(self._queue):
            machine = waiter.machine
            if machine._cancelled:
                self._queue.remove(waiter)
                waiter.event.set()  # it raises MachineError
                continue
            if machine._fits():
                self._queue.remove(waiter)
                machine._acquire()
                waiter.granted = True
                waiter.event.set()

    # -- ending ------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Cancel every routine of this machine and its sub-machines; they start nothing new after."""
        for machine in self._walk():
            machine._cancelled = True
            for routine in list(machine._routines.values()):
                routine.cancel()
            for sub in list(machine._subscriptions):
                sub.cancel()
        root = self._root
        if root._queue:
            root._grant()  # queued callers of cancelled machines raise MachineError

    async def wait(self) -> None:
        """Wait until no routine of this machine or its subs runs; raise an ExceptionGroup of every error.

        The errors are those of routines and subscriptions that failed since the
        last ``wait()``; each is raised once.
        """
        current = _CURRENT.get()
        if current is not None and not current.done and self in current.machine._path:
            raise MachineError(
                f"Machine {self.name!r}.wait() called from its own routine {current.id!r}: it would wait for itself"
            )
        await self._wait_idle()
        errors = self._take_errors()
        if errors:
            raise ExceptionGroup(f"machine {self.name!r}: {len(errors)} routine(s) failed", errors)

    async def _end_quietly(self) -> None:
        """Cancel the tree and wait for it; drop its errors (each was logged as it happened)."""
        self.cancel()
        await self._wait_idle()
        self._take_errors()

    async def _wait_idle(self) -> None:
        while self._active:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def _take_errors(self) -> list[Exception]:
        errors: list[Exception] = []
        for machine in self._walk():
            errors.extend(machine._errors)
            machine._errors = []
        return errors

    def _walk(self) -> list[Machine]:
        found, todo = [], [self]
        while todo:
            machine = todo.pop()
            found.append(machine)
            todo.extend(machine._children.values())
        return found

    def _error(self, exc: Exception, event: str, **fields: Any) -> None:
        self._errors.append(exc)
        self._error_count += 1
        self._log.error(event, machine=self.name, exc_info=exc, **fields)

    def _recovered(self, routine: Routine, exc: BaseException) -> None:
        self._recovered_count += 1
        self._log.error("routine error recovered", machine=self.name, routine=routine.id,
                        tags=list(routine.tags), exc_info=exc)

    def _failed_subscription(self, sub: Subscription, exc: Exception) -> None:
        owner = sub.owner
        self._error(exc, "subscription handler failed", pattern=sub.pattern,
                    routine=owner.id if owner is not None else None)

    # -- pub/sub -----------------------------------------------------------------------------

    async def publish(self, channel: str, msg: Any) -> int:
        """Deliver ``msg`` to every subscription matching ``channel``; the number it reached.

        Waits only for full ``overflow="block"`` subscriptions; raises
        ``MachineOverflowError`` for full ``overflow="error"`` ones after the
        others have the message.
        """
        bus = self._root._bus
        if channel not in bus._cache:
            check_channel(channel)
        delivered, refused, blocked = bus.offer(channel, msg)
        if blocked:
            for sub in blocked:
                await sub.wait_room()
                if sub.limit >= 0:
                    sub.items.append(msg)
                    sub._notify()
                    delivered += 1
        if refused:
            raise MachineOverflowError(channel, refused)
        return delivered

    def publish_nowait(self, channel: str, msg: Any) -> int:
        """``publish`` without waiting: a full ``block`` subscription raises ``anyio.WouldBlock`` (the others have it)."""
        bus = self._root._bus
        if channel not in bus._cache:
            check_channel(channel)
        delivered, refused, blocked = bus.offer(channel, msg)
        if refused:
            raise MachineOverflowError(channel, refused)
        if blocked:
            raise anyio.WouldBlock(f"publish to {channel!r}: a subscription with overflow='block' is full")
        return delivered

    def subscribe(self, pattern: str, handler: Handler, *, buffer: int | None = None,
                  overflow: Overflow = "block") -> Subscription:
        """Call ``handler(msg)`` (async or plain) for each message published to a channel matching ``pattern``.

        Called inside a routine, the subscription ends with that routine;
        otherwise with the machine. ``buffer`` (default: the machine's) bounds
        what waits for the handler; ``overflow`` says what a full buffer does.
        A handler returning ``False`` ends its subscription.
        """
        return self._subscribe(pattern, handler, buffer, overflow, _current_routine(self))

    def _subscribe(self, pattern: str, handler: Handler, buffer: int | None, overflow: Overflow,
                   owner: Routine | None) -> Subscription:
        check_pattern(pattern)
        if not callable(handler):
            raise TypeError(f"Machine {self.name!r}.subscribe: handler must be callable, got {handler!r}")
        if overflow not in OVERFLOWS:
            raise ValueError(
                f"Machine {self.name!r}.subscribe: overflow must be one of {', '.join(OVERFLOWS)}, got {overflow!r}"
            )
        cap = self.buffer if buffer is None else positive(f"Machine {self.name!r}.subscribe", "buffer", buffer,
                                                          integer=True)
        self._check_open()
        owner_machine = owner.machine if owner is not None else self
        sub = Subscription(self._root._bus, owner_machine, pattern, handler, cap, overflow, owner)
        if owner is not None:
            if owner._subscriptions is None:
                owner._subscriptions = []
            owner._subscriptions.append(sub)
        else:
            self._subscriptions.append(sub)
        self._root._bus.add(sub)
        tg = self._root._tg
        assert tg is not None
        tg.start_soon(self._consume, sub, name=f"subscription {pattern}")
        return sub

    async def _consume(self, sub: Subscription) -> None:
        try:
            await sub.consume()
        finally:
            owner = sub.owner
            if owner is not None and owner._subscriptions is not None and sub in owner._subscriptions:
                owner._subscriptions.remove(sub)
            if sub in sub.machine._subscriptions:
                sub.machine._subscriptions.remove(sub)

    # -- stats -------------------------------------------------------------------------------

    def stats(self) -> MachineStats:
        """Active and total routines, queued callers, errors, each active routine, and the sub-machines'."""
        owned = [*self._subscriptions, *(s for r in self._routines.values() for s in r._subscriptions or ())]
        own = sum(1 for s in owned if s.active)
        return MachineStats(
            name=self.name,
            active=len(self._routines),
            total=self._total,
            waiting=sum(1 for w in self._root._queue if w.machine is self),
            max_routines=self.max_routines,
            errors=self._error_count,
            recovered=self._recovered_count,
            routines=tuple(r.info() for r in list(self._routines.values())),
            subs={name: child.stats() for name, child in self._children.items()},
            subscriptions=own,
        )

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, active={len(self._routines)}, max_routines={self.max_routines})"


def _escaped(routine: Routine, exc: BaseException) -> Exception:
    """A routine may not end the process: its SystemExit or KeyboardInterrupt is its failure."""
    error = RuntimeError(f"routine {routine.id!r} raised {type(exc).__name__}({exc}); raise an error instead")
    error.__cause__ = exc
    return error


def _tags(tags: Iterable[str], owner: str) -> tuple[str, ...]:
    if not tags:
        return ()
    if isinstance(tags, str):
        return (tags,)
    out = tuple(tags)
    for tag in out:
        if not isinstance(tag, str):
            raise TypeError(f"Machine {owner!r}.go: tags are strings, got {tag!r}")
    return out


def _label(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _takes_one(fn: Any) -> bool:
    """Whether ``fn`` wants the routine as its argument (one required positional parameter)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind()
        return False
    except TypeError:
        pass
    try:
        signature.bind(None)
    except TypeError:
        raise TypeError(
            f"go: {_label(fn)}{signature} must take no argument or one (the Routine)"
        ) from None
    return True


def _no_arg(fn: Callable[[], Awaitable[Any]]) -> RoutineFn:
    async def call(routine: Routine) -> Any:
        return await fn()

    return call


def _current_routine(machine: Machine) -> Routine | None:
    """The routine of ``machine``'s tree that the calling task runs (or was started by), if any."""
    routine = _CURRENT.get()
    if routine is not None and routine.machine._root is machine._root and not routine.done:
        return routine
    return None
