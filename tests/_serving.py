"""``serving(app)``: the app served in the background for a test body, shut down when the block ends.

Yields a list that holds the exit status once the block is over (empty until
then). Every wait is bounded: the boot by 5 s, the whole block by ``limit``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from nacelle_py import App

__all__ = ["serving"]


@asynccontextmanager
async def serving(app: App, limit: float = 15.0) -> AsyncIterator[list[int]]:
    """Serve ``app`` in the background until the block ends (then shut it down); yields [status] after."""
    status: list[int] = []
    ready = anyio.Event()
    app.on_ready(ready.set)

    async def serve() -> None:
        status.append(await app.serve())

    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            with anyio.fail_after(5):
                await ready.wait()
            try:
                yield status
            finally:
                app.shutdown()
