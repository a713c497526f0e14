"""Listeners: every state change of a flow and of its atoms, told to whoever asked.

A listener is a plain callable taking one ``Transition``. It runs on the
event loop, between the atoms, so it should be quick; one that raises is
logged (a warning naming the listener, the flow and the move) and the flow
goes on as if nothing happened.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._failure import Failure
from ._states import State

__all__ = ["Listener", "Listeners", "Transition"]


@dataclass(frozen=True)
class Transition:
    """One move: of the flow (``atom`` is None) or of one of its atoms, with the result or failure it brought."""

    flow: str
    flow_id: str
    atom: str | None
    old: State
    new: State
    result: Any = None  # what the atom's execute returned (on SUCCESS)
    failure: Failure | None = None  # on FAILURE

    def __str__(self) -> str:
        who = f"{self.flow}/{self.atom}" if self.atom else self.flow
        return f"{who}: {self.old} -> {self.new}"


Listener = Callable[[Transition], Any]


def checked_listeners(where: str, listeners: Iterable[Listener] | None) -> list[Listener]:
    """``listeners`` as a list, each a plain callable (TypeError naming ``where`` otherwise)."""
    if listeners is None:
        return []
    if callable(listeners) or isinstance(listeners, (str, bytes)):
        raise TypeError(f"{where}: listeners must be a list of callables, got {listeners!r}")
    out = list(listeners)
    for listener in out:
        if not callable(listener):
            raise TypeError(f"{where}: listener {listener!r} is not callable")
        if inspect.iscoroutinefunction(listener):
            raise TypeError(
                f"{where}: listener {listener!r} is async; listeners are plain callables run between atoms "
                "(hand the Transition to a memory stream to await something)"
            )
    return out


class Listeners:
    """The listeners of one flow run, and the logger their errors go to."""

    def __init__(self, listeners: list[Listener], log: Any) -> None:
        self.listeners = listeners
        self.log = log

    def add(self, listener: Listener) -> None:
        """Tell ``listener`` every move from now on."""
        self.listeners.extend(checked_listeners("flows listener", [listener]))

    def tell(self, event: Transition) -> None:
        """Hand ``event`` to every listener; one that raises is logged and the rest still hear it."""
        for listener in self.listeners:
            try:
                listener(event)
            except Exception as exc:
                self.log.warning(
                    "a flow listener raised; the flow goes on",
                    listener=getattr(listener, "__qualname__", repr(listener)),
                    move=str(event),
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )
