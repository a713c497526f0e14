"""Reload (SIGHUP, ``App.reload()``): re-read the settings, then call each component's ``reload()``.

The settings are re-read and validated first, all of them: one invalid value
and the reload stops there, every problem logged, the current settings kept.
Then, in priority order (the boot order), each component that defines
``reload()`` and is up (initialised or running) gets its ``Inject()``
settings refreshed and its ``reload()`` called, one at a time, each within
its ``reload_timeout``. A ``reload()`` that fails is logged and kept on the
component's record; the app runs on and its exit status is not affected.

Reloads never overlap, with each other or with the lifecycle: requests
during boot wait until the app is running; requests during a reload are
coalesced into one more reload after it (so a change made meanwhile is
seen); requests during the unwind are ignored, with a log line. A reload
holds the boot lock, so it takes turns with restarts; a stop request gives
a reload in progress ``ABANDON_GRACE`` to finish before it is cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio

from .._components import overridden
from .._errors import ComponentError, ComponentTimeoutError, ConfigError
from ._boot import ABANDON_GRACE, Boot
from ._context import Context, bounded, ms
from ._record import Entry
from ._states import State

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ["Reloader"]

UP = (State.INITIALIZED, State.RUNNING)
"""The states in which a component's ``reload()`` is called: it has initialised and is not being stopped."""


class Reloader:
    """Carries out reload requests, one at a time, while the app is running."""

    def __init__(self, ctx: Context, boot: Boot, reread: Callable[[], Sequence[str]] | None) -> None:
        self._ctx = ctx
        self._lock = boot.lock
        self._reread = reread  # re-reads and validates the settings (the names of those changed); ConfigError
        self._order = ctx.boot_order
        self._pending: list[str] = []  # the reasons of the requests not served yet
        self.busy = False

    def request(self, reason: str) -> None:
        """Ask for a reload (on the loop thread: ``Waker.on_loop`` brings other threads' requests there)."""
        ctx = self._ctx
        if ctx.stopping:
            ctx.logger.info("reload ignored: the app is stopping", reason=reason)
            return
        if not ctx.booted:
            ctx.logger.info("reload deferred: the app is booting; it reloads once running", reason=reason)
        elif self.busy:
            ctx.logger.info("reload queued: a reload is in progress; one more follows it", reason=reason)
        self._pending.append(reason)
        ctx.waker.notify()

    async def work(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The reloader's task: serves the requests, once the app is running, until its root group ends."""
        ctx = self._ctx
        task_status.started()
        while True:
            if self._pending and ctx.booted and not ctx.stopping:
                reasons, self._pending = self._pending, []
                await self._reload(reasons)
                continue  # what came in meanwhile is served at once, as one more reload
            await ctx.waker.changed()

    async def wind_down(self) -> None:
        """Once stopping: wait for a reload in progress (a stop bounds it), drop the requests not served."""
        while self.busy:
            await self._ctx.waker.changed()
        if self._pending:
            self._ctx.logger.info("reload ignored: the app is stopping", requests=len(self._pending))
            self._pending.clear()

    async def _reload(self, reasons: list[str]) -> None:
        ctx = self._ctx
        self.busy = True
        started = time.perf_counter()
        try:
            ctx.logger.info("reloading", reason=reasons[0], requests=len(reasons))
            changed = self._reread_settings()
            if changed is None:
                return
            called = failed = 0
            with ctx.shutdown.graced_on_stop(ABANDON_GRACE) as guard:
                async with self._lock:  # never in the middle of a restart's unwind or boot
                    for entry in self._order:
                        if ctx.stopping:
                            break
                        method = overridden(entry.component, "reload")
                        if method is None:
                            continue
                        if entry.state not in UP:
                            ctx.logger.info("reload skipped: not running", component=entry.name, state=entry.state)
                            continue
                        called += 1
                        failed += not await self._reload_one(entry, method)
            if guard.cancelled_caught or ctx.stopping:
                ctx.logger.warning("reload cut short: the app is stopping", components=called, ms=ms(started))
            else:
                (ctx.logger.warning if failed else ctx.logger.info)(
                    "reloaded", settings_changed=changed, components=called, failed=failed, ms=ms(started)
                )
        finally:
            self.busy = False
            ctx.waker.notify()  # for wind_down()

    def _reread_settings(self) -> list[str] | None:
        """Re-read and validate every setting: the models that changed, or None (logged) to keep the current ones."""
        if self._reread is None:
            return []
        log = self._ctx.logger
        try:
            return list(self._reread())
        except ConfigError as exc:
            log.error(
                "reload rejected: invalid configuration; the current settings stay",
                problems=len(exc.errors),
                errors=[str(e) for e in exc.errors],
            )
        except Exception as exc:  # an unreadable env file or secrets directory, say
            log.error("reload rejected: the settings could not be re-read; the current ones stay", exc_info=exc)
        return None

    async def _reload_one(self, entry: Entry, method: Callable[[], object]) -> bool:
        """Refresh the component's settings and call its ``reload()`` within its bound; whether it succeeded."""
        ctx = self._ctx
        ctx.logger.info("reload starting", component=entry.name)
        started = time.perf_counter()
        error: ComponentError | None = None
        try:
            ctx.injector.refresh_settings(entry.component)
            with bounded(entry.reload_timeout) as scope:
                await ctx.call(method, entry, "reload")
            if scope.cancelled_caught:
                timeout = entry.reload_timeout or 0
                error = ComponentTimeoutError(
                    entry.name, "reload", timeout, f"reload() did not return within {timeout:g}s; cancelled"
                )
        except Exception as exc:
            error = ComponentError(entry.name, "reload", exc)
        took = entry.timings["reload_ms"] = ms(started)
        if error is None:
            ctx.logger.info("reload finished", component=entry.name, ms=took)
            return True
        # The app runs on: kept on the component's record (/debug/components, the errors
        # counter), not in the app's errors, which decide the exit status.
        entry.note(str(error))
        extra = {} if error.cause is None else {"exc_info": error.cause}
        ctx.logger.error(str(error), component=entry.name, operation="reload", **extra)
        return False
