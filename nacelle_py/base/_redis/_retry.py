"""Retrying a Redis call while Redis is unreachable, and saying so: what every Redis user does alike.

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

from ..._health import HealthComponent
from ._client import LOST, GroupGone, backoff, describe_failure

__all__ = ["Reachability", "until_done"]


class Reachability:
    """Whether Redis answers, as one component sees it: one warning when it stops answering, one line
    when it is back, and its health key (``<component>.redis``, if any) unhealthy in between, with the
    reason naming the URL (password masked)."""

    def __init__(
        self, url: str, log: Callable[..., None], health: HealthComponent | None = None, **fields: Any
    ) -> None:
        self.url = url
        self.log = log  # log(level, event, **fields)
        self.health = health
        self.fields = fields  # what every line adds (the stream, the namespace)
        self.unreachable: str | None = None  # the reason, while Redis does not answer

    def lost(self, exc: BaseException) -> None:
        """A command failed for the connection's sake: unhealthy until one goes through."""
        reason = describe_failure(self.url, exc)
        if self.unreachable is None:
            self.log("warning", "redis unreachable; retrying with backoff", reason=reason, **self.fields)
        self.unreachable = reason
        if self.health is not None and self.health.healthy:
            self.health.update(False, reason)

    def connected(self) -> None:
        """A command went through: healthy again if it was not."""
        if self.unreachable is not None:
            self.unreachable = None
            self.log("info", "redis reachable again", **self.fields)
        if self.health is not None and not self.health.healthy:
            self.health.update(True)


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
