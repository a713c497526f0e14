"""The runner: priority groups, the phases of each component, supervision and unwind.

For each priority, ascending: inject, ``init`` concurrently, start every
``run``, and wait until all health components are healthy (bounded by the
group's smallest ``start_timeout``). Then supervise until a signal, a run
that fails or returns, or ``App.shutdown()``. Unwind: ``stop`` by descending
priority (concurrently within a group, each ``run`` bounded by its
``shutdown_timeout``), then ``finalize`` in exact reverse order of
successful ``init``. A second signal cancels what is left and gives the
finalizers one short shared budget.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ._calls import call, is_async
from ._components import Initializer, Options, overridden
from ._errors import ComponentError, ComponentTimeoutError, InjectionError
from ._health import Health
from ._inject import Injector
from ._signals import SIGNALS, SignalCatcher
from ._waker import Waker

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ["Entry", "Runner"]

FORCED_FINALIZE_BUDGET = 0.5
"""Seconds the finalizers share after a second signal, so the process exits within a second."""
DUPLICATE_SIGNAL_WINDOW = 0.05
"""SIGTERM again within this many seconds is one request: a process-group kill through ``make``
(which forwards SIGTERM to its child) delivers SIGTERM twice. Make does not forward SIGINT, so
a second SIGINT always counts."""
FORCED_EXIT_AFTER = 0.9
"""Seconds after a second signal at which ``boot()`` ends the process even if a run ignores cancellation."""
ABANDON_GRACE = 0.5
"""Seconds the sibling inits of a failed init get to finish before they are cancelled."""
CANCEL_GRACE = 1.0
"""Seconds a run gets to unwind after it is cancelled before the runner stops waiting for it."""


class Entry:
    """One registered component and its state in this run."""

    __slots__ = (
        "component", "countdown", "done", "errors", "finalize_timeout", "finished", "host_scope", "init_timeout",
        "name", "options", "restarts", "run", "run_is_async", "stop_timed_out", "run_scope", "shutdown_timeout",
        "start_timeout", "state", "stopping", "timings",
    )

    def __init__(
        self,
        component: Initializer,
        options: Options,
        *,
        init_timeout: float | None,
        start_timeout: float | None,
        shutdown_timeout: float | None,
        finalize_timeout: float | None,
    ) -> None:
        self.component = component
        self.options = options
        self.name = options.name
        self.init_timeout = init_timeout
        self.start_timeout = start_timeout
        self.shutdown_timeout = shutdown_timeout
        self.finalize_timeout = finalize_timeout
        self.run: Callable[[], Any] | None = None
        self.run_is_async = False
        self.run_scope: anyio.CancelScope | None = None  # own scope: processes with a stop()
        self.host_scope: anyio.CancelScope | None = None  # shared by a group's processes without stop()
        self.done: anyio.Event | None = None  # created only when someone waits for this one run to end
        self.countdown: _Countdown | None = None
        self.finished = False
        self.stopping = False
        self.stop_timed_out = False
        # What the ops endpoint reports: the lifecycle state (see STATES), the errors
        # recorded for this component, and when and how long each phase took.
        self.state = "registered"
        self.errors: list[str] = []
        self.timings: dict[str, float] = {}
        self.restarts = 0  # the core never restarts a component; exported for dashboards

    @property
    def kind(self) -> str:
        """``"process"`` if the component overrides ``run``, else ``"initializer"``."""
        return "process" if overridden(self.component, "run") is not None else "initializer"

    def cancel_run(self) -> None:
        """Cancel this run (for a process without ``stop()``: its whole group's, which stop together)."""
        scope = self.run_scope or self.host_scope
        if scope is not None:
            scope.cancel()


STATES = (
    "registered", "initializing", "initialized", "running", "stopping", "stopped", "finalizing", "finalized", "failed",
)
"""Every lifecycle state an entry can be in, in the order a clean run passes through them."""
PHASES = ("starting", "running", "stopping", "stopped")
"""The runner's own phases: booting the priority groups, supervising, unwinding, done."""


def _bounded(seconds: float | None) -> anyio.CancelScope:
    return anyio.move_on_after(math.inf if seconds is None else seconds)


def _ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``perf_counter`` reading), for log lines."""
    return round((time.perf_counter() - start) * 1000, 3)


class _Countdown:
    """Set ``event`` once ``count`` runs have ended: one wait for a whole group instead of one per run."""

    __slots__ = ("count", "event")

    def __init__(self, count: int) -> None:
        self.count = count
        self.event = anyio.Event()

    def done_one(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.event.set()


class Runner:
    """Runs one app's entries through the whole lifecycle; ``errors`` collects every failure."""

    def __init__(
        self,
        *,
        app_name: str,
        entries: Sequence[Entry],
        injector: Injector,
        health: Health,
        logger: Any,
        handle_signals: bool,
        errors: list[ComponentError],
        on_error: Callable[[ComponentError], None] | None = None,
        on_ready: Sequence[Callable[[], object]] = (),
        hard_exit: bool = False,
        release: Callable[[str], Awaitable[None] | None] | None = None,
    ) -> None:
        self.app_name = app_name
        self.entries = entries
        self.injector = injector
        self.health = health
        self.logger = logger
        self.handle_signals = handle_signals
        self.errors = errors
        self.on_error = on_error
        self.on_ready = on_ready
        self.hard_exit = hard_exit
        self.release = release
        priorities = sorted({e.options.priority for e in self.entries})
        self._groups = [[e for e in self.entries if e.options.priority == p] for p in priorities]
        self._init_order: list[Entry] = []
        self._stop_requested = False
        self._forced = False
        self._thread_shutdown = False
        self._starting = 0
        self._running = 0  # runs started and not yet ended
        self._booted = False
        self._boot_scope: anyio.CancelScope | None = None
        self._graceful = anyio.CancelScope()
        self._finalize_scope: anyio.CancelScope | None = None
        self._forced_deadline = math.inf
        self._waker = Waker(self._on_wake, self._on_signal)
        self._signals = SignalCatcher(self._waker.writer_fileno())
        self._first_signal: tuple[int, float] | None = None
        self._runs_closed = anyio.Event()
        self._watchdog: threading.Timer | None = None
        self._by_name = {e.name: e for e in self.entries}
        self._observers: list[Callable[[str, str], None]] = []
        self.phase = "starting"

    def observe(self, observer: Callable[[str, str], None]) -> None:
        """Call ``observer(event, detail)`` on the loop at each phase change.

        Events are the phases (``PHASES``): ``"starting"`` (as each priority
        group begins; detail says which), ``"running"`` (every group is up and
        healthy), ``"stopping"`` (the unwind begins; detail is the reason) and
        ``"stopped"``. For readiness reporting (the ops
        endpoint, systemd); an observer that raises is logged and ignored.
        """
        self._observers.append(observer)

    def _tell(self, event: str, detail: str = "") -> None:
        if self.phase == "stopped":
            return  # nothing is said once the run is over
        if event in PHASES:
            self.phase = event
        for observer in self._observers:
            try:
                observer(event, detail)
            except Exception as exc:
                self.logger.error("lifecycle observer failed", event=event, exc_info=exc)

    # -- requests -----------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Begin a graceful unwind (idempotent); safe from any thread."""
        if not self._waker.in_loop_thread():
            self._thread_shutdown = True
            self._waker.notify()
            return
        if self._stop_requested or self.phase == "stopped":
            return
        self._stop_requested = True
        self.logger.info("shutdown requested", reason=reason)
        self._tell("stopping", reason)
        if self._boot_scope is not None:
            self._boot_scope.cancel()
        self._waker.notify()

    def force(self, reason: str) -> None:
        """Abandon graceful waiting: cancel every run and give finalizers one short pass."""
        if self._forced:
            return
        self._forced = True
        self._stop_requested = True
        self._forced_deadline = anyio.current_time() + FORCED_FINALIZE_BUDGET
        self._record(ComponentError(self.app_name, "shutdown", None, f"forced by {reason}"))
        self._graceful.cancel()
        self._runs.cancel_scope.cancel()
        self._arm_watchdog(FORCED_EXIT_AFTER, "second signal")
        if self._finalize_scope is not None:
            self._finalize_scope.deadline = min(self._finalize_scope.deadline, self._forced_deadline)

    def _on_wake(self) -> None:
        if self._thread_shutdown and not self._stop_requested:
            self.request_stop("shutdown() called")

    def _on_signal(self, signum: int) -> None:
        """One arrival of SIGINT or SIGTERM, read on the loop from the wakeup fd."""
        if signum not in SIGNALS:
            return
        at = time.monotonic()
        name = signal.Signals(signum).name
        first = self._first_signal
        if first is None:
            self._first_signal = (signum, at)
            self.logger.info("signal received; shutting down gracefully", signal=name)
            self.request_stop(f"signal {name}")
        elif signum == signal.SIGTERM == first[0] and at - first[1] < DUPLICATE_SIGNAL_WINDOW:
            self.logger.debug("duplicate signal ignored", signal=name)
        elif not self._forced:
            self.logger.warning("second signal; forcing shutdown", signal=name)
            self.force(f"second signal {name}")

    def _record(self, error: ComponentError) -> None:
        self.errors.append(error)
        entry = self._by_name.get(error.component)
        if entry is not None:
            entry.errors.append(str(error))
        if self.on_error is not None:
            self.on_error(error)

    # -- the whole run ------------------------------------------------------------

    async def run(self, *, stop_already_requested: bool = False) -> None:
        """Boot, supervise, unwind; returns when everything that started has ended."""
        unsubscribe = self.health.subscribe(lambda _c: self._waker.notify())
        try:
            async with anyio.create_task_group() as root:
                root.start_soon(self._waker.pump)
                # The runs live in a task group of their own, hosted by another task, so
                # that a run which ignores cancellation cannot keep finalize from running.
                await root.start(self._host_runs)
                if self.handle_signals:
                    self._signals.install()
                if stop_already_requested:
                    self.request_stop("shutdown() called before boot")
                with self._graceful:
                    if await self._boot():
                        self._booted = True
                        self.logger.info("app healthy; supervising")
                        self._tell("running")
                        self._ready()
                        if self._running == 0:
                            self.request_stop("no process is running")
                        while not self._stop_requested:
                            await self._waker.changed()
                    if not self._stop_requested:  # a failed init or injection: the unwind begins
                        self._stop_requested = True
                        self._tell("stopping", "boot did not finish")
                    await self._stop_all()
                self._runs.cancel_scope.cancel()  # anything left runs only after a forced shutdown
                await self._finalize_all()
                await self._await_runs_closed()
                root.cancel_scope.cancel()
        finally:
            if self.handle_signals:
                self._signals.restore()
            if self._watchdog is not None:
                self._watchdog.cancel()
            unsubscribe()
            self._waker.close()
            self._tell("stopped")

    async def _host_runs(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as runs:
            self._runs = runs
            task_status.started()
            await anyio.sleep_forever()  # until run() cancels this group's scope
        self._runs_closed.set()

    async def _await_runs_closed(self) -> None:
        """Wait (bounded) for the last runs to end; a run that ignores cancellation is an error."""
        with anyio.move_on_after(CANCEL_GRACE):
            await self._runs_closed.wait()
        if self._runs_closed.is_set():
            return
        for entry in self.entries:
            if entry.run is not None and not entry.finished:
                self._record(ComponentError(entry.name, "stop", None, "run() ignored cancellation; abandoned"))
        # Under boot() the process is ours: end it rather than hang. Embedded in
        # serve(), structured concurrency leaves no choice but to wait for the run.
        self._arm_watchdog(0.0, "a run ignored cancellation")
        self.logger.error("waiting for runs that ignore cancellation", hard_exit=self.hard_exit)

    def _arm_watchdog(self, seconds: float, reason: str) -> None:
        """Under ``boot()`` only: end the process with status 1 if it is still unwinding after ``seconds``."""
        if not self.hard_exit or self._watchdog is not None:
            return
        logger = self.logger

        def hard_exit() -> None:
            try:
                logger.error("exiting now with status 1", reason=reason)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(1)

        self._watchdog = threading.Timer(seconds, hard_exit)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _ready(self) -> None:
        for hook in self.on_ready:
            try:
                hook()
            except Exception as exc:
                self._record(ComponentError(self.app_name, "ready", exc))
                self.request_stop("on_ready hook failed")

    # -- boot ---------------------------------------------------------------------

    async def _boot(self) -> bool:
        for group in self._groups:
            if self._stop_requested:
                return False
            priority = group[0].options.priority
            started = time.perf_counter()
            self._tell("starting", f"starting priority {priority} ({len(group)} component{'' if len(group) == 1 else 's'})")
            if not self._inject(group):
                return False
            ok = False  # stays False if a shutdown request or a failed init cancels the scope
            with anyio.CancelScope() as self._boot_scope:
                ok = await self._init_group(group) and await self._start_group(group)
            self._boot_scope = None
            if not ok or self._stop_requested:
                return False
            self.logger.info("priority group started", priority=priority, components=len(group), ms=_ms(started))
        return True

    def _inject(self, group: list[Entry]) -> bool:
        ok = True
        for entry in group:
            try:
                self.injector.inject(entry.component, entry.name)
            except InjectionError as exc:
                detail = str(exc).split(": ", 1)[-1]
                self._record(ComponentError(entry.name, "inject", exc, detail))
                ok = False
        return ok

    async def _init_group(self, group: list[Entry]) -> bool:
        with_init = []
        for entry in group:
            if overridden(entry.component, "init") is None:
                entry.state = "initialized"
                self._init_order.append(entry)
            else:
                with_init.append(entry)
        failures = len(self.errors)
        if len(with_init) == 1:
            await self._init_one(with_init[0])
        elif with_init:
            async with anyio.create_task_group() as tg:
                for entry in with_init:
                    tg.start_soon(self._init_one, entry)
        return len(self.errors) == failures

    async def _init_one(self, entry: Entry) -> None:
        self.logger.info("init starting", component=entry.name)
        started = time.perf_counter()
        entry.state = "initializing"
        try:
            with _bounded(entry.init_timeout) as scope:
                await call(entry.component.init, self._waker, f"{entry.name}.init")
        except anyio.get_cancelled_exc_class():
            entry.state = "registered"
            self.logger.info("init cancelled; not finalized", component=entry.name, ms=_ms(started))
            raise
        except Exception as exc:
            entry.state = "failed"
            self._record(ComponentError(entry.name, "init", exc))
            self._abandon_boot()
            return
        finally:
            entry.timings["init_ms"] = _ms(started)
        if scope.cancelled_caught:
            entry.state = "failed"
            self._record(ComponentTimeoutError(entry.name, "init", entry.init_timeout or 0))
            self._abandon_boot()
            return
        entry.state = "initialized"
        self._init_order.append(entry)
        self.logger.info("init finished", component=entry.name, ms=entry.timings["init_ms"])

    def _abandon_boot(self) -> None:
        """A failed init abandons boot: sibling inits still in flight get ``ABANDON_GRACE`` to finish.

        Those that finish are finalized; those that do not are cancelled (and
        not finalized), so a hanging sibling without ``init_timeout`` cannot
        hang the abandoned boot.
        """
        if self._boot_scope is not None:
            self._boot_scope.deadline = min(self._boot_scope.deadline, anyio.current_time() + ABANDON_GRACE)

    async def _start_group(self, group: list[Entry]) -> bool:
        processes = []
        cancellable = []
        for entry in group:
            entry.run = overridden(entry.component, "run")
            if entry.run is None:
                continue
            entry.run_is_async = is_async(entry.run)
            processes.append(entry)
            if overridden(entry.component, "stop") is None:
                cancellable.append(entry)
            else:
                entry.run_scope = anyio.CancelScope()
        if not processes and self.health.healthy:
            return True
        self._starting = len(processes)
        self._running += len(processes)
        for entry in processes:
            if entry.run_scope is not None:
                self._runs.start_soon(self._run_one, entry, name=f"nacelle run {entry.name}")
        if cancellable:
            # Processes without stop() are stopped by cancellation, all of a group at
            # once: one shared scope makes that one cancel() instead of one per process.
            host_scope = anyio.CancelScope()
            for entry in cancellable:
                entry.host_scope = host_scope
            self._runs.start_soon(self._host, host_scope, cancellable, name="nacelle runs")
        # The rule: the smallest start_timeout of the whole group, initializers
        # included (an initializer may register a health key the wait depends on).
        timeouts = [e.start_timeout for e in group if e.start_timeout is not None]
        limit = min(timeouts) if timeouts else None
        with _bounded(limit) as scope:
            while (self._starting or not self.health.healthy) and not self._stop_requested:
                await self._waker.changed()
        if scope.cancelled_caught:
            self._record(self._start_timeout(group, limit or 0))
            self.request_stop("start timeout")
            return False
        return not self._stop_requested

    def _start_timeout(self, group: list[Entry], limit: float) -> ComponentError:
        unhealthy = self.health.unhealthy()
        owners = list(dict.fromkeys(s.component or "app" for s in unhealthy)) or [e.name for e in group]
        keys = "; ".join(
            f"health key {s.key!r} (registered by {s.component or 'the app'})"
            + (f": {s.reason}" if s.reason else "")
            for s in unhealthy
        )
        detail = f"priority {group[0].options.priority} not healthy after {limit:g}s: {keys or 'runs not started'}"
        return ComponentTimeoutError(", ".join(owners), "start", limit, detail)

    async def _host(self, scope: anyio.CancelScope, entries: list[Entry]) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                for entry in entries:
                    tg.start_soon(self._run_one, entry, name=f"nacelle run {entry.name}")

    async def _run_one(self, entry: Entry) -> None:
        assert entry.run is not None
        self._starting -= 1
        if self._starting == 0:
            self._waker.notify()
        self.logger.info("run starting", component=entry.name)
        started = time.perf_counter()
        entry.state = "running"
        entry.timings["started_at"] = time.time()
        outcome = "cancelled"
        scope = entry.run_scope
        try:
            if scope is None:
                await (entry.run() if entry.run_is_async else call(entry.run, self._waker, f"{entry.name}.run"))
            else:
                with scope:
                    await call(entry.run, self._waker, f"{entry.name}.run")
                    outcome = "returned"
            outcome = "returned" if scope is None else outcome
        except Exception as exc:
            outcome = "failed"
            self._record(ComponentError(entry.name, "run", exc))
            self.request_stop(f"{entry.name}: run failed")
        finally:
            # What the process started ends with it: before its run counts as ended.
            await self._release(entry)
            entry.state = "failed" if outcome == "failed" else "stopped"
            entry.timings["run_ms"] = _ms(started)
            entry.finished = True
            self._running -= 1
            if entry.done is not None:
                entry.done.set()
            if entry.countdown is not None:
                entry.countdown.done_one()
            self._run_ended(entry, outcome, started)

    def _run_ended(self, entry: Entry, outcome: str, started: float) -> None:
        if outcome == "cancelled":
            if not entry.run_is_async:
                # A thread cannot be cancelled: the runner stops waiting, the function goes on.
                self.logger.warning(
                    "run abandoned: a plain def run() cannot be cancelled; give the process a stop()",
                    component=entry.name, ms=_ms(started),
                )
                return
            # Expected when stopping a process without stop(): debug; otherwise news.
            log = self.logger.debug if entry.stopping else self.logger.info
            log("run cancelled", component=entry.name, ms=_ms(started))
        elif outcome == "returned":
            if entry.stopping or self._stop_requested:
                self.logger.info("run finished", component=entry.name, ms=_ms(started))
            elif entry.options.silent_exit:
                self.logger.info("run finished; silent exit", component=entry.name, ms=_ms(started))
                if self._booted and self._running == 0:
                    self.request_stop("every process has exited")
            else:
                self.logger.info("run returned; shutting down", component=entry.name, ms=_ms(started))
                self.request_stop(f"{entry.name}: run returned")

    async def _wait_run(self, entry: Entry, deadline: float) -> bool:
        """Wait until ``entry``'s run has ended or ``deadline`` passed; whether it ended."""
        if not entry.finished:
            if entry.done is None:
                entry.done = anyio.Event()
            with anyio.CancelScope(deadline=deadline):
                await entry.done.wait()
        return entry.finished

    # -- unwind -------------------------------------------------------------------

    async def _stop_all(self) -> None:
        for group in reversed(self._groups):
            await self._stop_group(group)

    async def _stop_group(self, group: list[Entry]) -> None:
        """Ask every running process of a group to stop at once, then wait for the runs to end."""
        running = [e for e in group if e.run is not None and not e.finished]
        if not running:
            return
        started = anyio.current_time()
        stopped_at = time.perf_counter()
        countdown = _Countdown(len(running))
        stoppers = []
        for entry in running:
            entry.stopping = True
            entry.state = "stopping"
            entry.countdown = countdown
            stop = overridden(entry.component, "stop")
            if stop is None:
                # Stopping is cancelling: "stop finished" (info, with ms) says all there is.
                self.logger.debug("stop starting", component=entry.name)
                entry.cancel_run()
            else:
                self.logger.info("stop starting", component=entry.name)
                stoppers.append((entry, stop))
        if len(stoppers) == 1:
            await self._call_stop(*stoppers[0], started)
        elif stoppers:
            async with anyio.create_task_group() as tg:
                for entry, stop in stoppers:
                    tg.start_soon(self._call_stop, entry, stop, started)
        # One wait for the whole group, bounded by its earliest deadline; then each
        # straggler is waited for up to its own deadline.
        earliest = min(self._deadline(started, e.shutdown_timeout) for e in running)
        with anyio.CancelScope(deadline=earliest):
            await countdown.event.wait()
        for entry in running:
            if not entry.finished:
                await self._await_stopped(entry, started)
            entry.timings["stop_ms"] = _ms(stopped_at)
            self.logger.info("stop finished", component=entry.name, ms=entry.timings["stop_ms"])

    @staticmethod
    def _deadline(started: float, timeout: float | None) -> float:
        return math.inf if timeout is None else started + timeout

    async def _call_stop(self, entry: Entry, stop: Callable[[], Any], started: float) -> None:
        timeout = entry.shutdown_timeout
        try:
            with anyio.CancelScope(deadline=self._deadline(started, timeout)) as scope:
                await call(stop, self._waker, f"{entry.name}.stop")
        except Exception as exc:
            self._record(ComponentError(entry.name, "stop", exc))
            entry.cancel_run()
            return
        if scope.cancelled_caught:
            self._record(ComponentTimeoutError(
                entry.name, "stop", timeout or 0, f"stop() did not return within {timeout:g}s; run cancelled"
            ))
            entry.stop_timed_out = True  # one timeout, reported once
            entry.cancel_run()

    async def _await_stopped(self, entry: Entry, started: float) -> None:
        timeout = entry.shutdown_timeout
        if not await self._wait_run(entry, self._deadline(started, timeout)):
            if not entry.stop_timed_out:
                self._record(ComponentTimeoutError(
                    entry.name, "stop", timeout or 0, f"run() did not return within {timeout:g}s of stop(); cancelled"
                ))
            entry.cancel_run()
            if not await self._wait_run(entry, anyio.current_time() + CANCEL_GRACE):
                self.logger.warning("run ignored cancellation; abandoned", component=entry.name, grace=CANCEL_GRACE)

    async def _release(self, entry: Entry) -> None:
        """End what per-component services made for the component (its routines), within a bound.

        Shielded: it runs as a cancelled run unwinds, and must still happen.
        """
        if self.release is None:
            return
        try:
            ending = self.release(entry.name)
        except Exception as exc:
            self._record(ComponentError(entry.name, "release", exc))
            return
        if ending is None:  # nothing was made for it: no await, no scope
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE) as scope:
            try:
                await ending
            except Exception as exc:
                self._record(ComponentError(entry.name, "release", exc))
        if scope.cancelled_caught:
            self.logger.warning("routines ignored cancellation; abandoned", component=entry.name, grace=CANCEL_GRACE)

    async def _finalize_all(self) -> None:
        for entry in reversed(self._init_order):
            await self._finalize_one(entry)
            await self._release(entry)

    async def _finalize_one(self, entry: Entry) -> None:
        """Finalize one component within its bound (and the forced-shutdown budget)."""
        finalize = overridden(entry.component, "finalize")
        if finalize is None:
            if entry.state != "failed":
                entry.state = "finalized"
            return
        if anyio.current_time() >= self._forced_deadline:
            self._record(ComponentTimeoutError(
                entry.name, "finalize", FORCED_FINALIZE_BUDGET, "skipped: the forced shutdown budget was spent"
            ))
            return
        self.logger.info("finalize starting", component=entry.name)
        started = time.perf_counter()
        failed = entry.state == "failed"  # a failed run stays "failed" through a clean finalize
        entry.state = "failed" if failed else "finalizing"
        timeout = entry.finalize_timeout
        deadline = min(self._deadline(anyio.current_time(), timeout), self._forced_deadline)
        try:
            with anyio.CancelScope(deadline=deadline) as self._finalize_scope:
                await call(finalize, self._waker, f"{entry.name}.finalize")
        except Exception as exc:
            entry.state = "failed"
            self._record(ComponentError(entry.name, "finalize", exc))
            return
        finally:
            scope, self._finalize_scope = self._finalize_scope, None
            entry.timings["finalize_ms"] = _ms(started)
        if scope.cancelled_caught:
            entry.state = "failed"
            limit = min(timeout or math.inf, FORCED_FINALIZE_BUDGET if self._forced else math.inf)
            self._record(ComponentTimeoutError(entry.name, "finalize", limit))
            return
        entry.state = "failed" if failed else "finalized"
        self.logger.info("finalize finished", component=entry.name, ms=entry.timings["finalize_ms"])

