"""Retrying a Redis call while Redis is unreachable: what every consumer loop does the same way.

A call that fails with a lost connection is sent again after a capped,
jittered backoff (50 ms doubling to 5 s): only calls that are safe to send
twice come here (reads, and scripts whose second run changes nothing or only
duplicates). A missing consumer group (Redis restarted without its data, or
the stream was deleted) is made again before the call is retried.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._client import LOST, GroupGone, backoff

__all__ = ["until_done"]


async def until_done(
    call: Callable[[], Awaitable[Any]],
    *,
    lost: Callable[[BaseException], None],
    connected: Callable[[], None],
    regroup: Callable[[], Awaitable[Any]] | None = None,
    give_up: Callable[[], bool] | None = None,
    within: float | None = None,
) -> Any:
    """``await call()`` until it goes through; see the module docstring.

    ``lost(exc)`` is told of each failure and ``connected()`` of the success
    (health, logs). ``regroup()`` makes the consumer group again after NOGROUP.
    ``give_up()`` true: return None instead of waiting more (a stop began).
    ``within``: raise the last connection error after that many seconds.
    """
    delays = backoff(0.05, 5.0)
    deadline = None if within is None else time.monotonic() + within
    while True:
        try:
            result = await call()
        except LOST as exc:
            lost(exc)
            if give_up is not None and give_up():
                return None
            delay = next(delays)
            if deadline is not None:
                if time.monotonic() >= deadline:
                    raise
                delay = min(delay, deadline - time.monotonic())
            await anyio.sleep(delay)
            continue
        except GroupGone:
            if regroup is None:
                raise
            await until_done(regroup, lost=lost, connected=connected, give_up=give_up, within=within)
            continue
        connected()
        return result
