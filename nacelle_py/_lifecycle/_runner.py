"""The runner: composes the lifecycle's parts and runs one app through them, top to bottom.

For each priority, ascending: inject, ``init`` concurrently, start every
``run``, and wait until all health keys are healthy (bounded by the group's
smallest ``start_timeout``). Then supervise until a signal, a run that fails
or returns (unless its restart policy restarts it), or ``App.shutdown()``.
Unwind: ``stop`` by descending priority (concurrently within a group, each
``run`` bounded by its ``shutdown_timeout``), then ``finalize`` in exact
reverse order of successful ``init``. A second signal cancels what is left
and gives the finalizers one short shared budget. While it supervises, an
operator may ask for a reload (SIGHUP) or a dump (SIGUSR1); neither stops
anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from .._errors import ComponentError
from .._health import Health
from .._inject import Injector
from .._signals import DUMP_SIGNAL, RELOAD_SIGNAL
from ._boot import Boot
from ._context import Context
from ._dump import dump
from ._preflight import Preflight
from ._record import Entry
from ._reload import Reloader
from ._report import Errors, Phases
from ._restart import Strategy, Supervisor
from ._runs import Runs
from ._shutdown import Shutdown
from ._states import Phase
from ._unwind import Unwind

__all__ = ["Runner"]


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
        forget: Callable[[str], object] | None = None,
        strategy: Strategy = "one_for_one",
        reread: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self.entries = entries
        self.errors = errors
        self._handle_signals = handle_signals
        self._on_ready = on_ready
        self._phases = Phases(logger)
        by_name = {e.name: e for e in entries}
        record = Errors(errors, by_name, on_error)
        self._shutdown = Shutdown(
            app_name=app_name, logger=logger, record=record.record, tell=self._phases.tell, hard_exit=hard_exit
        )
        self._ctx = Context(
            app_name=app_name,
            entries=entries,
            by_name=by_name,
            injector=injector,
            health=health,
            logger=logger,
            errors=record,
            phases=self._phases,
            shutdown=self._shutdown,
            release=release,
            forget=forget,
        )
        self._unwind = Unwind(self._ctx)
        self._preflight = Preflight(self._ctx)
        self._runs = Runs(self._ctx)
        self._boot = Boot(self._ctx, self._runs)
        self._supervisor = Supervisor(self._ctx, self._boot, self._unwind, strategy)
        self._runs.on_exit = self._supervisor.on_exit
        self._reloader = Reloader(self._ctx, self._boot, reread)
        if RELOAD_SIGNAL is not None:
            self._shutdown.route(RELOAD_SIGNAL, lambda: self._reloader.request("signal SIGHUP"))
        if DUMP_SIGNAL is not None:
            self._shutdown.route(DUMP_SIGNAL, lambda: self._dump("signal SIGUSR1"))
        self._graceful = anyio.CancelScope()

    @property
    def phase(self) -> Phase:
        """The app's phase: starting, running (supervising), stopping, stopped."""
        return self._phases.phase

    def observe(self, observer: Callable[[str, str], None]) -> None:
        """Call ``observer(event, detail)`` on the loop at each phase change.

        Events are the phases (``PHASES``): ``"starting"`` (as each priority
        group begins; detail says which), ``"running"`` (every group is up and
        healthy), ``"stopping"`` (the unwind begins; detail is the reason) and
        ``"stopped"``. For readiness reporting (the ops endpoint, systemd); an
        observer that raises is logged and ignored.
        """
        self._phases.observe(observer)

    def request_stop(self, reason: str) -> None:
        """Begin a graceful unwind (idempotent); safe from any thread."""
        self._shutdown.request(reason)

    def force_stop(self, reason: str) -> None:
        """Force the shutdown, as a second signal does (recorded as an error); on the loop thread only."""
        self._shutdown.force(reason)

    def request_reload(self, reason: str) -> None:
        """Ask for a reload (see ``_reload``); safe from any thread; ignored once the run is over."""
        if not self._shutdown.closed:
            self._ctx.waker.on_loop(lambda: self._reloader.request(reason))

    def request_dump(self, reason: str) -> None:
        """Log the dump (see ``_dump``) on the loop; safe from any thread; ignored once the run is over."""
        if not self._shutdown.closed:
            self._ctx.waker.on_loop(lambda: self._dump(reason))

    def _dump(self, reason: str) -> None:
        try:
            dump(self._ctx, reason)
        except Exception as exc:  # a dump must never take the app down
            self._ctx.logger.error("dump failed", reason=reason, exc_info=exc)

    # -- the whole run ------------------------------------------------------------------

    async def run(self, *, stop_already_requested: bool = False) -> None:
        """Boot, supervise, unwind; returns when everything that started has ended."""
        ctx = self._ctx
        unsubscribe = ctx.health.subscribe(lambda _c: ctx.waker.notify())
        try:
            async with anyio.create_task_group() as root:
                root.start_soon(ctx.waker.pump)
                await root.start(self._runs.host)
                await root.start(self._supervisor.work)
                await root.start(self._reloader.work)
                if self._handle_signals:
                    self._shutdown.install_signals()
                if stop_already_requested:
                    self.request_stop("shutdown() called before boot")
                self._shutdown.cancel_on_force(self._graceful)
                with self._graceful:
                    if await self._preflight.take(ctx.entries) and await self._boot_groups():
                        await self._supervise()
                    else:
                        self._shutdown.boot_failed()
                    await self._reloader.wind_down()  # a reload in progress ends (a stop bounds it) first
                    await self._supervisor.wind_down()  # a restart in progress finishes its stop first
                    await self._unwind.stop(ctx.entries)
                self._runs.cancel_all()  # anything left runs only after a forced shutdown
                unclaimed = self._preflight.pending()  # what a preflight took that no init took over
                await self._unwind.finalize()
                await self._preflight.release(unclaimed)
                await self._await_runs_closed()
                root.cancel_scope.cancel()
        finally:
            self._shutdown.close(signals=self._handle_signals)
            unsubscribe()
            self._phases.tell("stopped")

    async def _boot_groups(self) -> bool:
        """Bring every priority group up, ascending; whether all came up."""
        ctx = self._ctx
        for group in ctx.groups:
            if ctx.stopping:
                return False
            priority = group[0].options.priority
            started = anyio.current_time()
            plural = "" if len(group) == 1 else "s"
            self._phases.tell("starting", f"starting priority {priority} ({len(group)} component{plural})")
            if not await self._boot.group(group, fail=self._boot_failed, on_timeout=self._supervisor.on_boot_timeout):
                return False
            if ctx.stopping:
                return False
            ctx.logger.info(
                "priority group started",
                priority=priority,
                components=len(group),
                ms=round((anyio.current_time() - started) * 1000, 3),
            )
        return True

    def _boot_failed(self, entry: Entry, error: ComponentError) -> None:
        """At boot an injection or init failure is the app's failure, whatever the restart policy."""
        self._ctx.record(error)

    async def _supervise(self) -> None:
        """Everything is up: tell the observers and the hooks, then wait for a stop request."""
        ctx = self._ctx
        ctx.booted = True
        ctx.logger.info("app healthy; supervising")
        self._phases.tell("running")
        self._ready()
        ctx.waker.notify()  # a reload requested during boot may go ahead now
        self._supervisor.check_running("no process is running")
        while not ctx.stopping:
            await ctx.waker.changed()

    def _ready(self) -> None:
        for hook in self._on_ready:
            try:
                hook()
            except Exception as exc:
                self._ctx.record(ComponentError(self._ctx.app_name, "ready", exc))
                self.request_stop("on_ready hook failed")

    async def _await_runs_closed(self) -> None:
        """Wait (bounded) for the last runs to end; a run that ignores cancellation is an error."""
        if await self._runs.closed():
            return
        ctx = self._ctx
        for entry in ctx.entries:
            if entry.handle is not None and not entry.handle.finished:
                ctx.record(ComponentError(entry.name, "stop", None, "run() ignored cancellation; abandoned"))
        # Under boot() the process is ours: end it rather than hang. Embedded in
        # serve(), structured concurrency leaves no choice but to wait for the run.
        self._shutdown.arm_watchdog(0.0, "a run ignored cancellation")
        ctx.logger.error("waiting for runs that ignore cancellation", hard_exit=self._shutdown.hard_exit)
