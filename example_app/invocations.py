"""Invocations: the example app as an AWS Lambda function (registered when AWS_LAMBDA_RUNTIME_API is set).

Each invocation's event is a ``Window`` (``{"beats": 10}``); the answer says how
many of the newest heartbeats the database holds and when the last one came. See
docs/lambda.md for the container image and the local emulator.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from structlog.typing import FilteringBoundLogger

from nacelle_py import Inject
from nacelle_py.base import LambdaContext, LambdaListener

from .tasks import Window

__all__ = ["Invocations"]


class Invocations(LambdaListener):
    """Answers ``{"beats": n}`` from the heartbeat table; an invalid event is the invocation's error."""

    db: sqlite3.Connection = Inject("db")
    logger: FilteringBoundLogger = Inject("logger")

    async def handle(self, event: Any, context: LambdaContext) -> object:
        window = Window.model_validate(event or {})  # a ValidationError is posted as the invocation's error
        rows = self.db.execute("select at from heartbeat order by id desc limit ?", (window.beats,)).fetchall()
        self.logger.info("invocation summarised", beats=len(rows), remaining_ms=context.get_remaining_time_in_millis())
        return {"beats": len(rows), "last_at": rows[0][0] if rows else None, "function": context.function_name}
