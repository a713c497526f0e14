"""systemd's notification protocol: READY=1, STATUS=, STOPPING=1 and WATCHDOG=1 as datagrams.

The protocol is one datagram of ``KEY=value`` lines to the Unix socket named
by ``NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace). Sending
never blocks and never fails the app: a notification that cannot be sent is
logged once, as systemd itself treats them as best effort.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import anyio

__all__ = ["Notifier", "watchdog_applies"]

SEND_TIMEOUT = 1.0
"""Seconds one notification may wait for room in systemd's queue before it is given up."""


class Notifier:
    """Sends notifications to systemd's socket; ``watchdog()`` pings at half the period until cancelled."""

    def __init__(self, path: str, logger: Any) -> None:
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self._log = logger
        self._failed = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A full queue (systemd reads slowly; Linux queues 10 datagrams) waits a moment,
        # as sd_notify does, rather than dropping READY=1 or STOPPING=1.
        self._sock.settimeout(SEND_TIMEOUT)

    def notify(self, **fields: str) -> bool:
        """Send one datagram (``READY="1"``, ``STATUS="..."``); whether it was sent."""
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:  # once: a missing socket would otherwise log at every change
                self._failed = True
                self._log.warning("systemd notification failed", socket=self.address.lstrip("\0"), error=str(exc))
            return False
        return True

    def status(self, text: str) -> None:
        """``STATUS=text``: shown by ``systemctl status``."""
        self.notify(STATUS=text.replace("\n", " "))

    async def watchdog(self, period_usec: int) -> None:
        """``WATCHDOG=1`` at once and then every half period, from the loop (a stuck loop stops the pings)."""
        interval = period_usec / 2_000_000
        self._log.info("systemd watchdog enabled", interval=interval)
        while True:
            self.notify(WATCHDOG="1")
            await anyio.sleep(interval)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


def watchdog_applies(period_usec: int | None, pid: int | None) -> bool:
    """Whether the watchdog is ours: a period is set, for this process or for no process in particular."""
    return period_usec is not None and (pid is None or pid == os.getpid())
