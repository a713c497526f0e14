"""A machine's errors: each logged as it happens, counted, and kept until ``wait()`` hands it out once.

An error never cancels the routine's siblings (unlike a task group's).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["Errors"]


class Errors:
    """The errors of one machine's routines and subscriptions, and its logger."""

    __slots__ = ("count", "kept", "log", "name", "recovered")

    def __init__(self, name: str, log: Any) -> None:
        self.name = name
        self.log = log
        self.kept: list[Exception] = []  # not yet raised by wait()
        self.count = 0  # routines and subscriptions that failed
        self.recovered = 0  # errors caught by recover()

    def failed(self, exc: Exception, event: str, **fields: Any) -> None:
        """Log ``exc`` (error level, with the traceback), count it and keep it for ``wait()``."""
        self.kept.append(exc)
        self.count += 1
        self.log.error(event, machine=self.name, exc_info=exc, **fields)

    def caught(self, routine: str, tags: Iterable[str], exc: BaseException) -> None:
        """Log and count an error ``recover()`` caught: never silent, but not kept."""
        self.recovered += 1
        self.log.error("routine error recovered", machine=self.name, routine=routine, tags=list(tags), exc_info=exc)

    def take(self) -> list[Exception]:
        """The errors kept since the last ``take()``: each is handed out once."""
        kept, self.kept = self.kept, []
        return kept
