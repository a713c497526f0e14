"""Whether a dispatcher runs, and what it accepts: one status, one table, one mover.

Two things describe a dispatcher's life, and each has a table of the moves it
may make:

- its public ``DispatcherStatus`` (the Go package's values): what the workers
  are doing right now;
- its ``Phase``: where it is between runs (never run, running, asked to quit,
  quit, closed for good).

Everything else (whether ``dispatch`` accepts, whether ``submit`` and
``join`` can still expect a run) is derived from those two. ``RunState.move``
is the only place that changes them, and it refuses a move the tables do not
list, so a wrong sequence fails loudly in tests instead of leaving a flag set.
"""

from __future__ import annotations

import enum

__all__ = ["DispatcherStatus", "Phase", "RunState"]


class DispatcherStatus(enum.IntEnum):
    """What the dispatcher is doing (the Go package's values).

    Compares equal to its int value and, for convenience, to its name:
    ``d.status == DispatcherStatus.RUNNING == 2 == "RUNNING"``.
    """

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.name == other.upper()
        return int.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = int.__hash__

    def __str__(self) -> str:
        return self.name

    STOPPED = 0
    """Not running; dispatched tasks wait in the buffer."""
    STOPPING = 1
    """``quit(drain=False)``: running tasks finish, queued ones are handed back."""
    RUNNING = 2
    """Accepting and executing tasks."""
    DRAINING = 3
    """``quit(drain=True)``: no new tasks; everything accepted runs to an outcome."""


STOPPED, STOPPING, RUNNING, DRAINING = (
    DispatcherStatus.STOPPED,
    DispatcherStatus.STOPPING,
    DispatcherStatus.RUNNING,
    DispatcherStatus.DRAINING,
)


class Phase(enum.Enum):
    """Where a dispatcher is between runs."""

    NEW = "new"
    """Never run, or initialised again for a restart: tasks queue and wait for the next ``run()``."""
    RUNNING = "running"
    """``run()`` is active and nobody has finished quitting it."""
    QUITTING = "quitting"
    """``quit()`` is done with the tasks; ``run()`` is ending."""
    ENDED = "ended"
    """A run ended through ``quit()``; another ``run()`` may follow."""
    CLOSED = "closed"
    """Stopped for good (``stop()`` or an unwind): nothing is accepted until ``run()``, or a restart's ``init()``."""


_STATUS_MOVES: dict[DispatcherStatus, frozenset[DispatcherStatus]] = {
    STOPPED: frozenset({STOPPED, RUNNING}),
    RUNNING: frozenset({STOPPED, RUNNING, DRAINING, STOPPING}),
    # A cancelled quit() goes back to RUNNING; quit(drain=False) during a drain stops.
    DRAINING: frozenset({STOPPED, RUNNING, DRAINING, STOPPING}),
    STOPPING: frozenset({STOPPED, RUNNING, STOPPING}),
}

_PHASE_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.NEW: frozenset({Phase.RUNNING, Phase.ENDED, Phase.CLOSED}),
    Phase.RUNNING: frozenset({Phase.QUITTING, Phase.CLOSED}),
    Phase.QUITTING: frozenset({Phase.QUITTING, Phase.ENDED}),
    # NEW: under an App, the init() of a restart (a run follows it, as at boot).
    Phase.ENDED: frozenset({Phase.NEW, Phase.RUNNING, Phase.ENDED, Phase.CLOSED}),
    Phase.CLOSED: frozenset({Phase.NEW, Phase.RUNNING, Phase.CLOSED}),
}


class RunState:
    """A dispatcher's status and phase, changed only through ``move``."""

    __slots__ = ("accepting", "phase", "status")

    def __init__(self) -> None:
        self.status = STOPPED
        self.phase = Phase.NEW
        self.accepting = True

    def move(self, status: DispatcherStatus | None = None, phase: Phase | None = None) -> None:
        """Change the status and/or the phase; a move the tables do not list is a bug (``AssertionError``)."""
        if status is not None:
            if status not in _STATUS_MOVES[self.status]:
                raise AssertionError(f"dispatcher status cannot move from {self.status.name} to {status.name}")
            self.status = status
        if phase is not None:
            if phase not in _PHASE_MOVES[self.phase]:
                raise AssertionError(f"dispatcher phase cannot move from {self.phase.value} to {phase.value}")
            self.phase = phase
        # dispatch takes tasks while running, and while stopped unless closed for good
        self.accepting = self.status in (RUNNING, STOPPED) and self.phase is not Phase.CLOSED

    @property
    def was_quit(self) -> bool:
        """A run has ended and none has started since (so nothing will run what is queued)."""
        return self.phase in (Phase.ENDED, Phase.CLOSED)

    @property
    def quitting(self) -> bool:
        """``quit()`` is done; the active ``run()`` should end."""
        return self.phase is Phase.QUITTING
