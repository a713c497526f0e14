"""Where a flow run's history goes: nowhere (the default) or a store that can bring it back.

The engine tells its store every move, as it happens and before it goes on;
a store that survives the process (``SQLiteStore``) therefore holds, after a
``kill -9``, every atom's last state and every result, which is what
``flows.resume`` needs to run only what had not finished.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic_core import to_jsonable_python

from ._failure import Failure
from ._states import State

__all__ = ["Persistence", "Saved", "SavedAtom", "dumps", "jsonable"]


def dumps(where: str, value: Any) -> str:
    """``value`` as JSON text; TypeError naming ``where`` when it is not plain data or a pydantic model."""
    return json.dumps(jsonable(where, value), separators=(",", ":"))


def jsonable(where: str, value: Any) -> Any:
    """``value`` as JSON data (models dumped, tuples as lists); TypeError naming ``where`` when it cannot be."""
    try:
        return to_jsonable_python(value)
    except Exception as exc:
        raise TypeError(
            f"{where} is not JSON data ({type(value).__name__}: {exc}); a flow kept in a store or run by "
            "workers passes plain data (dict, list, str, int, float, bool, None) or pydantic models"
        ) from exc


@dataclass
class SavedAtom:
    """An atom's last recorded state: its result, its attempt (retry controllers), its order."""

    state: State
    result: tuple[Any] | None = None  # (its JSON data,) while its last execute's success stands, else None
    attempt: int = 0
    seq: int = 0  # when it last completed (SUCCESS or FAILURE): the order reverts go back through


@dataclass
class Saved:
    """One flow run as its store recorded it."""

    flow_id: str
    name: str
    engine: str
    state: State
    store: dict[str, Any]
    atoms: dict[str, SavedAtom] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)


class Persistence(Protocol):
    """What a flow store does; ``SQLiteStore`` is the one nacelle_py ships."""

    def begin(self, flow_id: str, name: str, engine: str, store: Mapping[str, Any]) -> None:
        """Record a new flow run and its store (``ValueError`` if ``flow_id`` exists)."""

    def flow_moved(self, flow_id: str, state: State) -> None:
        """Record the flow's new state."""

    def atom_moved(self, flow_id: str, atom: str, state: State, result: str | None, attempt: int, seq: int) -> None:
        """Record an atom's new state with its result (JSON text, while it stands), attempt and completion order."""

    def failed(self, flow_id: str, failure: Failure) -> None:
        """Record one failure (execute or revert), in order."""

    def load(self, flow_id: str) -> Saved | None:
        """The recorded run ``flow_id``, or None."""

    def unfinished(self, name: str | None = None) -> list[str]:
        """The ids of runs not yet ended (SUCCESS, REVERTED or FAILURE), oldest first; of flow ``name`` if given."""
