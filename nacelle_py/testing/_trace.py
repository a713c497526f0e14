"""``Trace``: lifecycle events in order, recorded from any thread, so tests assert order on a list, not on sleeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator

__all__ = ["Trace"]


class Trace:
    """An ordered, thread-safe list of events such as ``"db.init"`` or ``"pinger.stop"``."""

    def __init__(self) -> None:
        self._events: list[str] = []
        self._lock = threading.Lock()

    def add(self, event: str) -> None:
        """Append one event."""
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[str]:
        """A copy of the events so far, in order."""
        with self._lock:
            return list(self._events)

    def before(self, first: str, second: str) -> bool:
        """Whether both events were recorded and the first ``first`` came before the first ``second``."""
        events = self.events
        if first not in events or second not in events:
            return False
        return events.index(first) < events.index(second)

    def __iter__(self) -> Iterator[str]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __contains__(self, event: object) -> bool:
        return event in self.events

    def __repr__(self) -> str:
        return f"Trace({self.events!r})"
