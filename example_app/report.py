"""A Worker that reports what the database holds (interval: EXAMPLE_WORKER_TICK_INTERVAL)."""

from __future__ import annotations

import sqlite3

from structlog.typing import FilteringBoundLogger

from nacelle_py import Inject
from nacelle_py.base import Worker

__all__ = ["Report"]


class Report(Worker):
    """Logs the number of heartbeat rows at once and then every 5 seconds (``EXAMPLE_WORKER_TICK_INTERVAL``)."""

    db: sqlite3.Connection = Inject("db")
    logger: FilteringBoundLogger = Inject("logger")

    def __init__(self) -> None:
        super().__init__(interval=5.0, tolerate_errors=True)  # a failed report is logged, not fatal

    async def tick(self) -> None:
        (rows,) = self.db.execute("select count(*) from heartbeat").fetchone()
        self.logger.info("report", heartbeat_rows=rows)
