"""A flow with compensating reverts around database writes: archive old heartbeats, then trim them.

``archive`` is a linear flow of three tasks. Each write has its undo:

- ``CopyBeats`` copies the heartbeat rows older than the newest ``keep`` into the
  ``archive`` table, tagged with the run's ``batch``; its revert deletes that batch;
- ``TrimBeats`` deletes the copied rows from ``heartbeat``; its revert puts them back
  from the archive;
- ``CheckArchive`` compares the counts, and fails when the request asked it to
  (``"fail": true``), to show the reverts at work: the heartbeat table ends as it
  was and the archive without the batch.

The API submits it to the app's ``FlowRunner`` (``POST /flows/archive``), whose
history is kept in SQLite (``EXAMPLE_FLOWS_STORE``): a run interrupted by a
``kill -9`` is resumed at the next start.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from nacelle_py.base import flows

__all__ = ["SCHEMA", "archive_flow"]

SCHEMA = """
create table if not exists archive (
    id    integer primary key,  -- the heartbeat row's id
    beat  integer not null,
    at    real    not null,
    batch text    not null      -- the archive run that copied it
);
"""

Connection = Callable[[], sqlite3.Connection]


class CopyBeats(flows.Task):
    """Copy the heartbeats older than the newest ``keep`` into the archive; undo: delete the batch."""

    provides = "copied"

    def __init__(self, db: Connection) -> None:
        super().__init__()
        self.db = db

    # async and quick: the connection is used on the event loop's thread, like everywhere in the app.
    async def execute(self, keep: int, batch: str) -> int:
        with self.db() as connection:
            return connection.execute(
                "insert or ignore into archive (id, beat, at, batch) select id, beat, at, ? from heartbeat "
                "where id <= (select max(id) from heartbeat) - ?",
                (batch, keep),
            ).rowcount

    async def revert(self, batch: str) -> None:
        with self.db() as connection:
            connection.execute("delete from archive where batch = ?", (batch,))


class TrimBeats(flows.Task):
    """Delete the archived rows from ``heartbeat``; undo: put them back from the archive."""

    provides = "trimmed"

    def __init__(self, db: Connection) -> None:
        super().__init__()
        self.db = db

    async def execute(self, batch: str) -> int:
        with self.db() as connection:
            return connection.execute(
                "delete from heartbeat where id in (select id from archive where batch = ?)", (batch,)
            ).rowcount

    async def revert(self, batch: str) -> None:
        with self.db() as connection:
            connection.execute(
                "insert or ignore into heartbeat (id, beat, at) select id, beat, at from archive where batch = ?",
                (batch,),
            )


class CheckArchive(flows.Task):
    """Every copied row was trimmed; fails on request (``fail``) to show the reverts."""

    async def execute(self, copied: int, trimmed: int, fail: bool = False) -> None:
        if fail:
            raise RuntimeError(f"the check was asked to fail; {copied} archived rows go back to heartbeat")
        if copied != trimmed:
            raise RuntimeError(f"copied {copied} rows but trimmed {trimmed}")


def archive_flow(db: Connection) -> flows.Flow:
    """The ``archive`` flow; ``db()`` returns the app's connection (the ``db`` service)."""
    return flows.linear("archive", CopyBeats(db), TrimBeats(db), CheckArchive())
