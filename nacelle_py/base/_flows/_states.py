"""The states of a flow and of its atoms, and the tables that say which moves are legal.

Every state change goes through ``check()``: an illegal move is a bug in the
engine and raises at once, instead of a listener or the SQLite store seeing a
history the flow never had. ``FAILED`` is another name of ``FAILURE`` (what
``FlowFailed.state`` reads best as).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

__all__ = ["ATOM_MOVES", "FLOW_MOVES", "IllegalMove", "State", "check"]


class State(StrEnum):
    """Where a flow, or one of its atoms, is."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVERTING = "REVERTING"
    REVERTED = "REVERTED"
    RETRYING = "RETRYING"
    SUSPENDED = "SUSPENDED"
    FAILED = "FAILURE"  # an alias: FlowFailed.state is REVERTED or FAILED


S = State
ATOM_MOVES: Mapping[State, frozenset[State]] = {
    S.PENDING: frozenset({S.RUNNING}),
    # PENDING: the run was interrupted (a crash, resumed from the store) and runs again.
    # RETRYING, REVERTING: a retry controller (RUNNING while its subflow runs) waits out its
    # backoff, or is reverted with its subflow.
    S.RUNNING: frozenset({S.SUCCESS, S.FAILURE, S.PENDING, S.RETRYING, S.REVERTING}),
    S.SUCCESS: frozenset({S.REVERTING}),
    # A failed execute is reverted too (its revert gets the Failure as its result).
    S.FAILURE: frozenset({S.REVERTING}),
    # FAILURE: the revert raised; REVERTING again: a revert interrupted by a crash runs again.
    S.REVERTING: frozenset({S.REVERTED, S.FAILURE, S.REVERTING}),
    # A retry controller sends its subflow's reverted tasks back to wait for the next attempt.
    S.REVERTED: frozenset({S.PENDING}),
    S.RETRYING: frozenset({S.RUNNING, S.REVERTING}),
    S.SUSPENDED: frozenset(),
}
"""The moves of one atom (a task, or a retry controller seen as the atom of its subflow)."""

FLOW_MOVES: Mapping[State, frozenset[State]] = {
    S.PENDING: frozenset({S.RUNNING}),
    # RETRYING: a subflow's retry controller waits out its backoff before the next attempt.
    S.RUNNING: frozenset({S.SUCCESS, S.REVERTING, S.SUSPENDED, S.RETRYING}),
    S.RETRYING: frozenset({S.RUNNING, S.SUSPENDED, S.REVERTING}),
    S.SUSPENDED: frozenset({S.RUNNING, S.REVERTING}),
    S.REVERTING: frozenset({S.REVERTED, S.FAILURE}),
    S.SUCCESS: frozenset(),
    S.REVERTED: frozenset(),
    S.FAILURE: frozenset(),
}
"""The moves of a whole flow."""


class IllegalMove(RuntimeError):
    """The engine tried a move its table does not allow: a bug in nacelle_py, never the user's."""


def check(table: Mapping[State, frozenset[State]], what: str, old: State, new: State) -> None:
    """Raise ``IllegalMove`` unless ``table`` allows ``what`` to move from ``old`` to ``new``."""
    if new not in table[old]:
        raise IllegalMove(f"{what}: {old} -> {new} is not a legal move")
