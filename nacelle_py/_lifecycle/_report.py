"""What the runner tells the outside: the app's phase (to observers) and every error (to the app).

Both are small objects handed to the parts of the lifecycle that need them,
so that no part calls back into the runner that composed it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._errors import ComponentError
from ._record import Entry
from ._states import Phase

__all__ = ["Errors", "Phases"]


class Phases:
    """The app's phase and the observers told of each change (the ops endpoint, systemd)."""

    def __init__(self, logger: Any) -> None:
        self.phase = Phase.STARTING
        self._logger = logger
        self._observers: list[Callable[[str, str], None]] = []

    def observe(self, observer: Callable[[str, str], None]) -> None:
        """Call ``observer(event, detail)`` on the loop at each phase change."""
        self._observers.append(observer)

    def tell(self, event: str, detail: str = "") -> None:
        """Announce ``event`` (a phase name, or ``"starting"`` again per group); nothing once stopped."""
        if self.phase is Phase.STOPPED:
            return
        if event in Phase.__members__.values():
            self.phase = Phase(event)
        for observer in self._observers:
            try:
                observer(event, detail)
            except Exception as exc:
                self._logger.error("lifecycle observer failed", event=event, exc_info=exc)


class Errors:
    """The app's error list: each error is kept, noted on its component's record, and reported once."""

    def __init__(
        self,
        errors: list[ComponentError],
        entries: Mapping[str, Entry],
        on_error: Callable[[ComponentError], None] | None,
    ) -> None:
        self.errors = errors
        self._entries = entries
        self._on_error = on_error

    def record(self, error: ComponentError) -> None:
        """An error that fails the run (exit status 1)."""
        self.errors.append(error)
        entry = self._entries.get(error.component)
        if entry is not None:
            entry.note(str(error))
        if self._on_error is not None:
            self._on_error(error)
