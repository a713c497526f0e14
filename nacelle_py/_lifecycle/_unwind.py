"""The unwind: stop by descending priority, then finalize in reverse order of successful init.

Used whole at the end of the app, and on a part of it by a restart (the
failed component, or the rest or all of them): the same steps either way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio

from .._errors import ComponentError, ComponentTimeoutError
from ._context import CANCEL_GRACE, Context, deadline, ms
from ._record import Countdown, Entry, RunHandle, by_priority
from ._shutdown import FORCED_FINALIZE_BUDGET
from ._states import FAILED, FINALIZED, FINALIZING, RUNNING, STOPPING

__all__ = ["Record", "Unwind"]

Record = Callable[[ComponentError], None]
"""Where an unwind's errors go."""


class Unwind:
    """Stops running processes and finalizes initialised components."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    # -- stop -----------------------------------------------------------------------

    async def stop(self, entries: Sequence[Entry], *, record: Record | None = None) -> None:
        """Stop the running processes among ``entries``, one priority group at a time, highest first.

        ``record`` takes the errors (default: the app's error list; a restart notes them instead).
        """
        ctx = self._ctx
        groups = ctx.groups if entries is ctx.entries else by_priority(entries)  # the app's: grouped once
        for group in reversed(groups):
            await self._stop_group(group, record or ctx.record)

    async def _stop_group(self, group: list[Entry], record: Record) -> None:
        """Ask every running process of a group to stop at once, then wait for the runs to end."""
        running = [e.handle for e in group if e.handle is not None and not e.handle.finished]
        if not running:
            return
        ctx = self._ctx
        log = ctx.logger
        debug = ctx.debug
        started = anyio.current_time()
        stopped_at = time.perf_counter()
        countdown = Countdown(len(running))
        stoppers = []
        shared: set[anyio.CancelScope] = set()  # the groups' scopes of processes without stop(): one cancel each
        for handle in running:
            entry = handle.entry
            began = handle.ask_stop()
            if entry.state is RUNNING:
                entry.move(STOPPING)
            handle.countdown = countdown
            stop = handle.stop
            if stop is None:
                # Stopping is cancelling: "stop finished" (info, with ms) says all there is.
                if debug:
                    log.debug("stop starting", component=entry.name)
                if handle.host_scope is not None:
                    shared.add(handle.host_scope)
                else:
                    handle.cancel()
            elif began:  # only a run that began is stopped; one that did not will not begin
                if debug or not handle.quiet:
                    (log.debug if handle.quiet else log.info)("stop starting", component=entry.name)
                stoppers.append((handle, stop))
        for scope in shared:
            scope.cancel()
        if len(stoppers) == 1:
            await self._call_stop(*stoppers[0], started, record)
        elif stoppers:
            async with anyio.create_task_group() as tg:
                for handle, stop in stoppers:
                    tg.start_soon(self._call_stop, handle, stop, started, record)
        # One wait for the whole group, bounded by its earliest deadline; then each
        # straggler is waited for up to its own deadline.
        bounds = [h.entry.shutdown_timeout for h in running if h.entry.shutdown_timeout is not None]
        earliest = started + min(bounds) if bounds else math.inf
        with anyio.CancelScope(deadline=earliest):
            await countdown.event.wait()
        quiet = running[0].quiet  # a large group: one line for it, each process's at debug
        line = None if quiet and not debug else log.debug if quiet else log.info
        took = ms(stopped_at)  # what every run that ended in the group's wait took
        for handle in running:
            if not handle.finished:
                await self._await_stopped(handle, started, record)
                took = ms(stopped_at)
            entry = handle.entry
            entry.timings["stop_ms"] = took
            if line is not None:
                line("stop finished", component=entry.name, ms=took)
        if quiet:
            log.info("processes stopped", priority=group[0].options.priority, processes=len(running), ms=ms(stopped_at))

    async def _call_stop(self, handle: RunHandle, stop: Callable[[], Any], started: float, record: Record) -> None:
        entry = handle.entry
        timeout = entry.shutdown_timeout
        try:
            with anyio.CancelScope(deadline=deadline(started, timeout)) as scope:
                await self._ctx.call(stop, entry, "stop")
        except Exception as exc:
            record(ComponentError(entry.name, "stop", exc))
            handle.cancel()
            return
        if scope.cancelled_caught:
            record(
                ComponentTimeoutError(
                    entry.name, "stop", timeout or 0, f"stop() did not return within {timeout:g}s; run cancelled"
                )
            )
            handle.stop_timed_out = True  # one timeout, reported once
            handle.cancel()

    async def _await_stopped(self, handle: RunHandle, started: float, record: Record) -> None:
        entry = handle.entry
        timeout = entry.shutdown_timeout
        if not await handle.wait(deadline(started, timeout)):
            if not handle.stop_timed_out:
                record(
                    ComponentTimeoutError(
                        entry.name,
                        "stop",
                        timeout or 0,
                        f"run() did not return within {timeout:g}s of stop(); cancelled",
                    )
                )
            handle.cancel()
            if not await handle.wait(anyio.current_time() + CANCEL_GRACE):
                self._ctx.logger.warning(
                    "run ignored cancellation; abandoned", component=entry.name, grace=CANCEL_GRACE
                )

    # -- finalize -------------------------------------------------------------------

    async def finalize(
        self, entries: Iterable[Entry] | None = None, *, restarting: bool = False, record: Record | None = None
    ) -> None:
        """Finalize (in reverse init order) the initialised components among ``entries`` (all by default).

        In the app's unwind a failed component stays ``failed`` through a clean
        finalize; in a restart (``restarting``) it moves on to ``finalized``.
        """
        ctx = self._ctx
        chosen = None if entries is None else {id(e) for e in entries}
        for entry in reversed(ctx.init_order):
            if chosen is not None and id(entry) not in chosen:
                continue
            if entry.handle is not None and not entry.handle.finished:
                entry.handle.abandoned = True  # its run outlived the unwind (forced, or it ignored cancellation)
            keep = entry.state is FAILED and not restarting  # a failure is not hidden by a clean finalize
            if "finalize" in entry.defines:
                await self._finalize_one(entry, keep, record or ctx.record)
            elif not keep:
                entry.move(FINALIZED)
            # Inline rather than ``await ctx.release()``: most components have nothing to
            # release, and a coroutine per component adds up at a thousand of them.
            ending = ctx.releasing(entry)
            if ending is not None:
                await ctx.released(entry, ending)
        ctx.init_order[:] = [e for e in ctx.init_order if chosen is not None and id(e) not in chosen]

    async def _finalize_one(self, entry: Entry, keep: bool, record: Record) -> None:
        """Call one component's ``finalize`` within its bound (and the forced-shutdown budget).

        ``keep``: it failed, and stays ``failed`` through a clean finalize.
        """
        ctx = self._ctx
        shutdown = ctx.shutdown
        finalize = entry.component.finalize
        if anyio.current_time() >= shutdown.forced_deadline:
            record(
                ComponentTimeoutError(
                    entry.name, "finalize", FORCED_FINALIZE_BUDGET, "skipped: the forced shutdown budget was spent"
                )
            )
            return
        ctx.logger.info("finalize starting", component=entry.name)
        started = time.perf_counter()
        if not keep:
            entry.move(FINALIZING)
        timeout = entry.finalize_timeout
        try:
            with shutdown.finalizing(deadline(anyio.current_time(), timeout)) as scope:
                await ctx.call(finalize, entry, "finalize")
        except Exception as exc:
            self._fail(entry, keep, ComponentError(entry.name, "finalize", exc), record)
            return
        finally:
            entry.timings["finalize_ms"] = ms(started)
        if scope.cancelled_caught:
            limit = min(timeout or math.inf, FORCED_FINALIZE_BUDGET if shutdown.forced else math.inf)
            self._fail(entry, keep, ComponentTimeoutError(entry.name, "finalize", limit), record)
            return
        if not keep:
            entry.move(FINALIZED)
        ctx.logger.info("finalize finished", component=entry.name, ms=entry.timings["finalize_ms"])

    @staticmethod
    def _fail(entry: Entry, kept: bool, error: ComponentError, record: Record) -> None:
        if not kept:
            entry.move(FAILED)
        record(error)
