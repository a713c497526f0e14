"""Connecting to Redis through coredis (an extra: import this module only after ``require``): one way to open a client, one way to say it failed.

coredis runs on anyio, so every Redis user works on asyncio and trio. Three
of its habits shape this module:

- its default retry policy re-sends a command after a timeout, which can
  duplicate a write (an XADD that did reach the server): clients here never
  retry by themselves; the callers retry what is safe to retry, with backoff;
- a client must be entered and left by the same task (it owns a task group),
  so the long-lived task of a component owns it and others only use it;
- a reply's timeout (``stream_timeout``) also bounds blocking reads, so it
  is set well above the longest BLOCK used.
"""

from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import coredis
from coredis.exceptions import BusyLoadingError, StreamConsumerGroupError
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.retry import NoRetryPolicy

from ..._config import mask_url
from ..._errors import UnavailableError

__all__ = [
    "LOST",
    "GroupGone",
    "RedisUnavailable",
    "backoff",
    "consumer_name",
    "describe_failure",
    "make_client",
    "ping",
]

CONNECT_TIMEOUT = 5.0  # seconds for the TCP connect
REPLY_TIMEOUT = 10.0  # seconds for any reply (blocking reads use a BLOCK far below this)


class RedisUnavailable(UnavailableError):
    """Redis could not be reached (or answered nothing in time); the message names the URL, masked."""


# NOGROUP: the consumer group does not exist (BUSYGROUP, its subclass, is handled where groups are made).
GroupGone: type[Exception] = StreamConsumerGroupError

# The exceptions that mean "the connection is gone (for now)": retried with backoff.
LOST: tuple[type[BaseException], ...] = (RedisConnectionError, BusyLoadingError, TimeoutError, OSError)


# Redis takes printable ASCII without spaces in a client name (CLIENT SETNAME), nothing else.
_CLIENT_NAME = re.compile(r"[^!-~]")


def make_client(url: str, *, name: str, max_connections: int = 16) -> Any:
    """A coredis client for ``url`` that never retries by itself (enter it with ``async with``)."""
    return coredis.Redis.from_url(
        url,
        decode_responses=False,
        retry_policy=NoRetryPolicy(),
        connect_timeout=CONNECT_TIMEOUT,
        stream_timeout=REPLY_TIMEOUT,
        max_connections=max_connections,
        client_name=_CLIENT_NAME.sub("_", name)[:100],
    )


def describe_failure(url: str, exc: BaseException) -> str:
    """Why Redis at ``url`` failed, in one line with the password masked."""
    cause = exc.__cause__ or exc.__context__
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if cause is not None and str(cause) and str(cause) not in detail:
        detail += f" ({cause})"
    return mask_url(f"Redis at {url} is unreachable: {detail}")


async def ping(url: str, *, within: float, who: str) -> None:
    """PING ``url`` until it answers, for at most ``within`` seconds; else ``RedisUnavailable`` saying what to check.

    Retrying covers a Redis that starts at the same time as the app (a
    compose file, a pod's sidecar); the bound keeps a boot from hanging.
    """
    problem: BaseException | None = None
    delays = backoff(0.1, 1.0)
    with anyio.move_on_after(within):
        while True:
            client = make_client(url, name=f"{who} check", max_connections=1)
            try:
                async with client:
                    try:
                        await client.ping()
                        return
                    except Exception as exc:  # coredis wraps what leaves its block in an ExceptionGroup
                        problem = exc
            except Exception as exc:  # an ExceptionGroup from the client's own task group
                problem = problem or exc
            await anyio.sleep(next(delays))
    raise RedisUnavailable(
        f"{who}: {describe_failure(url, problem or TimeoutError('no answer'))}; check that redis-server runs "
        f"there and that REDIS_URL (or redis_url=) points to it (gave up after {within:g} s)"
    )


def backoff(first: float = 0.05, cap: float = 5.0) -> Iterator[float]:
    """Delays for reconnecting: doubling from ``first`` up to ``cap``, each jittered by up to a quarter."""
    delay = first
    while True:
        yield delay * (0.75 + random.random() / 4)
        delay = min(delay * 2, cap)


def consumer_name() -> str:
    """A consumer name unique to this process: host, pid and a random part (a restarted pid differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
