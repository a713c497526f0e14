"""An app served as an AWS Lambda custom runtime, for tests/base/test_lambda.py.

    AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT python tests/scripts/lambda_app.py BACKEND

BACKEND is asyncio or trio. The environment chooses the variant:

- ``SCRIPT_HANDLER``: ``async`` (default, ``async def handle``) or ``sync``
  (a plain ``def handle``, which the listener runs on a thread).
- ``SCRIPT_FAIL``: ``init`` (an initializer's ``init`` raises), ``inject``
  (a component asks for a service nobody provides) or unset.

The event says what the handler does, so one app covers every case:
``{"op": "echo", "value": x}`` answers ``{"echo": x}``; ``{"op": "raise",
"message": m}`` raises ``ValueError(m)``; ``{"op": "sleep", "seconds": s}``
sleeps and answers ``{"slept": s}``; ``{"op": "log", "lines": n}`` logs n
lines through the injected logger; ``{"op": "context"}`` answers what the
``LambdaContext`` and the environment hold during the call;
``{"op": "unserialisable"}`` answers an object JSON cannot encode.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import anyio

from nacelle_py import App, Initializer, Inject, Process
from nacelle_py.base import LambdaContext, LambdaListener


def plain(value: Any) -> Any:
    """``value`` as JSON-able data, whatever shape the context gives it (dict, dataclass, object)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if hasattr(value, "__dict__"):
        return plain({k: v for k, v in vars(value).items() if not k.startswith("_")})
    if hasattr(value, "__slots__"):
        return plain({k: getattr(value, k, None) for k in value.__slots__ if not k.startswith("_")})
    if hasattr(value, "timestamp"):  # a datetime
        return value.timestamp()
    return str(value)


def describe(context: LambdaContext) -> dict[str, Any]:
    return {
        "aws_request_id": context.aws_request_id,
        "invoked_function_arn": context.invoked_function_arn,
        "deadline": plain(context.deadline),
        "remaining_ms": context.get_remaining_time_in_millis(),
        "trace_id": context.trace_id,
        "env_trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
        "client_context": plain(context.client_context),
        "identity": plain(context.identity),
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": plain(context.memory_limit_in_mb),
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
    }


def before(event: dict[str, Any], context: LambdaContext, logger: Any) -> object | None:
    """The answer to every op that does not sleep; None for ``sleep``."""
    op = event.get("op")
    if op == "echo":
        return {"echo": event.get("value")}
    if op == "raise":
        raise ValueError(event.get("message", "boom"))
    if op == "log":
        for line in range(int(event.get("lines", 1))):
            logger.info("handler step", line=line)
        return {"logged": event.get("lines", 1)}
    if op == "context":
        return describe(context)
    if op == "unserialisable":
        return {"value": object()}
    if op == "sleep":
        return None
    raise LookupError(f"unknown op {op!r}")


class AsyncOrders(LambdaListener):
    logger: Any = Inject("logger")

    async def handle(self, event: dict[str, Any], context: LambdaContext) -> object:
        answer = before(event, context, self.logger)
        if answer is not None:
            return answer
        await anyio.sleep(float(event["seconds"]))
        return {"slept": event["seconds"], "remaining_ms": context.get_remaining_time_in_millis()}


class SyncOrders(LambdaListener):
    logger: Any = Inject("logger")

    # The base class declares an async handle, so mypy calls a plain one an incompatible override
    # although the listener supports it (reported on the implementation).
    def handle(self, event: dict[str, Any], context: LambdaContext) -> object:
        answer = before(event, context, self.logger)
        if answer is not None:
            return answer
        time.sleep(float(event["seconds"]))
        return {"slept": event["seconds"], "remaining_ms": context.get_remaining_time_in_millis()}


class Database(Initializer):
    """Stands for a connection made at cold start; ``SCRIPT_FAIL=init`` makes it fail."""

    logger: Any = Inject("logger")

    async def init(self) -> None:
        if os.environ.get("SCRIPT_FAIL") == "init":
            raise ConnectionError("database unreachable at cold start")
        self.logger.info("database connected")

    async def finalize(self) -> None:
        self.logger.info("database closed")


class NeedsMissing(Process):
    missing: Any = Inject("no_such_service")

    async def run(self) -> None:
        await anyio.sleep_forever()


def main(argv: list[str]) -> int:
    backend = argv[0] if argv else "asyncio"
    app = App("script")  # env prefix SCRIPT_ (LAMBDA_DEADLINE_MARGIN is read with or without it)
    app.register(Database(), name="database", priority=0)
    if os.environ.get("SCRIPT_FAIL") == "inject":
        app.register(NeedsMissing(), name="needs_missing", priority=1)
    listener = SyncOrders() if os.environ.get("SCRIPT_HANDLER") == "sync" else AsyncOrders()
    app.register(listener, name="orders", priority=2)
    return app.boot([], backend=backend)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
