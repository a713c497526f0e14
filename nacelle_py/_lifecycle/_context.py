"""The small object every phase of the lifecycle is handed: what it may read, record and request.

The runner builds one ``Context`` and composes the phases around it; the
phases import it (downward) instead of calling back into the runner, which
is what keeps the package free of import circles.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio

from .._calls import call
from .._errors import ComponentError
from .._health import Health
from .._inject import Injector
from .._logging import writes
from ._record import Entry, by_priority
from ._report import Errors, Phases
from ._shutdown import Shutdown

__all__ = ["CANCEL_GRACE", "Context", "bounded", "deadline", "ms"]

CANCEL_GRACE = 1.0
"""Seconds a run (or a component's routines) gets to unwind after it is cancelled before the runner stops waiting."""


def bounded(seconds: float | None) -> anyio.CancelScope:
    """A scope that gives up after ``seconds`` (never, for ``None``)."""
    return anyio.move_on_after(math.inf if seconds is None else seconds)


def deadline(started: float, timeout: float | None) -> float:
    """The loop time ``timeout`` seconds after ``started`` (infinity for no limit)."""
    return math.inf if timeout is None else started + timeout


def ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``perf_counter`` reading), for log lines."""
    return round((time.perf_counter() - start) * 1000, 3)


class Context:
    """One serving app's shared lifecycle state: entries, services, errors, the stop request, the waker."""

    def __init__(
        self,
        *,
        app_name: str,
        entries: Sequence[Entry],
        by_name: Mapping[str, Entry],
        injector: Injector,
        health: Health,
        logger: Any,
        errors: Errors,
        phases: Phases,
        shutdown: Shutdown,
        release: Callable[[str], Awaitable[None] | None] | None,
        forget: Callable[[str], object] | None = None,
    ) -> None:
        self.app_name = app_name
        self.entries = entries
        self.by_name = by_name  # the same entries by registered name
        self.groups = by_priority(entries)  # the priority groups, ascending: the boot's order, the unwind's reversed
        self.boot_order = [e for group in self.groups for e in group]
        self.injector = injector
        self.health = health
        self.logger = logger
        self.debug = writes(logger, logging.DEBUG)  # False: skip the per-process debug lines altogether
        self.errors = errors
        self.phases = phases
        self.shutdown = shutdown
        self.waker = shutdown.waker
        self._release = release
        self._forget = forget
        self.init_order: list[Entry] = []  # successful inits, in order: finalized in reverse
        self.running = 0  # runs started and not yet ended
        self.booted = False

    def record(self, error: ComponentError) -> None:
        """An error that fails the run."""
        self.errors.record(error)

    def request_stop(self, reason: str) -> None:
        """Begin the graceful unwind."""
        self.shutdown.request(reason)

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (or the boot abandoned)."""
        return self.shutdown.requested

    async def call(self, method: Callable[[], Any], entry: Entry, operation: str) -> None:
        """Call a lifecycle method (a plain ``def`` on a thread; its late error logged if abandoned)."""
        await call(method, self.waker, f"{entry.name}.{operation}", self.logger)

    def forget_services(self, entry: Entry) -> None:
        """Unregister the services the component's last ``init()`` set: its next one sets them again."""
        if self._forget is not None:
            self._forget(entry.name)

    async def release(self, entry: Entry) -> None:
        """End what per-component services made for the component (its routines), within a bound."""
        ending = self.releasing(entry)
        if ending is not None:
            await self.released(entry, ending)

    def releasing(self, entry: Entry) -> Awaitable[None] | None:
        """Begin ``release``: what to await (``released``), or None when nothing was made for it."""
        if self._release is None:
            return None
        try:
            return self._release(entry.name)
        except Exception as exc:
            self.record(ComponentError(entry.name, "release", exc))
            return None

    async def released(self, entry: Entry, ending: Awaitable[None]) -> None:
        """Await what ``releasing`` began, within a bound.

        Shielded: it runs as a cancelled run unwinds, and must still happen.
        """
        with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE) as scope:
            try:
                await ending
            except Exception as exc:
                self.record(ComponentError(entry.name, "release", exc))
        if scope.cancelled_caught:
            self.logger.warning("routines ignored cancellation; abandoned", component=entry.name, grace=CANCEL_GRACE)
