"""The preflight: before any ``init``, components that can take or check what they need.

Servers bind their port, Redis backends reach their server: a deployment
with a taken port or a wrong URL then fails before any component has
initialised, so it changes nothing (no migration run, no message consumed).
What a preflight took is the component's: its ``init`` uses it and its
``finalize`` releases it, or, when the app ends before that ``init``
succeeded, ``release()`` calls ``finalize`` for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio

from .._components import overridden
from .._errors import ComponentError, ComponentTimeoutError
from ._context import Context, bounded, ms
from ._record import Entry

__all__ = ["Preflight"]


class Preflight:
    """Runs the components' ``preflight`` at boot and finalizes those whose ``init`` never succeeded."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._taken: list[Entry] = []  # their preflight ran (and may hold something)

    async def take(self, entries: Sequence[Entry]) -> bool:
        """Inject what is there and call every ``preflight`` at once; whether all passed."""
        ctx = self._ctx
        chosen = [e for e in entries if overridden(e.component, "preflight") is not None]
        if not chosen:
            return True
        started = time.perf_counter()
        failed: list[ComponentError] = []
        for entry in chosen:
            ctx.injector.inject_early(entry.component, entry.name)
        with ctx.shutdown.cancelled_on_stop():
            async with anyio.create_task_group() as tg:
                for entry in chosen:
                    tg.start_soon(self._one, entry, failed)
        for error in failed:
            ctx.record(error)
        if failed or ctx.stopping:
            return False
        ctx.logger.info("preflight passed", components=len(chosen), ms=ms(started))
        return True

    async def _one(self, entry: Entry, failed: list[ComponentError]) -> None:
        self._taken.append(entry)
        timeout = entry.start_timeout
        try:
            with bounded(timeout) as scope:
                await self._ctx.call(entry.component.preflight, entry, "preflight")
        except Exception as exc:
            failed.append(ComponentError(entry.name, "preflight", exc))
            return
        if scope.cancelled_caught:
            failed.append(ComponentTimeoutError(entry.name, "preflight", timeout or 0))

    def pending(self) -> list[Entry]:
        """The components whose preflight ran and whose ``init`` has not succeeded (read before the unwind)."""
        initialised = {id(e) for e in self._ctx.init_order}
        return [e for e in self._taken if id(e) not in initialised]

    async def release(self, entries: Sequence[Entry]) -> None:
        """Finalize ``entries`` (see ``pending``), last first, each within its ``finalize_timeout``."""
        ctx = self._ctx
        for entry in reversed(entries):
            await self._finalize(entry)
            await ctx.release(entry)  # what per-component services made for it at the preflight
        self._taken.clear()

    async def _finalize(self, entry: Entry) -> None:
        finalize = overridden(entry.component, "finalize")
        if finalize is None:
            return
        timeout = entry.finalize_timeout
        try:
            with bounded(timeout) as scope:
                await self._ctx.call(finalize, entry, "finalize")
        except Exception as exc:
            self._ctx.record(ComponentError(entry.name, "finalize", exc))
            return
        if scope.cancelled_caught:
            self._ctx.record(ComponentTimeoutError(entry.name, "finalize", timeout or 0))
