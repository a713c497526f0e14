"""The database initializer: opens SQLite, publishes it as the service ``"db"``, closes it at the end."""

from __future__ import annotations

import sqlite3

from structlog.typing import FilteringBoundLogger

from nacelle_py import Initializer, Inject, ServiceContainer

from .archive import SCHEMA as ARCHIVE_SCHEMA
from .settings import DbSettings

__all__ = ["Database"]

SCHEMA = """
create table if not exists heartbeat (
    id   integer primary key,
    beat integer not null,
    at   real    not null   -- unix time
);
create table if not exists load (
    id      integer primary key,
    at      real not null,  -- unix time
    load    real not null,  -- 1-minute load average
    average real not null   -- its exponential moving average
);
"""


class Database(Initializer):
    """Opens the heartbeat database before any process runs; closes it after they have all stopped."""

    provides = ("db",)  # what init() sets: `nacelle-py check` resolves Inject("db") against it
    health_keys = ()  # it registers none

    services: ServiceContainer = Inject("services")
    settings: DbSettings = Inject()  # EXAMPLE_DB_PATH
    logger: FilteringBoundLogger = Inject("logger")

    # Plain ``def``: the runner calls these in a worker thread, so opening a file
    # may block. The connection is then used from the event loop's thread by the
    # heartbeat process, hence check_same_thread=False (only one user at a time).
    def init(self) -> None:
        path = self.settings.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(path, check_same_thread=False)
        # Replicas may share the file (docs/scale-out.md): WAL lets readers and one writer
        # work at once, and a writer waits for the lock instead of failing.
        self.connection.execute("pragma journal_mode = wal")
        self.connection.execute("pragma busy_timeout = 5000")
        with self.connection:
            self.connection.executescript(SCHEMA)
            self.connection.executescript(ARCHIVE_SCHEMA)  # the archive flow's table (archive.py)
        self.services.set("db", self.connection)
        self.logger.info("database opened", path=str(path))

    def finalize(self) -> None:
        self.connection.close()
        self.logger.info("database closed")
