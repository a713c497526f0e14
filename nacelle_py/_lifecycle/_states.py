"""The lifecycle's states and phases, and the one table that says which moves are legal.

A component's state changes only through ``move()`` (``Entry.move``), which
checks the move against ``TRANSITIONS``: an illegal move is a bug in the
runner and raises at once instead of leaving the ops endpoint to report a
state the component never reached. The values are the strings the ops
endpoint and the metrics labels have always used.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

__all__ = [
    "FAILED",
    "FINALIZED",
    "FINALIZING",
    "INITIALIZED",
    "INITIALIZING",
    "PHASES",
    "REGISTERED",
    "RUNNING",
    "STATES",
    "STOPPED",
    "STOPPING",
    "TRANSITIONS",
    "IllegalTransition",
    "Phase",
    "State",
]


class State(StrEnum):
    """Where one component is in its life, as ``/debug/components`` and ``nacelle_component_state`` show it."""

    REGISTERED = "registered"
    INITIALIZING = "initializing"
    INITIALIZED = "initialized"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINALIZING = "finalizing"
    FINALIZED = "finalized"
    FAILED = "failed"
    RESTARTING = "restarting"


# The states as plain module constants, for the paths taken once per process on every boot
# and unwind: ``State.RUNNING`` is a lookup through the enum's metaclass (about 0.1 µs on
# CPython 3.11), several per process, which a thousand processes notice.
REGISTERED: Final = State.REGISTERED
INITIALIZING: Final = State.INITIALIZING
INITIALIZED: Final = State.INITIALIZED
RUNNING: Final = State.RUNNING
STOPPING: Final = State.STOPPING
STOPPED: Final = State.STOPPED
FINALIZING: Final = State.FINALIZING
FINALIZED: Final = State.FINALIZED
FAILED: Final = State.FAILED


class Phase(StrEnum):
    """Where the whole app is: booting the priority groups, supervising, unwinding, done."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


S = State
TRANSITIONS: Mapping[State, frozenset[State]] = {
    # An injection failure leaves a component registered; a cancelled init goes back to it.
    # INITIALIZED: it has no init(); RESTARTING: a restart's injection failed or init was cancelled.
    S.REGISTERED: frozenset({S.INITIALIZING, S.INITIALIZED, S.RESTARTING}),
    S.INITIALIZING: frozenset({S.INITIALIZED, S.FAILED, S.REGISTERED}),
    # STOPPED: a stop that came before its run began keeps the run from starting (a clean stop).
    S.INITIALIZED: frozenset({S.RUNNING, S.STOPPED, S.FINALIZING, S.FINALIZED}),
    # FINALIZING, FINALIZED: a run that outlived its unwind (it ignored cancellation, or a
    # second signal forced the shutdown) is abandoned, and its component finalized all the same.
    S.RUNNING: frozenset({S.STOPPING, S.STOPPED, S.FAILED, S.FINALIZING, S.FINALIZED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.FINALIZING, S.FINALIZED}),
    S.STOPPED: frozenset({S.FINALIZING, S.FINALIZED}),
    # A failure is final in an unwind (a clean finalize does not hide it); a restart finalizes
    # what had initialised (FINALIZING, FINALIZED) or, after a failed init, starts again.
    S.FAILED: frozenset({S.FINALIZING, S.FINALIZED, S.RESTARTING}),
    S.FINALIZING: frozenset({S.FINALIZED, S.FAILED}),
    S.FINALIZED: frozenset({S.RESTARTING}),
    # Waiting out the backoff, then booting again; STOPPED: the app stopped first.
    S.RESTARTING: frozenset({S.INITIALIZING, S.INITIALIZED, S.STOPPED}),
}
"""Every legal move: ``TRANSITIONS[from]`` is the set of states a component may move to next."""

STATES: tuple[State, ...] = tuple(State)
"""Every state, in the order a clean run passes through them (``restarting`` last)."""
PHASES: tuple[Phase, ...] = tuple(Phase)
"""The runner's phases, in order."""


class IllegalTransition(RuntimeError):
    """The runner tried a move that ``TRANSITIONS`` does not allow: a bug in nacelle_py, never the user's."""
