"""Scaffolding shared by the tests of the built-in processes: bounded waits, a served App."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from nacelle_py import App


class Boom(Exception):
    """The error a test's component raises on purpose."""


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``predicate`` every 2 ms; fail the test after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.002)


class Served:
    """The exit status of a background ``serve()``."""

    status: int | None = None


@asynccontextmanager
async def serving(app: App, limit: float = 10.0) -> AsyncIterator[Served]:
    """Serve ``app`` in the background until the block ends; the block calls ``app.shutdown()``."""
    ready = anyio.Event()
    app.on_ready(ready.set)
    served = Served()

    async def serve() -> None:
        served.status = await app.serve()
        ready.set()  # a boot that fails must not leave the block waiting

    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await ready.wait()
            try:
                yield served
            finally:
                app.shutdown()


def counting_root(n: int) -> Callable[..., Any]:
    """An async root that emits ``0 .. n-1``."""

    async def root(emit: Any) -> None:
        for i in range(n):
            await emit(i)

    return root
