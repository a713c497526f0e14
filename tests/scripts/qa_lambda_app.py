"""An app served as a Lambda custom runtime, for the black-box QA of tests/base/test_lambda_qa.py.

    AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT python tests/scripts/qa_lambda_app.py BACKEND [ARGS...]

Written from docs/lambda.md only. BACKEND is asyncio or trio; ARGS go to ``app.boot``.
The app is ``App("qa")`` (settings prefix ``QA_``); the script's own switches are ``QAS_*``:

- ``QAS_HANDLER``: ``async`` (default: a subclass with ``async def handle``), ``sync``
  (a subclass with a plain ``def handle``), ``fn-async`` / ``fn-sync`` (``LambdaListener(handler=...)``).
- ``QAS_FAIL``: ``init`` (an initializer's init raises ``ConnectionError``), ``preflight``
  (a process's preflight raises ``PermissionError``), ``slow-init`` (an init that outlasts
  ``QA_INIT_TIMEOUT``), ``init-and-finalize`` (an init raises and an earlier finalize raises
  during the unwind), ``inject`` (the listener asks for a service nobody provides).
- ``QAS_LATER=1``: a process at priority 3 that logs ``later started`` once it runs.
- ``QAS_RESTART``: the listener's restart policy (default ``never``).

The event's ``op`` says what the handler does (see ``answer``); every answer that
concerns timing carries the request id, so a late answer cannot pass for another's.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from typing import Any

import anyio

from nacelle_py import App, Initializer, Inject, Process
from nacelle_py.base import LambdaContext, LambdaListener

KEPT: list[LambdaContext] = []  # contexts a handler kept, read again by a later invocation
LOGGER: list[Any] = []  # the app's injected logger, set by Database.init (the handler= functions have no injection)


def log(event: str, **fields: Any) -> None:
    LOGGER[0].info(event, **fields)


class OrderRejected(Exception):
    """A user's own exception class: its name is the errorType."""


def validate(order: dict[str, Any]) -> None:
    check_total(order)


def check_total(order: dict[str, Any]) -> None:
    raise OrderRejected(f"order {order.get('id')} rejected: total {order.get('total')} is negative")


def answer(event: Any, context: LambdaContext, db: sqlite3.Connection | None) -> tuple[bool, Any]:
    """``(True, result)`` for the ops that answer at once, ``(False, seconds)`` for ``sleep``."""
    if not isinstance(event, dict):
        return True, {"got": event, "type": type(event).__name__}
    op = event.get("op")
    if op == "echo":
        return True, {"echo": event.get("value"), "rid": context.aws_request_id}
    if op == "return":
        return True, event.get("value")
    if op == "raise":
        validate(event.get("order", {}))
    if op == "unserialisable":
        return True, {1, 2, 3}
    if op == "db":
        assert db is not None
        row = db.execute("select value from kv where key = 'greeting'").fetchone()
        return True, {"db": row[0], "rid": context.aws_request_id}
    if op == "context":
        deadline = context.deadline
        return True, {
            "rid": context.aws_request_id,
            "deadline_ms": context.deadline_ms,
            "deadline_ms_type": type(context.deadline_ms).__name__,
            "deadline_iso": deadline.isoformat(),
            "deadline_ts": deadline.timestamp(),
            "deadline_utcoffset": None if deadline.utcoffset() is None else deadline.utcoffset().total_seconds(),  # type: ignore[union-attr]
            "trace_id": context.trace_id,
            "env_trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
            "client_context": repr(context.client_context),
            "client_context_is_none": context.client_context is None,
            "identity_is_none": context.identity is None,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "memory_type": type(context.memory_limit_in_mb).__name__,
            "function_name": context.function_name,
            "function_version": context.function_version,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
        }
    if op == "keep":
        KEPT.append(context)
        return True, {"kept": context.aws_request_id, "remaining_ms": context.get_remaining_time_in_millis()}
    if op == "kept-remaining":
        return True, {"remaining_ms": [c.get_remaining_time_in_millis() for c in KEPT]}
    if op == "thread":
        return True, {"thread": threading.get_ident(), "name": threading.current_thread().name}
    if op in ("sleep", "remaining"):
        return False, float(event.get("seconds", 0))
    raise LookupError(f"unknown op {op!r}")


def after_sleep(event: dict[str, Any], context: LambdaContext, first_ms: int) -> dict[str, Any]:
    return {
        "rid": context.aws_request_id,
        "slept": event.get("seconds"),
        "first_ms": first_ms,
        "second_ms": context.get_remaining_time_in_millis(),
        "thread": threading.get_ident(),
    }


async def async_handle(event: Any, context: LambdaContext, db: sqlite3.Connection | None = None) -> object:
    done, value = answer(event, context, db)
    if done:
        return value
    first = context.get_remaining_time_in_millis()
    try:
        await anyio.sleep(value)
    finally:
        log("qa handler finally", rid=context.aws_request_id)
    return after_sleep(event, context, first)


def sync_handle(event: Any, context: LambdaContext, db: sqlite3.Connection | None = None) -> object:
    done, value = answer(event, context, db)
    if done:
        return value
    first = context.get_remaining_time_in_millis()
    time.sleep(value)
    log("qa plain handler woke", rid=context.aws_request_id)
    return after_sleep(event, context, first)


class AsyncOrders(LambdaListener):
    db: sqlite3.Connection = Inject("db")

    async def handle(self, event: dict[str, Any], context: LambdaContext) -> object:
        return await async_handle(event, context, self.db)


class SyncOrders(LambdaListener):
    db: sqlite3.Connection = Inject("db")

    def handle(self, event: dict[str, Any], context: LambdaContext) -> object:  # type: ignore[override]
        return sync_handle(event, context, self.db)


class NeedsMissing(LambdaListener):
    missing: Any = Inject("no_such_service_qa")

    async def handle(self, event: dict[str, Any], context: LambdaContext) -> object:
        return None


class Database(Initializer):
    """The docs' recipe: a lower-priority initializer provides ``db``."""

    provides = ("db",)
    services: Any = Inject("services")
    logger: Any = Inject("logger")

    async def init(self) -> None:
        LOGGER.append(self.logger)
        fail = os.environ.get("QAS_FAIL")
        if fail in ("init", "init-and-finalize"):
            raise ConnectionError("qa database unreachable at cold start")
        if fail == "slow-init":
            await anyio.sleep(30)
        self.connection = sqlite3.connect(":memory:", check_same_thread=False)
        self.connection.execute("create table kv (key text, value text)")
        self.connection.execute("insert into kv values ('greeting', 'hello from db')")
        self.services.set("db", self.connection)

    async def finalize(self) -> None:
        self.connection.close()
        self.logger.info("qa final env", trace_env=os.environ.get("_X_AMZN_TRACE_ID"))


class BrokenFinalize(Initializer):
    async def init(self) -> None:
        pass

    async def finalize(self) -> None:
        raise RuntimeError("qa finalize broke too")


class FailingPreflight(Process):
    async def preflight(self) -> None:
        raise PermissionError("qa preflight refused")

    async def run(self) -> None:
        await anyio.sleep_forever()


class Later(Process):
    logger: Any = Inject("logger")

    async def run(self) -> None:
        self.logger.info("later started")
        await anyio.sleep_forever()


def build() -> App:
    app = App("qa")
    fail = os.environ.get("QAS_FAIL")
    if fail == "init-and-finalize":
        app.register(BrokenFinalize(), name="broken_finalize", priority=0)
        app.register(Database(), name="db", priority=1)
    else:
        app.register(Database(), name="db", priority=0)
    if fail == "preflight":
        app.register(FailingPreflight(), name="preflighted", priority=1)
    kind = os.environ.get("QAS_HANDLER", "async")
    listener: LambdaListener
    if fail == "inject":
        listener = NeedsMissing()
    elif kind == "sync":
        listener = SyncOrders()
    elif kind == "fn-async":
        listener = LambdaListener(handler=async_handle)
    elif kind == "fn-sync":
        listener = LambdaListener(handler=sync_handle)
    else:
        listener = AsyncOrders()
    app.register(listener, name="orders", priority=2, restart=os.environ.get("QAS_RESTART", "never"))  # type: ignore[arg-type]
    if os.environ.get("QAS_LATER"):
        app.register(Later(), name="later", priority=3)
    return app


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    raise SystemExit(build().boot(sys.argv[2:], backend=backend))  # type: ignore[arg-type]
