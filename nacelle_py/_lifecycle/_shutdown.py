"""Shutdown: the stop request, signals, the forced shutdown, and the scopes they may shorten.

The parts of the lifecycle hand their cancel scopes to this one object
instead of it reaching into theirs: a scope entered through
``cancelled_on_stop()`` is cancelled by a graceful stop request (a group's
inits, a restart's backoff), one through ``graced_on_stop()`` ends a grace
period after it (a plain ``def`` init on its thread), one given to
``cancel_on_force()`` only by a forced shutdown (the graceful unwind, the
runs), and ``finalizing()`` gives a finalizer a scope whose deadline a
forced shutdown brings forward.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from .._errors import ComponentError
from .._signals import SIGNALS, SignalCatcher
from .._waker import Waker

__all__ = ["DUPLICATE_SIGNAL_WINDOW", "FORCED_EXIT_AFTER", "FORCED_FINALIZE_BUDGET", "Shutdown"]

FORCED_FINALIZE_BUDGET = 0.5
"""Seconds the finalizers share after a second signal, so the process exits within a second."""
DUPLICATE_SIGNAL_WINDOW = 0.05
"""SIGTERM again within this many seconds is one request: a process-group kill through ``make``
(which forwards SIGTERM to its child) delivers SIGTERM twice. Make does not forward SIGINT, so
a second SIGINT always counts."""
FORCED_EXIT_AFTER = 0.9
"""Seconds after a second signal at which ``boot()`` ends the process even if a run ignores cancellation."""


class Shutdown:
    """One app's stop request and forced shutdown; owns the waker the signals arrive through."""

    def __init__(
        self,
        *,
        app_name: str,
        logger: Any,
        record: Callable[[ComponentError], None],
        tell: Callable[[str, str], None],
        hard_exit: bool,
    ) -> None:
        self._app_name = app_name
        self._logger = logger
        self._record = record
        self._tell = tell
        self.hard_exit = hard_exit  # under boot(): the process is ours to end
        self.requested = False
        self.forced = False
        self.forced_deadline = math.inf
        self.closed = False  # the run is over: requests are ignored
        self._from_thread = False
        self._first_signal: tuple[int, float] | None = None
        self._on_stop: set[anyio.CancelScope] = set()
        self._on_force: set[anyio.CancelScope] = set()
        self._finalizing: set[anyio.CancelScope] = set()
        self._graced: dict[anyio.CancelScope, float] = {}
        self._watchdog: threading.Timer | None = None
        self._routes: dict[int, Callable[[], None]] = {}  # the operator's signals: SIGHUP, SIGUSR1
        self.waker = Waker(self._on_wake, self._on_signal)
        self._signals = SignalCatcher(self.waker.writer_fileno())

    # -- requests ------------------------------------------------------------------

    def request(self, reason: str) -> None:
        """Begin a graceful unwind (idempotent); safe from any thread."""
        if not self.waker.in_loop_thread():
            self._from_thread = True
            self.waker.notify()
            return
        if self.requested or self.closed:
            return
        self.requested = True
        self._logger.info("shutdown requested", reason=reason)
        self._tell("stopping", reason)
        for scope in self._on_stop:
            scope.cancel()
        now = anyio.current_time()
        for scope, grace in self._graced.items():
            scope.deadline = min(scope.deadline, now + grace)
        self.waker.notify()

    def boot_failed(self) -> None:
        """A failed injection or init ended the boot: the unwind begins (the error said why)."""
        if not self.requested:
            self.requested = True
            self._tell("stopping", "boot did not finish")

    def force(self, reason: str) -> None:
        """Abandon graceful waiting: cancel every run and give finalizers one short pass."""
        if self.forced:
            return
        self.forced = True
        self.requested = True
        self.forced_deadline = anyio.current_time() + FORCED_FINALIZE_BUDGET
        self._record(ComponentError(self._app_name, "shutdown", None, f"forced by {reason}"))
        for scope in (*self._on_stop, *self._on_force, *self._graced):
            scope.cancel()
        self.arm_watchdog(FORCED_EXIT_AFTER, "second signal")
        for scope in self._finalizing:
            scope.deadline = min(scope.deadline, self.forced_deadline)

    # -- the scopes it may shorten ---------------------------------------------------

    @contextmanager
    def cancelled_on_stop(self) -> Iterator[anyio.CancelScope]:
        """A scope that a stop request (or one already made) cancels."""
        scope = anyio.CancelScope()
        if self.requested:
            scope.cancel()
        self._on_stop.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._on_stop.discard(scope)

    @contextmanager
    def graced_on_stop(self, grace: float) -> Iterator[anyio.CancelScope]:
        """A shielded scope that a stop request ends ``grace`` seconds later (a forced shutdown at once).

        For work that cannot be cancelled (a plain ``def`` on a thread): the
        stop gives it time to finish, so that what it did is unwound too.
        """
        scope = anyio.CancelScope(shield=True)
        if self.forced:
            scope.cancel()
        elif self.requested:
            scope.deadline = anyio.current_time() + grace
        self._graced[scope] = grace
        try:
            with scope:
                yield scope
        finally:
            del self._graced[scope]

    def cancel_on_force(self, scope: anyio.CancelScope) -> None:
        """Cancel ``scope`` when the shutdown is forced (at once if it already was)."""
        if self.forced:
            scope.cancel()
        self._on_force.add(scope)

    @contextmanager
    def finalizing(self, deadline: float) -> Iterator[anyio.CancelScope]:
        """A finalizer's scope: ``deadline``, brought forward to the forced budget's end by a forced shutdown."""
        scope = anyio.CancelScope(deadline=min(deadline, self.forced_deadline))
        self._finalizing.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._finalizing.discard(scope)

    # -- signals and the waker -------------------------------------------------------

    def install_signals(self) -> None:
        """Take SIGINT, SIGTERM and the operator's signals (main thread only; the caller checks)."""
        self._signals.install()

    def route(self, signum: int, handler: Callable[[], None]) -> None:
        """Call ``handler()`` on the loop at each arrival of ``signum`` (one of ``OPERATOR_SIGNALS``)."""
        self._routes[signum] = handler

    def close(self, *, signals: bool) -> None:
        """The run is over: put the signals back, disarm the watchdog, release the waker."""
        self.closed = True
        if signals:
            self._signals.restore()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.waker.close()

    def _on_wake(self) -> None:
        if self._from_thread and not self.requested:
            self.request("shutdown() called")

    def _on_signal(self, signum: int) -> None:
        """One arrival of a signal, read on the loop from the wakeup fd."""
        if signum not in SIGNALS:
            handler = self._routes.get(signum)
            if handler is not None and not self.closed:
                try:
                    handler()
                except Exception as exc:  # an operator's request must never take the app down
                    self._logger.error("signal handler failed", signal=signal.Signals(signum).name, exc_info=exc)
            return
        at = time.monotonic()
        name = signal.Signals(signum).name
        first = self._first_signal
        if first is None:
            self._first_signal = (signum, at)
            self._logger.info("signal received; shutting down gracefully", signal=name)
            self.request(f"signal {name}")
        elif signum == signal.SIGTERM == first[0] and at - first[1] < DUPLICATE_SIGNAL_WINDOW:
            self._logger.debug("duplicate signal ignored", signal=name)
        elif not self.forced:
            self._logger.warning("second signal; forcing shutdown", signal=name)
            self.force(f"second signal {name}")

    # -- the last resort -------------------------------------------------------------

    def arm_watchdog(self, seconds: float, reason: str) -> None:
        """Under ``boot()`` only: end the process with status 1 if it is still unwinding after ``seconds``."""
        if not self.hard_exit or self._watchdog is not None:
            return
        logger = self._logger

        def hard_exit() -> None:
            try:
                logger.error("exiting now with status 1", reason=reason)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(1)

        self._watchdog = threading.Timer(seconds, hard_exit)
        self._watchdog.daemon = True
        self._watchdog.start()
