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
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import anyio
import anyio.to_thread

from .._calls import is_async
from .._components import Initializer, Options, overridden
from .._errors import ComponentError, ComponentTimeoutError
from .._inject import Injector
from .._registry import resolved
from .._settings import AppSettings
from ._context import Context, bounded, ms
from ._record import Entry

__all__ = ["Preflight", "preflight_all"]


class Preflight:
    """Runs the components' ``preflight`` at boot and finalizes those whose ``init`` never succeeded."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._taken: list[Entry] = []  # their preflight ran (and may hold something)

    async def take(self, entries: Sequence[Entry]) -> bool:
        """Inject what is there and call every ``preflight`` at once; whether all passed."""
        ctx = self._ctx
        chosen = [e for e in entries if "preflight" in e.defines]
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
        call = self._ctx.call
        preflight = entry.component.preflight
        failed += await _attempt(
            lambda: call(preflight, entry, "preflight"), entry.name, "preflight", entry.start_timeout
        )

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
        if finalize is not None:
            call = self._ctx.call
            done = _attempt(lambda: call(finalize, entry, "finalize"), entry.name, "finalize", entry.finalize_timeout)
            for error in await done:
                self._ctx.record(error)


async def preflight_all(
    components: Sequence[tuple[Initializer, Options]], injector: Injector, settings: AppSettings
) -> list[ComponentError]:
    """Without a runner (``App.preflight``, ``nacelle-py check``): every preflight, then every finalize.

    Each is bounded by the component's ``start_timeout`` (``finalize_timeout``
    for the finalize), resolved against ``settings``; the problems found.
    """
    problems: list[ComponentError] = []
    taken = []
    for component, options in components:
        if overridden(component, "preflight") is not None:
            injector.inject_early(component, options.name)
            taken.append((component, options))
            timeout = resolved(options.start_timeout, settings.start_timeout)
            problems += await _attempt(partial(_direct, component.preflight), options.name, "preflight", timeout)
    for component, options in reversed(taken):
        timeout = resolved(options.finalize_timeout, settings.finalize_timeout)
        problems += await _attempt(partial(_direct, component.finalize), options.name, "finalize", timeout)
    return problems


async def _direct(method: Callable[[], object]) -> None:
    """A component's method without a runner: ``async def`` on the loop, plain ``def`` on a thread."""
    if is_async(method):
        await method()  # type: ignore[misc]
    else:
        await anyio.to_thread.run_sync(method, abandon_on_cancel=True)


async def _attempt(
    call: Callable[[], Awaitable[None]], name: str, operation: str, timeout: float | None
) -> list[ComponentError]:
    """``call()`` within ``timeout``; the component's error, if any, as a one-item list."""
    try:
        with bounded(timeout) as scope:
            await call()
    except Exception as exc:
        return [ComponentError(name, operation, exc)]
    return [ComponentTimeoutError(name, operation, timeout or 0)] if scope.cancelled_caught else []
