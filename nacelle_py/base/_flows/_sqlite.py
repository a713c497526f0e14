"""``SQLiteStore``: every flow's history in one SQLite file (stdlib ``sqlite3``, WAL).

Each move is written and committed before the flow goes on. In WAL mode with
``synchronous=NORMAL`` a commit reaches the operating system before the call
returns, so a process killed with ``kill -9`` loses nothing already
committed (a power cut may lose the last moves; ``durable=True`` syncs
every commit to the disk, at the cost of a sync per move). Writes are short
and made on the event loop's thread: they take tens of microseconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from typing import Any

from ._failure import Failure
from ._persist import Saved, SavedAtom, dumps
from ._states import State

__all__ = ["SQLiteStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS flows (
    flow_id TEXT PRIMARY KEY, name TEXT NOT NULL, engine TEXT NOT NULL, state TEXT NOT NULL,
    store TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_state ON flows (state, created);
CREATE TABLE IF NOT EXISTS atoms (
    flow_id TEXT NOT NULL, atom TEXT NOT NULL, state TEXT NOT NULL, result TEXT,
    attempt INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (flow_id, atom)
);
CREATE TABLE IF NOT EXISTS failures (
    flow_id TEXT NOT NULL, n INTEGER NOT NULL, failure TEXT NOT NULL, PRIMARY KEY (flow_id, n)
);
"""

ENDED = (State.SUCCESS.value, State.REVERTED.value, State.FAILURE.value)


class SQLiteStore:
    """A flow store in the SQLite file at ``path`` (created with its directory's permissions if missing).

    One store may serve many flows and many ``flows.run`` calls at once, on
    one event loop; two processes should not run the same flow id at once.
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise TypeError(f"SQLiteStore: path must be a file path, got {path!r}")
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"SQLiteStore: the folder {folder!r} of {self.path!r} does not exist; create it")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise OSError(f"SQLiteStore: cannot open {self.path!r} as a flow store: {exc}") from exc
        self._lock = threading.Lock()  # the connection is shared with threads (FlowRunner's stats, tests)
        self._failures: dict[str, int] = {}

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def begin(self, flow_id: str, name: str, engine: str, store: Mapping[str, Any]) -> None:
        """Record a new run (``ValueError`` when ``flow_id`` is taken)."""
        now = time.time()
        text = dumps(f"the store of flow {name!r}", dict(store))
        try:
            self._write(
                "INSERT INTO flows VALUES (?, ?, ?, ?, ?, ?, ?)",
                (flow_id, name, engine, State.PENDING.value, text, now, now),
            )
        except sqlite3.IntegrityError:
            raise ValueError(
                f"SQLiteStore: a flow run with id {flow_id!r} is already recorded; resume it (flows.resume) "
                "or choose another flow_id"
            ) from None

    def flow_moved(self, flow_id: str, state: State) -> None:
        """Record the flow's new state."""
        self._write("UPDATE flows SET state = ?, updated = ? WHERE flow_id = ?", (state.value, time.time(), flow_id))

    def atom_moved(self, flow_id: str, atom: str, state: State, result: str | None, attempt: int, seq: int) -> None:
        """Record an atom's new state (and its result, JSON text encoded once by the flow, while it stands)."""
        self._write(
            "INSERT OR REPLACE INTO atoms VALUES (?, ?, ?, ?, ?, ?)", (flow_id, atom, state.value, result, attempt, seq)
        )

    def failed(self, flow_id: str, failure: Failure) -> None:
        """Record one failure, after those before it."""
        with self._lock:
            n = self._failures.get(flow_id)
            if n is None:
                row = self._db.execute("SELECT COALESCE(MAX(n), 0) FROM failures WHERE flow_id = ?", (flow_id,))
                n = int(row.fetchone()[0])
            self._failures[flow_id] = n + 1
            self._db.execute("INSERT INTO failures VALUES (?, ?, ?)", (flow_id, n + 1, json.dumps(failure.to_json())))

    def load(self, flow_id: str) -> Saved | None:
        """The recorded run ``flow_id``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT name, engine, state, store FROM flows WHERE flow_id = ?", (flow_id,)
            ).fetchone()
            if row is None:
                return None
            atoms = self._db.execute(
                "SELECT atom, state, result, attempt, seq FROM atoms WHERE flow_id = ?", (flow_id,)
            ).fetchall()
            failures = self._db.execute(
                "SELECT failure FROM failures WHERE flow_id = ? ORDER BY n", (flow_id,)
            ).fetchall()
        saved = Saved(flow_id, row[0], row[1], State(row[2]), json.loads(row[3]))
        for atom, state, result, attempt, seq in atoms:
            value = (json.loads(result),) if result is not None else None
            saved.atoms[atom] = SavedAtom(State(state), value, int(attempt), int(seq))
        saved.failures = [Failure.from_json(json.loads(f)) for (f,) in failures]
        return saved

    def unfinished(self, name: str | None = None) -> list[str]:
        """The ids of runs not yet ended, oldest first (of flow ``name`` if given)."""
        sql = "SELECT flow_id FROM flows WHERE state NOT IN (?, ?, ?)"
        args: tuple[Any, ...] = ENDED
        if name is not None:
            sql += " AND name = ?"
            args += (name,)
        with self._lock:
            return [r[0] for r in self._db.execute(sql + " ORDER BY created", args).fetchall()]

    def states(self, flow_id: str) -> dict[str, str]:
        """The flow's state and every atom's, as recorded (``"flow"`` for the flow itself); for tools and tests."""
        with self._lock:
            out = {a: s for a, s in self._db.execute("SELECT atom, state FROM atoms WHERE flow_id = ?", (flow_id,))}
            row = self._db.execute("SELECT state FROM flows WHERE flow_id = ?", (flow_id,)).fetchone()
        if row is not None:
            out["flow"] = row[0]
        return out

    def close(self) -> None:
        """Close the file (the store cannot be used afterwards)."""
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"
