"""The runs: the task group that hosts every ``run()``, starting a group's runs, and one run's life.

The runs live in a task group of their own, hosted by a task of the runner's
root group, so that a run which ignores cancellation cannot keep finalize
from running. How a run ended (returned, failed, cancelled, or never begun
because a stop came first) is handed to ``on_exit``: what follows (a restart,
the unwind, nothing) is the supervisor's decision, not this module's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from .._calls import is_async
from ._context import CANCEL_GRACE, Context, ms
from ._record import Countdown, Entry, RunHandle
from ._states import FAILED, INITIALIZED, RUNNING, STOPPED

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

__all__ = ["BATCH_ABOVE", "Outcome", "Runs"]

BATCH_ABOVE = 16
"""A group with more processes than this logs their start and stop at info once for the group
(each process's own lines go to debug): a thousand "run starting" lines say less than one."""

Outcome = str
"""How a run ended: ``"returned"``, ``"failed"``, ``"cancelled"`` or ``"held"`` (a stop came before it began)."""
OnExit = Callable[[RunHandle, Outcome, "BaseException | None"], None]


class Runs:
    """Hosts the runs of one app and starts them, a priority group (or a restarted part of one) at a time."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.on_exit: OnExit = lambda handle, outcome, error: None  # set by the runner to its supervisor's
        self._tg: TaskGroup | None = None
        self._closed = anyio.Event()
        self._is_async_run: dict[type, bool] = {}  # by component class

    async def host(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The task that hosts the runs' task group until ``cancel_all()``."""
        async with anyio.create_task_group() as runs:
            self._tg = runs
            self._ctx.shutdown.cancel_on_force(runs.cancel_scope)
            task_status.started()
            await anyio.sleep_forever()
        self._closed.set()

    def cancel_all(self) -> None:
        """Cancel whatever still runs (after the unwind, only what ignored its stop)."""
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def closed(self) -> bool:
        """Wait (up to ``CANCEL_GRACE``) until the last run has ended; whether it did."""
        with anyio.move_on_after(CANCEL_GRACE):
            await self._closed.wait()
        return self._closed.is_set()

    def start(self, group: list[Entry]) -> Countdown | None:
        """Start the runs of ``group``'s processes; a countdown of those not yet begun (None: no process)."""
        processes = [e for e in group if "run" in e.defines]
        if not processes:
            return None
        assert self._tg is not None
        ctx = self._ctx
        starting = Countdown(len(processes))
        ctx.running += len(processes)
        quiet = len(processes) > BATCH_ABOVE
        if quiet:
            ctx.logger.info("runs starting", priority=group[0].options.priority, processes=len(processes))
        cancellable = []
        is_async_run = self._is_async_run
        for entry in processes:
            component = entry.component
            run = component.run  # type: ignore[attr-defined]  # a Process: it defines run
            stop = component.stop if "stop" in entry.defines else None  # type: ignore[attr-defined]
            # Whether run is async is a property of the class: asked once per class, not per process.
            run_is_async = is_async_run.get(type(component))
            if run_is_async is None:
                run_is_async = is_async_run[type(component)] = is_async(run)
            handle = entry.handle = RunHandle(entry, run, run_is_async, stop, starting, quiet)
            if stop is None:
                cancellable.append(handle)
            else:
                self._tg.start_soon(self._run_one, handle, name=f"nacelle run {entry.name}")
        if cancellable:
            # Processes without stop() are stopped by cancellation, all of a group at
            # once: one shared scope makes that one cancel() instead of one per process.
            host_scope = anyio.CancelScope()
            for handle in cancellable:
                handle.host_scope = host_scope
            self._tg.start_soon(self._host, host_scope, cancellable, name="nacelle runs")
        return starting

    async def _host(self, scope: anyio.CancelScope, handles: list[RunHandle]) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                if not scope.cancel_called:
                    # From now on the stop cancels the task group's own scope: the same runs,
                    # and its exit then has nothing left to cancel (on asyncio each first cancel()
                    # of a scope formats the current task's repr, some 20 µs).
                    for handle in handles:
                        handle.host_scope = tg.cancel_scope
                for handle in handles:
                    tg.start_soon(self._run_one, handle, name=f"nacelle run {handle.entry.name}")

    async def _run_one(self, handle: RunHandle) -> None:
        ctx = self._ctx
        entry = handle.entry
        started = time.perf_counter()
        outcome: Outcome = "cancelled"
        error: BaseException | None = None
        try:
            if handle.is_async and not handle.begin():
                outcome = "held"  # a stop came before this run's first step: it never starts
            else:
                if not handle.quiet:
                    ctx.logger.info("run starting", component=entry.name)
                elif ctx.debug:
                    ctx.logger.debug("run starting", component=entry.name)
                entry.move(RUNNING)
                entry.timings["started_at"] = time.time()
                self._begun(handle)
                if handle.scope is None:  # cancelled with its group: the cancellation ends this task
                    await (handle.fn() if handle.is_async else ctx.call(self._gated(handle), entry, "run"))
                    outcome = "returned"
                else:
                    with handle.scope:  # cancelled alone, when its stop() fails or times out
                        await ctx.call(handle.fn if handle.is_async else self._gated(handle), entry, "run")
                        outcome = "returned"
        except Exception as exc:
            outcome = "failed"
            error = exc
        finally:
            if handle.starting is not None:
                self._begun(handle)  # a run that never began counts as started: nothing to wait for
            # What the process started ends with it: before its run counts as ended
            # (the common case, nothing made for it, costs no await).
            ending = ctx.releasing(entry)
            if ending is not None:
                await ctx.released(entry, ending)
            if handle.abandoned:
                pass  # its component was finalized meanwhile: that is its state now
            elif outcome == "held" or entry.state is INITIALIZED:
                entry.move(STOPPED)  # stopped before it began: a clean stop
            else:
                entry.move(FAILED if outcome == "failed" else STOPPED)
            entry.timings["run_ms"] = ms(started)
            ctx.running -= 1
            handle.ended()
            if outcome == "held" or outcome == "cancelled":  # the supervisor speaks for the others
                self._log_end(handle, outcome, started)
            self.on_exit(handle, outcome, error)

    @staticmethod
    def _gated(handle: RunHandle) -> Callable[[], object]:
        """A plain ``def`` run, as its thread calls it: a stop that came first keeps it from starting."""
        run = handle.fn

        def gated() -> object:
            return run() if handle.begin() else None

        return gated

    def _begun(self, handle: RunHandle) -> None:
        starting, handle.starting = handle.starting, None
        if starting is not None:
            starting.done_one()
            if starting.count == 0:
                self._ctx.waker.notify()

    def _log_end(self, handle: RunHandle, outcome: Outcome, started: float) -> None:
        """The log line of a run that neither returned nor failed."""
        entry = handle.entry
        log = self._ctx.logger
        if outcome == "held":
            log.info("run not started: stopped before it began", component=entry.name)
        elif outcome == "cancelled":
            if not handle.is_async:
                # A thread cannot be cancelled: the runner stops waiting, the function goes on.
                log.warning(
                    "run abandoned: a plain def run() cannot be cancelled; give the process a stop()",
                    component=entry.name,
                    ms=ms(started),
                )
            elif not handle.stopping:  # news; expected when stopping a process without stop(): debug
                log.info("run cancelled", component=entry.name, ms=ms(started))
            elif self._ctx.debug:
                log.debug("run cancelled", component=entry.name, ms=ms(started))
