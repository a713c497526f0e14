"""Named background tasks: the heartbeat's clean-up, and summaries the HTTP API asks for.

They run on the app's Dispatcher: in this process by default, or, with
``EXAMPLE_DISPATCHER_BACKEND=redis``, on whichever replica takes them from
the shared Redis stream (see docs/scale-out.md). Payloads and results are
pydantic models: they cross processes as JSON.
"""

from __future__ import annotations

import sqlite3

import anyio
from pydantic import BaseModel, Field

from nacelle_py import ServiceContainer
from nacelle_py.base import Dispatcher

__all__ = ["KEEP_ROWS", "PruneRequest", "Summary", "Window", "register_tasks"]

KEEP_ROWS = 100
"""How many heartbeat rows the clean-up keeps."""


class PruneRequest(BaseModel):
    """Delete all heartbeat rows but the newest ``keep``."""

    keep: int = Field(KEEP_ROWS, ge=1)


class Window(BaseModel):
    """Summarise the newest ``beats`` heartbeat rows."""

    beats: int = Field(10, ge=1, le=10_000)


class Summary(BaseModel):
    """How many heartbeats a window held and how often they came."""

    beats: int
    first_at: float | None
    last_at: float | None
    per_minute: float | None


def register_tasks(jobs: Dispatcher, services: ServiceContainer) -> None:
    """Register the example's named tasks on ``jobs``; they find the database among ``services``."""

    def db() -> sqlite3.Connection:
        connection: sqlite3.Connection = services.get("db")
        return connection

    # Async and quick: it runs on the event loop's thread, the one that owns the connection.
    @jobs.task("prune_heartbeats", retries=2, timeout=5.0, backoff=(0.5, 5.0))
    async def prune_heartbeats(request: PruneRequest) -> int:
        with db() as connection:
            return connection.execute(
                "delete from heartbeat where id <= (select max(id) from heartbeat) - ?", (request.keep,)
            ).rowcount

    @jobs.task("summarise", retries=3, timeout=10.0, backoff=(0.5, 10.0))
    async def summarise(window: Window) -> Summary:
        rows = db().execute("select at from heartbeat order by id desc limit ?", (window.beats,)).fetchall()
        await anyio.sleep(0.2)  # stands for real work (a report, a call to another service)
        times = sorted(at for (at,) in rows)
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return Summary(
            beats=len(times),
            first_at=times[0] if times else None,
            last_at=times[-1] if times else None,
            per_minute=(len(times) - 1) * 60 / span if span > 0 else None,
        )
