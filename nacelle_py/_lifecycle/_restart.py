"""Supervision: what follows when a run ends, and restarts by Erlang/OTP's rules.

Each component has a restart policy: ``never`` (OTP's temporary: its failure
unwinds the app, as go-nacelle does), ``on_failure`` (transient: restarted
when ``run`` raises, or its start times out; a clean return follows
``silent_exit``) or ``always`` (permanent: restarted after a clean return
too). The app's strategy says what else restarts with it: nothing
(``one_for_one``), every started component (``one_for_all``), or those
started after it (``rest_for_one``). A restart is the unwind and the boot of
those components, in that order, with a backoff wait between; more than
``max_restarts`` within ``restart_window`` seconds escalates: the app
unwinds with status 1.

In a group restart a sibling with ``restart="never"`` follows OTP's
temporary children: a process is stopped and finalized but not started
again; an initializer is always initialised again, since what restarts
needs the services it provides.
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING, Literal, get_args

import anyio

from .._errors import ComponentError
from ._boot import Boot
from ._context import Context
from ._record import Entry, RunHandle, by_priority
from ._runs import Outcome
from ._states import State
from ._unwind import Unwind

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

__all__ = ["RESTARTING", "STRATEGIES", "Strategy", "Supervisor"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
"""What restarts with a component: itself, every started component, or it and those started after it."""
RESTARTING = "restarting"
"""The reason a restarting component's health keys give."""


class _Restart:
    """One restart under way: who failed, why (None: a clean return), and what restarts with it."""

    __slots__ = ("affected", "attempt", "booting", "cause", "entry")

    def __init__(self, entry: Entry, cause: ComponentError | None, attempt: int, affected: list[Entry]) -> None:
        self.entry = entry
        self.cause = cause
        self.attempt = attempt
        self.affected = affected
        self.booting = False  # past its unwind and backoff: a new failure needs a restart of its own


class Supervisor:
    """Decides what a run's end means and carries out restarts, each on a task of its own.

    Restarts wait out their backoffs side by side; their unwinds and boots take
    turns through ``Boot.lock``, so one component's long backoff never holds up
    another's restart.
    """

    def __init__(self, ctx: Context, boot: Boot, unwind: Unwind, strategy: Strategy) -> None:
        self._ctx = ctx
        self._boot = boot
        self._unwind = unwind
        self._strategy = strategy
        self._order = ctx.boot_order
        self._active: list[_Restart] = []
        self._history: dict[str, deque[float]] = {}
        self._tg: TaskGroup | None = None
        self._random = random.Random()

    @property
    def idle(self) -> bool:
        """Whether no restart is under way."""
        return not self._active

    def restarting(self, entry: Entry) -> bool:
        """Whether ``entry`` is part of a restart under way."""
        return any(entry in r.affected for r in self._active)

    # -- what a run's end means ------------------------------------------------------

    def on_exit(self, handle: RunHandle, outcome: Outcome, error: BaseException | None) -> None:
        """Called by the runs as each run ends."""
        ctx = self._ctx
        entry = handle.entry
        if outcome == "failed":
            failure = ComponentError(entry.name, "run", error)
            if handle.stopping and self.restarting(entry):
                self._note(entry, failure)  # it failed as its restart stopped it: the restart goes on
            elif handle.stopping or ctx.stopping:
                ctx.record(failure)
            else:
                self.failed(entry, failure)
        elif outcome == "returned":
            log = ctx.logger
            if handle.stopping or ctx.stopping:
                quiet = log.debug if handle.quiet else log.info
                quiet("run finished", component=entry.name, ms=entry.timings["run_ms"])
            elif entry.options.restart == "always":
                log.info("run returned; restarting it (restart='always')", component=entry.name)
                self._schedule(entry, None)
            elif entry.options.silent_exit:
                log.info("run finished; silent exit", component=entry.name, ms=entry.timings["run_ms"])
                self.check_running("every process has exited")
            else:
                log.info("run returned; shutting down", component=entry.name, ms=entry.timings["run_ms"])
                ctx.request_stop(f"{entry.name}: run returned")

    def failed(self, entry: Entry, error: ComponentError) -> None:
        """A component failed (its run, or its init or start in a restart): restart it or unwind."""
        ctx = self._ctx
        if ctx.stopping or entry.options.restart == "never":
            ctx.record(error)
            ctx.request_stop(f"{entry.name}: {error.operation} failed")
            return
        self._schedule(entry, error)

    def on_boot_timeout(self, group: list[Entry], limit: float) -> bool:
        """A group is not healthy in time at boot: restart what may be restarted; whether to wait on."""
        ctx = self._ctx
        wait_on = False
        errors = []
        for entry, error in self._boot.start_timeouts(group, limit):
            if entry is not None and entry.restarts > 0:
                # Restarted during the boot and still not up: the boot waited for the restarted
                # run within the start timeout, and a run that keeps failing ends the boot here
                # rather than at the restart intensity.
                errors.append(error)
            elif entry is not None and self.restarting(entry):
                wait_on = True  # its first restart will bring it up, or fail and count
            elif entry is not None and self._restartable_run(entry) and not ctx.stopping:
                self._schedule(entry, error)
                wait_on = True
            else:
                errors.append(error)
        if errors:
            for error in errors:
                ctx.record(error)
            ctx.request_stop("start timeout")
            return False
        return wait_on and not ctx.stopping

    def _on_restart_timeout(self, group: list[Entry], limit: float) -> bool:
        """A restarted group is not healthy in time: a failure of each component holding it up."""
        names = {e.name for e in group}
        for entry, error in self._boot.start_timeouts(group, limit, owners=names):
            if entry is not None:
                self.failed(entry, error)
        return False

    @staticmethod
    def _restartable_run(entry: Entry) -> bool:
        handle = entry.handle
        return entry.options.restart != "never" and handle is not None and not handle.finished

    def check_running(self, reason: str) -> None:
        """Once booted: if no process runs and none is about to restart, the app is done."""
        ctx = self._ctx
        if ctx.booted and ctx.running == 0 and self.idle:
            ctx.request_stop(reason)

    # -- scheduling ------------------------------------------------------------------

    def _schedule(self, entry: Entry, cause: ComponentError | None) -> None:
        ctx = self._ctx
        if any(entry in r.affected and not r.booting for r in self._active):
            return  # a restart under way will bring it up anyway
        options = entry.options
        now = anyio.current_time()
        history = self._history.setdefault(entry.name, deque())
        while history and history[0] <= now - options.restart_window:
            history.popleft()
        if len(history) >= options.max_restarts:
            last = str(cause) if cause is not None else f"{entry.name}: run returned"
            ctx.record(
                ComponentError(
                    entry.name,
                    "restart",
                    cause.cause if cause is not None else None,
                    f"restart intensity exceeded: {len(history)} restart(s) within {options.restart_window:g}s "
                    f"(max_restarts={options.max_restarts}); last error: {last}",
                )
            )
            ctx.request_stop(f"{entry.name}: restart intensity exceeded")
            return
        history.append(now)
        if cause is not None:
            self._note(entry, cause, log=False)
        affected = self._affected(entry)
        for member in affected:
            ctx.health.hold(member.name, RESTARTING)
        restart = _Restart(entry, cause, len(history), affected)
        self._active.append(restart)
        assert self._tg is not None, "restarts are scheduled only while the supervisor works"
        self._tg.start_soon(self._carry_out, restart, name=f"nacelle restart {entry.name}")

    def _affected(self, entry: Entry) -> list[Entry]:
        """What restarts with ``entry``, in boot order."""
        if self._strategy == "one_for_one":
            return [entry]
        started = [e for e in self._order if e.state is not State.REGISTERED or e is entry]
        if self._strategy == "one_for_all":
            return started
        return started[started.index(entry) :]  # rest_for_one: it and everything started after it

    def _note(self, entry: Entry, error: ComponentError, *, log: bool = True) -> None:
        """An error the restart deals with: kept on the component's record, not the app's error list."""
        entry.note(str(error))
        if log:
            self._ctx.logger.warning(str(error), component=entry.name, operation=error.operation, restarting=True)

    def _backoff(self, entry: Entry, attempt: int) -> float:
        """Exponential from the initial delay up to the cap, with jitter (half fixed, half random)."""
        initial, cap = entry.options.backoff
        base = min(cap, initial * 2.0 ** min(attempt - 1, 64))
        return base / 2 + self._random.uniform(0, base / 2)

    # -- carrying restarts out -------------------------------------------------------

    async def work(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The supervisor's task: hosts the restarts' tasks until the app's root group ends."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    async def wind_down(self) -> None:
        """Once stopping: wait for the restarts under way (backoffs and boots end at once, unwinds are bounded)."""
        while self._active:
            await self._ctx.waker.changed()

    async def _carry_out(self, restart: _Restart) -> None:
        try:
            await self._restart(restart)
        finally:
            self._active.remove(restart)
            self._ctx.waker.notify()  # for wind_down()
        self.check_running("no process is running")

    async def _restart(self, restart: _Restart) -> None:
        ctx = self._ctx
        entry = restart.entry
        affected = restart.affected
        again = [e for e in affected if e is entry or e.kind == "initializer" or e.options.restart != "never"]
        delay = self._backoff(entry, restart.attempt)
        ctx.logger.warning(
            "restarting component",
            component=entry.name,
            attempt=restart.attempt,
            backoff=round(delay, 3),
            error=str(restart.cause) if restart.cause is not None else "run returned",
            **(
                {"strategy": self._strategy, "with": [e.name for e in affected if e is not entry]}
                if len(affected) > 1
                else {}
            ),
        )
        async with self._boot.lock:
            await self._unwind.stop(affected, record=self._noted)
            await self._unwind.finalize(affected, restarting=True, record=self._noted)
        for member in again:  # their next init() sets their services again
            ctx.forget_services(member)
        for member in affected:
            if member not in again:
                ctx.health.settle(member.name)  # OTP's temporary child: gone for good
                ctx.logger.warning("stopped for good: restart='never'", component=member.name, because=entry.name)
            elif member.state is not State.RESTARTING:
                member.move(State.RESTARTING)
        with ctx.shutdown.cancelled_on_stop():
            await anyio.sleep(delay)
        restart.booting = True
        for group in by_priority(again):
            if ctx.stopping:
                break
            if not await self._boot.group(
                group, fail=self.failed, on_timeout=self._on_restart_timeout, restart=True, only=self._waiting
            ):
                break
            for member in group:
                if member.state is State.RESTARTING:
                    continue  # another restart's, or not reached
                if not any(member in r.affected for r in self._active if r is not restart):
                    ctx.health.settle(member.name)  # not failed again already
                ctx.logger.info("restarted", component=member.name, restarts=member.restarts)
        if ctx.stopping:
            for member in again:
                if member.state is State.RESTARTING:
                    member.move(State.STOPPED)

    @staticmethod
    def _waiting(member: Entry) -> bool:
        """Picked under the boot lock: a member still waiting to come back (another restart may have booted it)."""
        if member.state is not State.RESTARTING:
            return False
        member.restarts += 1
        return True

    def _noted(self, error: ComponentError) -> None:
        entry = self._ctx.by_name.get(error.component)
        if entry is None:
            self._ctx.record(error)
        else:
            self._note(entry, error)
