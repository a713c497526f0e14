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
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._calls import call
from ._components import Initializer, Options, overridden
from ._errors import ComponentError, ComponentTimeoutError, InjectionError
from ._health import Health
from ._inject import Injector
from ._waker import Waker

__all__ = ["Entry", "Runner"]

FORCED_FINALIZE_BUDGET = 0.5
"""Seconds the finalizers share after a second signal, so the process exits within a second."""
DUPLICATE_SIGNAL_WINDOW = 0.05
"""The same signal again within this many seconds is one request: a process-group kill through
``make`` (which forwards SIGTERM to its child) delivers SIGTERM twice."""
CANCEL_GRACE = 1.0
"""Seconds a run gets to unwind after it is cancelled before the runner stops waiting for it."""


@dataclass(eq=False)
class Entry:
    """One registered component and its state in this run."""

    component: Initializer
    options: Options
    init_timeout: float | None
    start_timeout: float | None
    shutdown_timeout: float | None
    finalize_timeout: float | None
    logger: Any = None
    run: Callable[[], Any] | None = None
    run_scope: anyio.CancelScope | None = None
    run_done: anyio.Event | None = None
    run_returned: bool = False
    stopping: bool = False

    @property
    def name(self) -> str:
        return self.options.name


def _bounded(seconds: float | None) -> anyio.CancelScope:
    return anyio.move_on_after(math.inf if seconds is None else seconds)


def _ms(start: float) -> float:
    return round((anyio.current_time() - start) * 1000, 3)


@dataclass
class Runner:
    """Runs one app's entries through the whole lifecycle; ``errors`` collects every failure."""

    app_name: str
    entries: Sequence[Entry]
    injector: Injector
    health: Health
    logger: Any
    handle_signals: bool
    errors: list[ComponentError] = field(default_factory=list)
    on_error: Callable[[ComponentError], None] | None = None

    def __post_init__(self) -> None:
        priorities = sorted({e.options.priority for e in self.entries})
        self._groups = [[e for e in self.entries if e.options.priority == p] for p in priorities]
        self._init_order: list[Entry] = []
        self._stop_requested = False
        self._stop_reason = ""
        self._forced = False
        self._thread_shutdown = False
        self._starting = 0
        self._boot_scope: anyio.CancelScope | None = None
        self._graceful = anyio.CancelScope()
        self._finalize_scope: anyio.CancelScope | None = None
        self._forced_deadline = math.inf
        self._waker = Waker(self._on_wake)

    # -- requests -----------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Begin a graceful unwind (idempotent); safe from any thread."""
        if not self._waker.in_loop_thread():
            self._thread_shutdown = True
            self._waker.notify()
            return
        if self._stop_requested:
            return
        self._stop_requested = True
        self._stop_reason = reason
        self.logger.info("shutdown requested", reason=reason)
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
        for entry in self.entries:
            if entry.run_scope is not None:
                entry.run_scope.cancel()
        if self._finalize_scope is not None:
            self._finalize_scope.deadline = min(self._finalize_scope.deadline, self._forced_deadline)

    def _on_wake(self) -> None:
        if self._thread_shutdown and not self._stop_requested:
            self.request_stop("shutdown() called")

    def _record(self, error: ComponentError) -> None:
        self.errors.append(error)
        if self.on_error is not None:
            self.on_error(error)

    # -- the whole run ------------------------------------------------------------

    async def run(self, *, stop_already_requested: bool = False) -> None:
        """Boot, supervise, unwind; returns when everything that started has ended."""
        unsubscribe = self.health.subscribe(lambda _c: self._waker.notify())
        try:
            async with anyio.create_task_group() as root:
                root.start_soon(self._waker.pump)
                if self.handle_signals:
                    await root.start(self._watch_signals)
                if stop_already_requested:
                    self.request_stop("shutdown() called before boot")
                async with anyio.create_task_group() as runs:
                    self._runs = runs
                    with self._graceful:
                        if await self._boot():
                            self.logger.info("app healthy; supervising")
                            while not self._stop_requested:
                                await self._waker.changed()
                        await self._stop_all()
                    for entry in self.entries:  # only left after a forced shutdown
                        if entry.run_scope is not None:
                            entry.run_scope.cancel()
                await self._finalize_all()
                root.cancel_scope.cancel()
        finally:
            unsubscribe()
            self._waker.close()

    async def _watch_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            first: tuple[int, float] | None = None
            async for signum in signals:
                name = signal.Signals(signum).name
                now = anyio.current_time()
                if first is None:
                    first = (signum, now)
                    self.logger.info("signal received; shutting down gracefully", signal=name)
                    self.request_stop(f"signal {name}")
                elif signum == first[0] and now - first[1] < DUPLICATE_SIGNAL_WINDOW:
                    self.logger.debug("duplicate signal ignored", signal=name)
                elif not self._forced:
                    self.logger.warning("second signal; forcing shutdown", signal=name)
                    self.force(f"second signal {name}")

    # -- boot ---------------------------------------------------------------------

    async def _boot(self) -> bool:
        for group in self._groups:
            if self._stop_requested:
                return False
            priority = group[0].options.priority
            started = anyio.current_time()
            if not self._inject(group):
                return False
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
        log = entry.logger
        log.info("init starting")
        started = anyio.current_time()
        try:
            with _bounded(entry.init_timeout) as scope:
                await call(entry.component.init, self._waker, f"{entry.name}.init")
        except anyio.get_cancelled_exc_class():
            log.info("init cancelled; not finalized", ms=_ms(started))
            raise
        except Exception as exc:
            self._record(ComponentError(entry.name, "init", exc))
            return
        if scope.cancelled_caught:
            self._record(ComponentTimeoutError(entry.name, "init", entry.init_timeout or 0))
            return
        self._init_order.append(entry)
        log.info("init finished", ms=_ms(started))

    async def _start_group(self, group: list[Entry]) -> bool:
        processes = []
        for entry in group:
            entry.run = overridden(entry.component, "run")
            if entry.run is not None:
                entry.run_scope = anyio.CancelScope()
                entry.run_done = anyio.Event()
                processes.append(entry)
        if not processes and self.health.healthy:
            return True
        self._starting = len(processes)
        for entry in processes:
            self._runs.start_soon(self._run_one, entry, name=f"nacelle run {entry.name}")
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

    async def _run_one(self, entry: Entry) -> None:
        assert entry.run is not None and entry.run_scope is not None and entry.run_done is not None
        self._starting -= 1
        if self._starting == 0:
            self._waker.notify()
        log = entry.logger
        log.info("run starting")
        started = anyio.current_time()
        try:
            with entry.run_scope:
                await call(entry.run, self._waker, f"{entry.name}.run")
                entry.run_returned = True
        except Exception as exc:
            self._record(ComponentError(entry.name, "run", exc))
            self.request_stop(f"{entry.name}: run failed")
        finally:
            entry.run_done.set()
        if not entry.run_returned:
            log.info("run cancelled", ms=_ms(started))
        elif entry.stopping or self._stop_requested:
            log.info("run finished", ms=_ms(started))
        elif entry.options.silent_exit:
            log.info("run finished; silent exit", ms=_ms(started))
        else:
            log.info("run returned; shutting down", ms=_ms(started))
            self.request_stop(f"{entry.name}: run returned")

    # -- unwind -------------------------------------------------------------------

    async def _stop_all(self) -> None:
        for group in reversed(self._groups):
            running = [e for e in group if e.run_done is not None and not e.run_done.is_set()]
            if len(running) == 1:
                await self._stop_one(running[0])
            elif running:
                async with anyio.create_task_group() as tg:
                    for entry in running:
                        tg.start_soon(self._stop_one, entry)

    async def _stop_one(self, entry: Entry) -> None:
        assert entry.run_scope is not None and entry.run_done is not None
        entry.stopping = True
        log = entry.logger
        log.info("stop starting")
        started = anyio.current_time()
        timeout = entry.shutdown_timeout
        deadline = math.inf if timeout is None else started + timeout
        stop = overridden(entry.component, "stop")
        if stop is None:
            entry.run_scope.cancel()
        else:
            try:
                with anyio.CancelScope(deadline=deadline) as scope:
                    await call(stop, self._waker, f"{entry.name}.stop")
            except Exception as exc:
                self._record(ComponentError(entry.name, "stop", exc))
                entry.run_scope.cancel()
            else:
                if scope.cancelled_caught:
                    self._record(ComponentTimeoutError(
                        entry.name, "stop", timeout or 0, f"stop() did not return within {timeout:g}s; run cancelled"
                    ))
                    entry.run_scope.cancel()
        with anyio.CancelScope(deadline=deadline) as scope:
            await entry.run_done.wait()
        if scope.cancelled_caught:
            self._record(ComponentTimeoutError(
                entry.name, "stop", timeout or 0, f"run() did not return within {timeout:g}s of stop(); cancelled"
            ))
            entry.run_scope.cancel()
            with anyio.move_on_after(CANCEL_GRACE):
                await entry.run_done.wait()
        log.info("stop finished", ms=_ms(started))

    async def _finalize_all(self) -> None:
        for entry in reversed(self._init_order):
            finalize = overridden(entry.component, "finalize")
            if finalize is None:
                continue
            log = entry.logger
            if anyio.current_time() >= self._forced_deadline:
                log.warning("finalize skipped: forced shutdown budget spent")
                continue
            log.info("finalize starting")
            started = anyio.current_time()
            timeout = entry.finalize_timeout
            deadline = min(math.inf if timeout is None else started + timeout, self._forced_deadline)
            try:
                with anyio.CancelScope(deadline=deadline) as self._finalize_scope:
                    await call(finalize, self._waker, f"{entry.name}.finalize")
            except Exception as exc:
                self._record(ComponentError(entry.name, "finalize", exc))
                continue
            finally:
                scope, self._finalize_scope = self._finalize_scope, None
            if scope.cancelled_caught:
                limit = min(timeout or math.inf, FORCED_FINALIZE_BUDGET if self._forced else math.inf)
                self._record(ComponentTimeoutError(entry.name, "finalize", limit))
                continue
            log.info("finalize finished", ms=_ms(started))

