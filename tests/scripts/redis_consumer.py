"""A consumer replica of a Redis-backed Dispatcher, as a real App process.

    python tests/scripts/redis_consumer.py BACKEND DB STARTED [--kind async|sync]
        [--max-workers N] [--max-threads N] [--max-buffered N]

BACKEND is asyncio or trio. The Dispatcher is registered under ``App("rc")``
as ``jobs`` and takes every backend setting from the environment, as a
deployment does: ``DISPATCHER_BACKEND``, ``REDIS_URL``, ``DISPATCHER_STREAM``,
``DISPATCHER_LEASE``, ``DISPATCHER_MAX_DELIVERIES`` (or the ``RC_`` ones).

It runs one task, ``record`` (payload :class:`Item`), whose side effect is a
row per item in the SQLite database DB: ``INSERT ... ON CONFLICT(n) DO UPDATE
SET runs = runs + 1``, so a second run of the same task shows as ``runs = 2``.
Before it does anything else, a run appends ``s <n> <unix time>`` to the file
STARTED (one unbuffered ``write`` on an ``O_APPEND`` descriptor: nothing is lost
when the process is killed with SIGKILL right after), and ``d <n> <unix time>``
once its row is committed. ``--kind sync`` registers the task as a plain function (it runs on
the dispatcher's threads, ``--max-threads`` of them); ``async`` (the default)
as a coroutine, which writes its row on a worker thread.

The tests read STARTED to learn what a killed replica had started and what
a stopped one started after its stop signal.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import threading
import time

import anyio
import anyio.to_thread
from pydantic import BaseModel

from nacelle_py import App
from nacelle_py.base import Dispatcher

SCHEMA = "CREATE TABLE IF NOT EXISTS runs (n INTEGER PRIMARY KEY, runs INTEGER NOT NULL, pid INTEGER NOT NULL)"
UPSERT = "INSERT INTO runs (n, runs, pid) VALUES (?, 1, ?) ON CONFLICT(n) DO UPDATE SET runs = runs + 1"


class Item(BaseModel):
    """One unit of work: its number (the row's key) and how long it takes."""

    n: int
    sleep: float = 0.0


def open_db(path: str) -> sqlite3.Connection:
    """A connection in WAL mode that waits (up to 30 s) for the other replicas' writes."""
    connection = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 30000")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(SCHEMA)
    return connection


class Recorder:
    """The task's side effects: the STARTED log and the row, one SQLite connection per thread."""

    def __init__(self, db: str, started: str) -> None:
        self.db = db
        self.fd = os.open(started, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.local = threading.local()
        self.pid = os.getpid()

    def mark(self, what: str, n: int) -> None:
        os.write(self.fd, f"{what} {n} {time.time():.6f}\n".encode())

    def write_row(self, n: int) -> None:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = open_db(self.db)
        connection.execute(UPSERT, (n, self.pid))
        self.mark("d", n)


def build(args: argparse.Namespace) -> App:
    recorder = Recorder(args.db, args.started)
    open_db(args.db).close()  # the table exists before the first task
    jobs = Dispatcher(max_workers=args.max_workers, max_threads=args.max_threads, max_buffered=args.max_buffered)
    if args.kind == "async":

        @jobs.task("record", timeout=60.0)
        async def record(item: Item) -> int:
            recorder.mark("s", item.n)
            if item.sleep:
                await anyio.sleep(item.sleep)
            await anyio.to_thread.run_sync(recorder.write_row, item.n)
            return item.n

    else:

        @jobs.task("record", timeout=60.0)
        def record_plain(item: Item) -> int:
            recorder.mark("s", item.n)
            if item.sleep:
                time.sleep(item.sleep)
            recorder.write_row(item.n)
            return item.n

    app = App("rc")
    app.register(jobs, name="jobs", priority=1)
    return app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=["asyncio", "trio"])
    parser.add_argument("db")
    parser.add_argument("started")
    parser.add_argument("--kind", choices=["async", "sync"], default="async")
    parser.add_argument("--max-workers", type=int, default=32)
    parser.add_argument("--max-threads", type=int, default=16)
    parser.add_argument("--max-buffered", type=int, default=1000)
    args = parser.parse_args(argv)
    return build(args).boot([], backend=args.backend)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
