"""SIGINT/SIGTERM: every arrival counted, even two that come back to back.

Python runs a signal's handler once however many times the signal arrived
before the handler got to run, and trio's ``open_signal_receiver`` merges
identical signals too, so a second SIGINT sent right after the first would be
lost, and with it the forced shutdown. The wakeup fd does not merge: the C
handler writes one byte, the signal number, per arrival. So while the app
runs, the wakeup fd is the runner's waker socket and the Python-level
handlers do nothing (they only replace the default action and
KeyboardInterrupt); the waker reads the signal numbers on the event loop.
Everything is put back when the app has unwound.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

__all__ = ["SIGNALS", "SignalCatcher"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _counted_elsewhere(signum: int, frame: FrameType | None) -> None:
    """The arrival is counted through the wakeup fd; nothing to do here."""


class SignalCatcher:
    """Routes SIGINT and SIGTERM to a socket as one byte per arrival (main thread only)."""

    def __init__(self, fileno: int) -> None:
        self._fileno = fileno
        self._previous: dict[int, Any] = {}
        self._previous_fd: int | None = None

    def install(self) -> None:
        """Take over SIGINT and SIGTERM and the wakeup fd."""
        for signum in SIGNALS:
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
