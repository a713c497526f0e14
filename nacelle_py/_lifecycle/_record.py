"""What the runner keeps per component: its record (``Entry``) and the handle of one run (``RunHandle``).

The record lives as long as the app serves: options, bounds, state, errors,
timings and restarts, which the ops endpoint reads. A ``RunHandle`` lives as
long as one call of ``run()``: a restarted process gets a new one, so nothing
of a finished run (its cancel scope, its "stopping" flag) leaks into the next.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import anyio

from .._components import DEFAULT, Initializer, Options, overridden
from .._settings import AppSettings
from ._states import REGISTERED, TRANSITIONS, IllegalTransition, State

__all__ = ["ERRORS_KEPT", "LIFECYCLE_METHODS", "Countdown", "Entry", "RunHandle", "by_priority", "defined", "entries"]

LIFECYCLE_METHODS = ("preflight", "init", "run", "stop", "finalize")
"""The methods whose presence the runner asks about at every boot and unwind (``Entry.defines``)."""

ERRORS_KEPT = 20
"""How many of its latest errors a component's record keeps (all of them are counted): a component
restarted for weeks must not grow without bound."""


def defined(component: Initializer) -> frozenset[str]:
    """Which of ``LIFECYCLE_METHODS`` the component's class defines (not inherited from our base)."""
    return frozenset(m for m in LIFECYCLE_METHODS if overridden(component, m) is not None)


class Entry:
    """One registered component: its options, resolved bounds and what it has been through."""

    __slots__ = (
        "_state",
        "component",
        "defines",
        "error_count",
        "errors",
        "finalize_timeout",
        "handle",
        "init_timeout",
        "last_error",
        "name",
        "options",
        "reload_timeout",
        "restarts",
        "shutdown_timeout",
        "start_timeout",
        "timings",
    )

    def __init__(
        self,
        component: Initializer,
        options: Options,
        init_timeout: float | None,
        start_timeout: float | None,
        shutdown_timeout: float | None,
        finalize_timeout: float | None,
        reload_timeout: float | None = None,
        defines: frozenset[str] | None = None,
    ) -> None:
        self.component = component
        # What the class defines, looked up once (``entries`` once per class): every boot
        # and unwind asks, and a lookup through the class and our base costs each time.
        self.defines = defined(component) if defines is None else defines
        self.options = options
        self.name = options.name
        self.init_timeout = init_timeout
        self.start_timeout = start_timeout
        self.shutdown_timeout = shutdown_timeout
        self.finalize_timeout = finalize_timeout
        self.reload_timeout = reload_timeout
        self.handle: RunHandle | None = None  # the current (or last) run
        self._state = REGISTERED
        # What the ops endpoint reports besides the state: every error (restarted ones
        # included), the last one, the restarts, and when and how long each phase took.
        self.errors: deque[str] | tuple[()] = ()  # a ring made at the first error: most components have none
        self.error_count = 0
        self.last_error: str | None = None
        self.restarts = 0
        self.timings: dict[str, float] = {}

    @property
    def state(self) -> State:
        """The lifecycle state; changed only by ``move``."""
        return self._state

    def move(self, to: State) -> None:
        """Move to ``to``, or raise ``IllegalTransition`` if the table has no such move."""
        if to not in TRANSITIONS[self._state]:
            raise IllegalTransition(f"{self.name}: {self._state} -> {to} is not a lifecycle transition")
        self._state = to

    @property
    def kind(self) -> str:
        """``"process"`` if the component overrides ``run``, else ``"initializer"``."""
        return "process" if "run" in self.defines else "initializer"

    def note(self, error: str) -> None:
        """Remember an error of this component (for ``/debug/components``)."""
        if not self.errors:
            self.errors = deque(maxlen=ERRORS_KEPT)
        self.errors.append(error)
        self.error_count += 1
        self.last_error = error


def entries(registered: Iterable[tuple[Initializer, Options]], settings: AppSettings) -> list[Entry]:
    """The records of ``registered``, each bound left at ``DEFAULT`` taken from the app-wide ``settings``."""
    # Inline rather than a call per bound: five per component add up to a third of the
    # records' cost at a thousand components (bench/boot.py).
    init, start, shutdown = settings.init_timeout, settings.start_timeout, settings.shutdown_timeout
    finalize, reload = settings.finalize_timeout, settings.reload_timeout
    by_class: dict[type, frozenset[str]] = {}

    def defines(component: Initializer) -> frozenset[str]:
        found = by_class.get(type(component))
        if found is None:
            found = by_class[type(component)] = defined(component)
        return found

    # Positional: a class called with keywords costs half as much again per record.
    return [
        Entry(
            component,
            o,
            init if o.init_timeout is DEFAULT else o.init_timeout,
            start if o.start_timeout is DEFAULT else o.start_timeout,
            shutdown if o.shutdown_timeout is DEFAULT else o.shutdown_timeout,
            finalize if o.finalize_timeout is DEFAULT else o.finalize_timeout,
            reload if o.reload_timeout is DEFAULT else o.reload_timeout,
            defines(component),
        )
        for component, o in registered
    ]


def by_priority(entries: Iterable[Entry]) -> list[list[Entry]]:
    """``entries`` grouped by priority, ascending, each group in registration order."""
    groups: dict[int, list[Entry]] = {}
    for entry in entries:
        group = groups.get(entry.options.priority)
        if group is None:  # not setdefault(p, []): that makes a list per entry to throw away
            group = groups[entry.options.priority] = []
        group.append(entry)
    return [groups[p] for p in sorted(groups)]


class Countdown:
    """Set ``event`` once ``count`` things happened: one wait for a whole group instead of one each."""

    __slots__ = ("count", "event")

    def __init__(self, count: int) -> None:
        self.count = count
        self.event = anyio.Event()

    def done_one(self) -> None:
        """Count one; the last one sets the event."""
        self.count -= 1
        if self.count == 0:
            self.event.set()


class RunHandle:
    """One call of a process's ``run()``: how to cancel it, whether it began, whether it ended.

    ``begin()`` and ``ask_stop()`` decide under one lock which came first, so a
    stop that arrives before the run began (its task scheduled, or its thread
    not yet in ``run``) keeps the run from starting instead of calling
    ``stop()`` on a run that would then set itself up afresh and never see it.
    """

    __slots__ = (
        "_lock",
        "abandoned",
        "began",
        "countdown",
        "done",
        "entry",
        "finished",
        "fn",
        "host_scope",
        "is_async",
        "quiet",
        "scope",
        "starting",
        "stop",
        "stop_timed_out",
        "stopping",
    )

    def __init__(
        self,
        entry: Entry,
        fn: Callable[[], Any],
        is_async: bool,
        stop: Callable[[], Any] | None,
        starting: Countdown | None = None,
        quiet: bool = False,
    ) -> None:
        self.entry = entry
        self.fn = fn
        self.is_async = is_async
        self.stop = stop  # the component's stop(), if it has one
        self.quiet = quiet  # one of a large group: its own lifecycle lines go to debug
        self.scope: anyio.CancelScope | None = None if stop is None else anyio.CancelScope()  # processes with stop()
        self.host_scope: anyio.CancelScope | None = None  # shared by a group's processes without stop()
        self.starting = starting  # counts this run's start for the health wait
        self.done: anyio.Event | None = None  # created only when someone waits for this run to end
        self.countdown: Countdown | None = None  # counts this run's end for a group's stop
        self.began = False
        self.stopping = False
        self.finished = False
        self.stop_timed_out = False
        self.abandoned = False  # its component was finalized while it still ran: its end changes no state
        # A plain def's run begins on another thread than its stop is asked on; an async
        # run begins on the loop thread, where stops are asked too: it needs no lock.
        self._lock = None if is_async else threading.Lock()

    def begin(self) -> bool:
        """Called as the run begins (on its thread, for a plain ``def``): False if a stop came first."""
        if self._lock is None:
            self.began = not self.stopping
            return self.began
        with self._lock:
            if self.stopping:
                return False
            self.began = True
            return True

    def ask_stop(self) -> bool:
        """Mark the run stopping; whether it had begun (only then is ``stop()`` called)."""
        if self._lock is None:
            self.stopping = True
            return self.began
        with self._lock:
            self.stopping = True
            return self.began

    def cancel(self) -> None:
        """Cancel this run (for a process without ``stop()``: its whole group's, which stop together)."""
        scope = self.scope or self.host_scope
        if scope is not None:
            scope.cancel()

    async def wait(self, deadline: float) -> bool:
        """Wait until the run has ended or ``deadline`` passed; whether it ended."""
        if not self.finished:
            if self.done is None:
                self.done = anyio.Event()
            with anyio.CancelScope(deadline=deadline):
                await self.done.wait()
        return self.finished

    def ended(self) -> None:
        """Mark the run ended and tell whoever waits."""
        self.finished = True
        if self.done is not None:
            self.done.set()
        if self.countdown is not None:
            self.countdown.done_one()
