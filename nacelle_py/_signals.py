"""SIGINT/SIGTERM (stop), SIGHUP (reload) and SIGUSR1 (dump): every arrival counted, even two back to back.

Python runs a signal's handler once however many times the signal arrived
before the handler got to run, and trio's ``open_signal_receiver`` merges
identical signals too, so a second SIGINT sent right after the first would be
lost, and with it the forced shutdown. The wakeup fd does not merge: the C
handler writes one byte, the signal number, per arrival. So while the app
runs, the wakeup fd is the runner's waker socket and the Python-level
handlers do nothing (they only replace the default action and
KeyboardInterrupt); the waker reads the signal numbers on the event loop.
Everything is put back when the app has unwound.

SIGHUP and SIGUSR1 go the same way: their default action ends the process,
and an operator's reload or dump must never do that while the app serves.
Where a platform lacks them (Windows), they are simply not handled.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

__all__ = ["DUMP_SIGNAL", "OPERATOR_SIGNALS", "RELOAD_SIGNAL", "SIGNALS", "SignalCatcher"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop the app (a second one forces the shutdown)."""
RELOAD_SIGNAL: int | None = getattr(signal, "SIGHUP", None)
"""Re-read the settings and call every component's ``reload()``."""
DUMP_SIGNAL: int | None = getattr(signal, "SIGUSR1", None)
"""Log every component's state and every task's stack."""
OPERATOR_SIGNALS: tuple[int, ...] = tuple(s for s in (RELOAD_SIGNAL, DUMP_SIGNAL) if s is not None)
"""The signals an operator sends to a running app without stopping it."""


def _counted_elsewhere(signum: int, frame: FrameType | None) -> None:
    """The arrival is counted through the wakeup fd; nothing to do here."""


class SignalCatcher:
    """Routes the app's signals to a socket as one byte per arrival (main thread only)."""

    def __init__(self, fileno: int) -> None:
        self._fileno = fileno
        self._previous: dict[int, Any] = {}
        self._previous_fd: int | None = None

    def install(self) -> None:
        """Take over SIGINT, SIGTERM, SIGHUP, SIGUSR1 and the wakeup fd."""
        for signum in (*SIGNALS, *OPERATOR_SIGNALS):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, _counted_elsewhere)
        self._previous_fd = signal.set_wakeup_fd(self._fileno, warn_on_full_buffer=False)

    def restore(self) -> None:
        """Give the handlers and the wakeup fd back to whoever had them."""
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
            self._previous_fd = None
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
