"""A replica of a worker-based Pipeline, as a real App process.

    python tests/scripts/pipeline_replica.py BACKEND DB COUNT DELAY

BACKEND is asyncio or trio. The pipeline is ``numbers -> square -> store``,
registered under ``App("pr")`` as ``pipeline``; which of its stages this
replica runs, its Redis and its namespace come from the environment, as in
a deployment: ``PIPELINE_ENGINE=worker-based``, ``PIPELINE_STAGES``,
``REDIS_URL``, ``PIPELINE_NAMESPACE``, ``PIPELINE_LEASE``.

- ``numbers`` emits 0 .. COUNT-1 (in pieces of 500 with ``emit.many``);
- ``square`` (8 workers) sleeps DELAY seconds, then emits the square;
- ``store`` (plain, with ids) inserts ``(id, value)`` into the SQLite
  database DB, ignoring an id it has already (``INSERT OR IGNORE``), and
  records every delivery in a second table, so a test sees both what was
  stored (each id once) and what arrived twice (after a crash).

A replica exits 0 when the stages it runs have finished: the end of the
input travels from the root's replica to the others through Redis.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from typing import Any

import anyio

from nacelle_py import App
from nacelle_py.base import Message, Pipeline, Stage

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS stored (id TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS deliveries (id TEXT NOT NULL)",
)


def build(db: str, count: int, delay: float) -> Pipeline:
    local = threading.local()

    def connection() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(db, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            for statement in SCHEMA:
                conn.execute(statement)
        return conn

    async def numbers(emit: Any) -> None:
        for start in range(0, count, 500):
            await emit.many(range(start, min(start + 500, count)))

    async def square(n: int, emit: Any) -> None:
        await anyio.sleep(delay)
        await emit(n * n)

    def store(msg: Message[int]) -> None:
        conn = connection()
        with conn:
            conn.execute("INSERT INTO deliveries (id) VALUES (?)", (msg.id,))
            conn.execute("INSERT OR IGNORE INTO stored (id, value) VALUES (?, ?)", (msg.id, msg.body))

    return Pipeline(
        [
            Stage(
                "numbers",
                numbers,
                [
                    Stage("square", square, [Stage("store", store, with_id=True)], workers=8, buffer=256),
                ],
            )
        ]
    )


def main() -> None:
    backend, db, count, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    app = App("pr")
    app.register(build(db, count, delay), name="pipeline", priority=1)
    sys.exit(app.boot([], backend=backend))


if __name__ == "__main__":
    main()
