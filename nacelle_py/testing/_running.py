"""``running(app)``: serve an app for the length of an ``async with`` block, on asyncio or trio.

Entering boots the app to healthy (every priority group up, the ``on_ready``
hooks run) or raises ``BootError`` once what started has unwound. Leaving
asks the app to shut down and waits for the unwind; an exit status of 1, or
an unwind that overran, raises ``ExitError``, unless the block raised: then
its exception wins and carries what went wrong as a note.

The app is served in a task of its own under a shielded scope: a
cancellation of the test (a ``fail_after`` around the block, say) reaches
the body, and the app still unwinds gracefully instead of being cut off
mid-flight. The shield is dropped only as the last resort, once a forced
shutdown has not ended the app either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from .._app import App
from .._validate import positive
from ._access import check_app, force_stop, phase, quiet_signals, started, still_going
from ._errors import BootError, ExitError, listing
from ._handle import RunningApp

__all__ = ["DEFAULT_TIMEOUT", "FORCED_GRACE", "running"]

DEFAULT_TIMEOUT = 30.0
"""Seconds ``running()`` gives the boot to become healthy, and again the unwind to finish."""
FORCED_GRACE = 2.0
"""Seconds an overrunning unwind gets once forced (the finalizers share half a second of it), and again
once the serving task is cancelled, before ``running()`` stops waiting for it."""


@asynccontextmanager
async def running(app: App, *, timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[RunningApp]:
    """Serve ``app`` for the block: booted to healthy on entry, unwound on exit; yields a ``RunningApp``.

    Works on asyncio and trio, and never installs signal handlers (whatever
    ``handle_signals`` the app was built with). ``timeout`` (seconds) bounds
    the boot (not healthy in time: the app is shut down and ``BootError``
    raised) and, separately, the unwind (overrun: the shutdown is forced,
    as a second signal would, and ``ExitError`` raised). A boot that fails
    raises ``BootError`` with ``app.errors``; leaving the block with an
    exit status of 1 raises ``ExitError``. If the block raises, the app is
    unwound all the same and the block's exception propagates, with the
    unwind's errors attached as a note.
    """
    app = check_app(app, "running()")
    limit: float = positive("running()", "timeout", timeout)
    if started(app):
        raise RuntimeError(
            f"running(): app {app.name!r} has already served (an App serves once); build a new App for each test"
        )
    session = _Session(app, limit)
    body_error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.serve, name=f"nacelle_py.testing.running({app.name!r})")
        try:
            if await session.boot():
                try:
                    yield session.handle
                except BaseException as exc:  # whatever the body raised is raised again, below
                    body_error = exc
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled test still unwinds its app
                await session.unwind()
    if body_error is not None:
        session.attach(body_error)
        raise body_error
    session.check()


class _Session:
    """One ``running()`` call: the serving task, the boot wait and the unwind."""

    def __init__(self, app: App, timeout: float) -> None:
        self.app = app
        self.timeout = timeout
        self.handle = RunningApp(app, timeout)
        self._settled = anyio.Event()  # healthy, or serve() returned
        self._serving = anyio.CancelScope(shield=True)
        self._healthy = False  # set by the ready hook: healthy without an error
        self._booted = False  # boot() said so: the body ran
        self._boot_waiting: str | None = None  # what held the boot up when it timed out
        self._unwind_left: list[str] | None = None  # what was still going when the unwind overran
        quiet_signals(app)
        app.on_ready(self._on_ready)  # after the app's own hooks: one that fails has recorded its error

    async def serve(self) -> None:
        status: int | None = None
        try:
            with self._serving:
                status = await self.app.serve()
        finally:
            self.handle._end(status)
            self._settled.set()

    def _on_ready(self) -> None:
        self._healthy = not self.app.errors
        self.handle._ready()
        self._settled.set()

    @property
    def _ended(self) -> bool:
        return self.handle._ended.is_set()

    async def boot(self) -> bool:
        """Wait (bounded) until the app is healthy; whether it booted without an error."""
        with anyio.move_on_after(self.timeout):
            await self._settled.wait()
        if not self._settled.is_set():
            self._boot_waiting = self._holding_up()
        self._booted = self._settled.is_set() and self._healthy
        return self._booted

    def _holding_up(self) -> str:
        keys = [
            f"health key {s.key!r} (registered by {s.component or 'the app'})" + (f": {s.reason}" if s.reason else "")
            for s in self.app.health.unhealthy()
        ]
        busy = [
            f"{name} ({state})" for name, state in self.handle.states.items() if state in ("initializing", "restarting")
        ]
        parts = [f"phase {phase(self.app)}"]
        if keys:
            parts.append("waiting on " + "; ".join(keys))
        if busy:
            parts.append("busy: " + ", ".join(busy))
        return "; ".join(parts)

    async def unwind(self) -> None:
        """Shut the app down and wait for it: ``timeout``, then forced, then cancelled (each bounded)."""
        if not self._ended:
            self.app.shutdown()
            await self._wait(self.timeout)
        if self._ended:
            return
        self._unwind_left = still_going(self.app)
        force_stop(self.app, f"running(): the unwind overran timeout={self.timeout:g}s")
        await self._wait(FORCED_GRACE)
        if not self._ended:
            self._serving.cancel()
            await self._wait(FORCED_GRACE)

    async def _wait(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self.handle._ended.wait()

    # -- what the test is told -----------------------------------------------------------

    def check(self) -> None:
        """Raise what the outcome calls for: ``BootError``, ``ExitError``, or nothing."""
        if not self._booted:
            raise self._boot_error()
        if self._exit_failed():
            raise self._exit_error()

    def attach(self, error: BaseException) -> None:
        """Note on the block's own exception what went wrong as the app unwound after it."""
        if self._booted and self._exit_failed() and not isinstance(error, anyio.get_cancelled_exc_class()):
            error.add_note(f"(raised inside running(); then, as the app unwound: {self._exit_error()})")

    def _exit_failed(self) -> bool:
        return self._unwind_left is not None or self.handle.status != 0

    def _boot_error(self) -> BootError:
        name, errors, status = self.app.name, self.app.errors, self.handle.status
        if self._boot_waiting is not None:
            message = (
                f"app {name!r} was not healthy within {self.timeout:g}s (running(timeout=...)): "
                f"{self._boot_waiting}; as it unwound, {listing(errors)}"
            )
        elif errors:
            message = f"app {name!r} did not boot (status {status}): {listing(errors)}"
        else:
            message = (
                f"app {name!r} stopped before it was healthy, without an error (status {status}): "
                "a shutdown was requested during boot"
            )
        return BootError(message, app=name, errors=errors, status=status, timed_out=self._boot_waiting is not None)

    def _exit_error(self) -> ExitError:
        name, errors, status = self.app.name, self.app.errors, self.handle.status
        if self._unwind_left is not None:
            left = ", ".join(self._unwind_left) or "nothing it could name"
            how = "forced" if status is not None else "forced, then abandoned: serve() never returned"
            message = (
                f"app {name!r} did not unwind within {self.timeout:g}s (running(timeout=...)); not unwound yet: {left}; "
                f"the shutdown was {how}; {listing(errors)}"
            )
        else:
            message = f"app {name!r} exited with status {status}: {listing(errors)}"
        return ExitError(message, app=name, errors=errors, status=status, timed_out=self._unwind_left is not None)
