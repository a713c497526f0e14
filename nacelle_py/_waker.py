"""Waking the event loop: from its own thread directly, from any other thread through a self-pipe.

anyio's ``Event`` may only be set on the loop's thread, and
``from_thread.run_sync`` blocks the caller (and never returns once the loop
is gone). A byte written to a socket pair never blocks and works the same on
asyncio and trio, so worker threads, signal-free shutdown requests and
health updates from threads all wake the runner through it.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["Waker"]


class Waker:
    """A condition the loop waits on: ``notify()`` from anywhere, ``await changed()`` on the loop."""

    def __init__(
        self, on_wake: Callable[[], None] | None = None, on_signal: Callable[[int], None] | None = None
    ) -> None:
        self._thread = threading.get_ident()
        self._event = anyio.Event()
        self._on_wake = on_wake
        self._on_signal = on_signal
        self._calls: deque[Callable[[], None]] = deque()  # from other threads, for the loop
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on the event loop's thread."""
        return threading.get_ident() == self._thread

    def notify(self) -> None:
        """Wake every task waiting in ``changed()``; safe from any thread."""
        if threading.get_ident() == self._thread:
            self._fire()
            return
        try:
            self._writer.send(b"\0")
        except OSError:  # the pipe is full (a wake-up is pending anyway) or closed (the loop is gone)
            pass

    def on_loop(self, call: Callable[[], None]) -> None:
        """Call ``call()`` on the loop thread: at once from there, else when the loop reads the wake-up.

        ``call`` must not raise. Once the waker is closed, calls from other threads are dropped.
        """
        if threading.get_ident() == self._thread:
            call()
            return
        self._calls.append(call)  # deque appends and pops are atomic: no lock
        self.notify()

    def _fire(self) -> None:
        while self._calls:
            self._calls.popleft()()
        if self._on_wake is not None:
            self._on_wake()
        event, self._event = self._event, anyio.Event()
        event.set()

    async def changed(self) -> None:
        """Wait for the next ``notify()``."""
        await self._event.wait()

    def writer_fileno(self) -> int:
        """The socket to use as the wakeup fd: each byte written is a signal's number."""
        return self._writer.fileno()

    async def pump(self) -> None:
        """Turn bytes written by other threads (0) and by signals (their number) into wake-ups."""
        while True:
            await anyio.wait_readable(self._reader)
            received = bytearray()
            try:
                while chunk := self._reader.recv(4096):
                    received += chunk
            except BlockingIOError:
                pass
            if self._on_signal is not None:
                for signum in received:
                    if signum:
                        self._on_signal(signum)
            self._fire()

    def close(self) -> None:
        """Release the socket pair."""
        self._reader.close()
        self._writer.close()
