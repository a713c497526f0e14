"""Booting a priority group: inject, ``init`` concurrently, start every ``run``, wait until healthy.

The app's boot does this for each group in ascending priority; a restart
does it for the part of a group it restarts. Both hold ``lock`` while they
inject, initialise and start (so a restart never interleaves with the boot of
another group), and release it for the health wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from .._calls import is_async
from .._errors import ComponentError, ComponentTimeoutError, InjectionError
from .._services import setting_as
from ._context import Context, bounded, ms
from ._record import Countdown, Entry
from ._runs import Runs
from ._states import FAILED, INITIALIZED, INITIALIZING, REGISTERED

__all__ = ["ABANDON_GRACE", "Boot", "Fail", "StartTimeout"]

ABANDON_GRACE = 0.5
"""Seconds the sibling inits of a failed init get to finish before they are cancelled."""

Fail = Callable[[Entry, ComponentError], None]
"""Where a component's failure goes: the error record (at boot) or the supervisor (in a restart)."""
StartTimeout = Callable[[list[Entry], float], bool]
"""Called when a group is not healthy in time: True to keep waiting (restarts were scheduled)."""


class Boot:
    """Brings priority groups (or parts of them) up; ``lock`` serialises it with restarts."""

    def __init__(self, ctx: Context, runs: Runs) -> None:
        self._ctx = ctx
        self._runs = runs
        # Uncontested (the common case: no restart or reload running) it is taken without
        # a trip round the loop: one less per priority group at boot.
        self.lock = anyio.Lock(fast_acquire=True)

    async def group(
        self,
        group: list[Entry],
        *,
        fail: Fail,
        on_timeout: StartTimeout,
        restart: bool = False,
        only: Callable[[Entry], bool] | None = None,
    ) -> bool:
        """Inject, init, start and wait for ``group``; whether it came up (False: failed or stopping).

        At boot the wait is for the whole app's health (an initializer's key
        may hold a later group up); in a restart (``restart``) for the keys of
        the restarted components only. ``only`` picks, once the lock is held,
        which members still need it.
        """
        ctx = self._ctx
        with ctx.shutdown.cancelled_on_stop() as scope:
            async with self.lock:
                if only is not None:
                    group = [e for e in group if only(e)]
                    if not group:
                        return True
                if ctx.stopping or not self._inject(group, fail):
                    return False
                if not await self._init(group, fail, scope):
                    return False
                starting = self._runs.start(group)
            owners = {e.name for e in group} if restart else None
            return await self._wait(group, starting, owners, on_timeout)
        return False  # a stop request cancelled the scope

    # -- inject and init --------------------------------------------------------------

    def _inject(self, group: list[Entry], fail: Fail) -> bool:
        ok = True
        for entry in group:
            try:
                self._ctx.injector.inject(entry.component, entry.name)
            except InjectionError as exc:
                detail = str(exc).split(": ", 1)[-1]
                fail(entry, ComponentError(entry.name, "inject", exc, detail))
                ok = False
        return ok

    async def _init(self, group: list[Entry], fail: Fail, scope: anyio.CancelScope) -> bool:
        with_init = []
        for entry in group:
            if "init" not in entry.defines:
                entry.move(INITIALIZED)
                self._ctx.init_order.append(entry)
            else:
                with_init.append(entry)
        failed: list[Entry] = []
        guards: list[anyio.CancelScope] = []  # the plain-def inits' grace scopes

        def failure(entry: Entry, error: ComponentError) -> None:
            failed.append(entry)
            fail(entry, error)
            # A failed init abandons the group: sibling inits still in flight get
            # ABANDON_GRACE to finish. Those that finish are finalized; those that do not
            # are cancelled (and not finalized), so a hanging sibling cannot hang it.
            end = anyio.current_time() + ABANDON_GRACE
            for shortened in (scope, *guards):
                shortened.deadline = min(shortened.deadline, end)

        if len(with_init) == 1:
            await self._init_one(with_init[0], failure, guards)
        elif with_init:
            async with anyio.create_task_group() as tg:
                for entry in with_init:
                    tg.start_soon(self._init_one, entry, failure, guards)
        return not failed

    async def _init_one(self, entry: Entry, fail: Fail, guards: list[anyio.CancelScope]) -> None:
        ctx = self._ctx
        ctx.logger.info("init starting", component=entry.name)
        started = time.perf_counter()
        entry.move(INITIALIZING)
        init = entry.component.init
        try:
            with setting_as(entry.name):  # what init() sets is this component's (a restart forgets it)
                if is_async(init):
                    with bounded(entry.init_timeout) as scope:
                        await ctx.call(init, entry, "init")
                else:
                    # A thread cannot be cancelled: a stop (or a sibling's failure) gives it
                    # ABANDON_GRACE to finish, so that what it acquired is finalized, not leaked.
                    with ctx.shutdown.graced_on_stop(ABANDON_GRACE) as guard:
                        guards.append(guard)
                        with bounded(entry.init_timeout) as scope:
                            await ctx.call(init, entry, "init")
                    if guard.cancelled_caught:
                        entry.move(REGISTERED)
                        ctx.logger.warning(
                            "init abandoned: a plain def init() did not finish within its grace; not finalized",
                            component=entry.name,
                            grace=ABANDON_GRACE,
                        )
                        return
        except anyio.get_cancelled_exc_class():
            entry.move(REGISTERED)
            ctx.logger.info("init cancelled; not finalized", component=entry.name, ms=ms(started))
            raise
        except Exception as exc:
            entry.move(FAILED)
            fail(entry, ComponentError(entry.name, "init", exc))
            return
        finally:
            entry.timings["init_ms"] = ms(started)
        if scope.cancelled_caught:
            entry.move(FAILED)
            fail(entry, ComponentTimeoutError(entry.name, "init", entry.init_timeout or 0))
            return
        entry.move(INITIALIZED)
        ctx.init_order.append(entry)
        ctx.logger.info("init finished", component=entry.name, ms=entry.timings["init_ms"])

    # -- the health wait ----------------------------------------------------------------

    async def _wait(
        self, group: list[Entry], starting: Countdown | None, owners: set[str] | None, on_timeout: StartTimeout
    ) -> bool:
        """Wait until every run of the group began and the keys waited for are healthy.

        Bounded by the smallest ``start_timeout`` of the group, initializers
        included (an initializer may register a key the wait depends on).
        """
        ctx = self._ctx
        if starting is None and self._healthy(owners):
            return True
        timeouts = [e.start_timeout for e in group if e.start_timeout is not None]
        limit = min(timeouts) if timeouts else None
        while True:
            with bounded(limit) as scope:
                while ((starting is not None and starting.count) or not self._healthy(owners)) and not ctx.stopping:
                    await ctx.waker.changed()
            if not scope.cancelled_caught:
                return not ctx.stopping
            if not on_timeout(group, limit or 0):
                return False

    def _healthy(self, owners: set[str] | None) -> bool:
        health = self._ctx.health
        return health.healthy if owners is None else not health.waiting_on(owners)

    def start_timeouts(
        self, group: list[Entry], limit: float, owners: set[str] | None = None
    ) -> list[tuple[Entry | None, ComponentTimeoutError]]:
        """One start-timeout error per component that holds the group up (None: a key of the app's own).

        ``owners`` limits it to the keys of those components (a restart's wait).
        """
        ctx = self._ctx
        unhealthy = ctx.health.unhealthy() if owners is None else ctx.health.waiting_on(owners)
        priority = group[0].options.priority
        # In registration order (keys are registered by concurrent inits, in no fixed order); the app's last.
        rank = {e.name: i for i, e in enumerate(ctx.entries)}
        holding = sorted(dict.fromkeys(s.component for s in unhealthy), key=lambda o: rank.get(o or "", len(rank)))
        if not holding:  # every key is healthy: some run had not even begun
            return [
                (
                    e,
                    ComponentTimeoutError(
                        e.name, "start", limit, f"priority {priority} not healthy after {limit:g}s: run not started"
                    ),
                )
                for e in group
                if e.handle is not None and not e.handle.began and not e.handle.finished
            ] or [
                (
                    None,
                    ComponentTimeoutError(
                        ctx.app_name, "start", limit, f"priority {priority} not healthy after {limit:g}s"
                    ),
                )
            ]
        errors: list[tuple[Entry | None, ComponentTimeoutError]] = []
        for owner in holding:
            keys = "; ".join(
                f"health key {s.key!r} (registered by {owner or 'the app'})" + (f": {s.reason}" if s.reason else "")
                for s in unhealthy
                if s.component == owner
            )
            detail = f"priority {priority} not healthy after {limit:g}s: {keys}"
            entry = ctx.by_name.get(owner) if owner else None
            errors.append((entry, ComponentTimeoutError(owner or ctx.app_name, "start", limit, detail)))
        return errors
