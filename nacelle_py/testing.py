"""Helpers for testing apps built on nacelle_py.

``Trace`` records lifecycle events in order (from any thread) so tests
assert order on a list, not on sleeps; ``test_app`` builds an ``App`` that
leaves signals alone and logs through ``structlog.get_logger()``, so
``structlog.testing.capture_logs()`` sees every line.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from ._app import App

__all__ = ["Trace", "test_app"]


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


def test_app(
    name: str = "test",
    *,
    env_file: str | Path | None = None,
    secrets_dir: str | Path | None = None,
    **kwargs: Any,
) -> App:
    """An ``App`` for tests: no signal handling, logs through ``structlog.get_logger()``."""
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("logger", structlog.get_logger())
    return App(name, env_file=env_file, secrets_dir=secrets_dir, **kwargs)


test_app.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite the name
