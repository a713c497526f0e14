"""Middlewares: functions that wrap a routine's function (``mw(fn) -> fn``), outermost first."""

from __future__ import annotations

import datetime
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..._validate import positive

if TYPE_CHECKING:
    from ._routine import Routine

__all__ = ["Middleware", "RoutineFn", "cron", "every", "recover", "retry", "timeout"]

RoutineFn = Callable[["Routine"], Awaitable[Any]]
Middleware = Callable[[RoutineFn], RoutineFn]


def recover() -> Middleware:
    """Catch the routine's exception, log it with the routine's id and count it; the routine ends ``done``.

    Never silent: each recovered error is an error-level log line (with the
    traceback) and one more in ``stats().recovered``.
    """

    def middleware(fn: RoutineFn) -> RoutineFn:
        async def recovered(routine: Routine) -> Any:
            try:
                return await fn(routine)
            except Exception as exc:
                routine.machine.recovered(routine, exc)
                return None

        return recovered

    return middleware


def every(seconds: float) -> Middleware:
    """Run the function at once, then every ``seconds`` (fixed rate; ticks missed by a long run are skipped)."""
    interval = positive("every", "seconds", seconds)

    def middleware(fn: RoutineFn) -> RoutineFn:
        async def repeated(routine: Routine) -> None:
            start = anyio.current_time()
            while True:
                await fn(routine)
                now = anyio.current_time()
                ticks = math.floor((now - start) / interval) + 1
                await anyio.sleep(start + ticks * interval - now)

        return repeated

    return middleware


def cron(expression: str) -> Middleware:
    """Run the function at each time the cron ``expression`` matches (5 fields, or 6 with seconds last).

    Parsed by croniter: ``"*/5 * * * *"`` is every five minutes; a sixth field
    (croniter's seconds) gives ``"* * * * * */2"``, every two seconds. A bad
    expression is a ``ValueError`` here, not when the routine runs.
    """
    from croniter import croniter  # type: ignore[import-untyped]  # imported by the apps that use cron only

    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ValueError(f"cron: {expression!r} is not a valid cron expression (e.g. '*/5 * * * *')")

    def middleware(fn: RoutineFn) -> RoutineFn:
        async def scheduled(routine: Routine) -> None:
            times = croniter(expression, datetime.datetime.now(datetime.UTC))
            while True:
                due: datetime.datetime = times.get_next(datetime.datetime)
                wait = (due - datetime.datetime.now(datetime.UTC)).total_seconds()
                await anyio.sleep(max(0.0, wait))
                await fn(routine)

        return scheduled

    return middleware


def retry(attempts: int, backoff: float = 0.1) -> Middleware:
    """Call the function up to ``attempts`` times in all, sleeping ``backoff * 2**k`` between; re-raise the last error."""
    tries = positive("retry", "attempts", attempts, integer=True)
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not (0 <= backoff < math.inf):
        raise ValueError(f"retry: backoff must be a number of seconds >= 0, got {backoff!r}")

    def middleware(fn: RoutineFn) -> RoutineFn:
        async def retried(routine: Routine) -> Any:
            for attempt in range(tries):
                try:
                    return await fn(routine)
                except Exception:
                    if attempt == tries - 1:
                        raise
                    routine.machine.log.warning(
                        "routine failed; retrying", routine=routine.id, attempt=attempt + 1, attempts=tries
                    )
                    await anyio.sleep(backoff * 2**attempt)
            return None  # not reached: the last attempt returns or raises

        return retried

    return middleware


def timeout(seconds: float) -> Middleware:
    """Bound each call of the function: past ``seconds`` it is cancelled and raises ``TimeoutError`` (an error).

    Unlike ``go(timeout=...)``, which ends the routine quietly as ``timed_out``,
    this is a failure that ``retry`` can retry and ``wait()`` reports.
    """
    limit = positive("timeout", "seconds", seconds)

    def middleware(fn: RoutineFn) -> RoutineFn:
        async def bounded(routine: Routine) -> Any:
            with anyio.fail_after(limit):
                return await fn(routine)

        return bounded

    return middleware
