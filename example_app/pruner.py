"""Background jobs: the heartbeat hands its clean-up work to a Dispatcher."""

from __future__ import annotations

import sqlite3

from structlog.typing import FilteringBoundLogger

__all__ = ["KEEP_ROWS", "Prune"]

KEEP_ROWS = 100
"""How many heartbeat rows the table keeps."""


class Prune:
    """A dispatcher task (an object with ``execute()``): delete all but the newest rows."""

    def __init__(self, db: sqlite3.Connection, logger: FilteringBoundLogger) -> None:
        self.db = db
        self.logger = logger

    async def execute(self) -> None:
        with self.db:
            deleted = self.db.execute(
                "delete from heartbeat where id <= (select max(id) from heartbeat) - ?", (KEEP_ROWS,)
            ).rowcount
        if deleted:
            self.logger.info("pruned old heartbeats", deleted=deleted)
