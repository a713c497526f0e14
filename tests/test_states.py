"""The lifecycle's state table: the one in the code is the one docs/lifecycle.md shows, and it is enforced."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nacelle_py import Initializer
from nacelle_py._components import Options
from nacelle_py._lifecycle import PHASES, STATES, TRANSITIONS, Entry, IllegalTransition, State

DOC = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"


def documented_moves() -> set[tuple[str, str]]:
    """Every ``| `from` | `to` | when |`` row of the states table in docs/lifecycle.md."""
    text = DOC.read_text()
    table = text[text.index("## States") : text.index("## Restarts")]
    return set(re.findall(r"^\| `(\w+)` \| `(\w+)` \|", table, flags=re.M))


def test_the_documented_table_is_the_table_in_the_code() -> None:
    in_code = {(str(a), str(b)) for a, targets in TRANSITIONS.items() for b in targets}
    assert documented_moves() == in_code


def test_every_state_has_a_row_and_the_strings_stay_the_same() -> None:
    assert set(TRANSITIONS) == set(State)
    assert [str(s) for s in STATES] == [
        "registered",
        "initializing",
        "initialized",
        "running",
        "stopping",
        "stopped",
        "finalizing",
        "finalized",
        "failed",
        "restarting",
    ]
    assert [str(p) for p in PHASES] == ["starting", "running", "stopping", "stopped"]


def test_an_illegal_move_raises_and_leaves_the_state_alone() -> None:
    entry = Entry(
        Initializer(),
        Options(name="c"),
        init_timeout=None,
        start_timeout=None,
        shutdown_timeout=None,
        finalize_timeout=None,
    )
    with pytest.raises(IllegalTransition, match="c: registered -> running"):
        entry.move(State.RUNNING)
    assert entry.state is State.REGISTERED
    entry.move(State.INITIALIZING)
    entry.move(State.INITIALIZED)
    assert entry.state == "initialized"  # a StrEnum: the ops endpoint's strings
