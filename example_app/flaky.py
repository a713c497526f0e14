"""A process that crashes on demand, to show restart policies.

``Flaky`` counts ticks (one a second, logged at debug) and does nothing else
until asked to crash: ``POST /flaky/crash`` on the API makes its ``run``
raise, and ``EXAMPLE_FLAKY_CRASH_EVERY=<seconds>`` makes every run raise on
its own after that long (0, the default, never). ``build_app`` registers it
with ``restart="on_failure"``: a failed run is finalized and started again
after an exponential backoff, each restart logged as a ``restarting
component`` warning and counted in ``nacelle_component_restarts_total``;
more than ``EXAMPLE_FLAKY_MAX_RESTARTS`` restarts within
``EXAMPLE_FLAKY_RESTART_WINDOW`` seconds escalate, and the app stops with
status 1. Left alone (as ``make run`` leaves it) it never crashes.
"""

from __future__ import annotations

import math

import anyio
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from structlog.typing import FilteringBoundLogger

from nacelle_py import Inject, Process

__all__ = ["Flaky", "FlakyCrash", "FlakySettings"]

TICK = 1.0
"""Seconds between two ticks."""


class FlakySettings(BaseSettings):
    """When the flaky process crashes by itself, and how many restarts the app puts up with."""

    model_config = SettingsConfigDict(env_prefix="FLAKY_")

    crash_every: float = Field(
        0.0, ge=0, description="Seconds after which each run of the flaky process crashes by itself; 0: never."
    )
    max_restarts: int = Field(
        5, ge=0, description="Restarts of the flaky process allowed within the window; one more stops the app."
    )
    restart_window: float = Field(
        60.0, gt=0, description="Seconds over which the flaky process's restarts are counted."
    )


class FlakyCrash(RuntimeError):
    """The crash: raised from ``run`` and left uncaught, so that the run fails."""


class Flaky(Process):
    """Ticks until stopped, and crashes when told to (``crash()``) or every ``crash_every`` seconds."""

    health_keys = ()  # none: healthy once its run has begun

    settings: FlakySettings = Inject()
    logger: FilteringBoundLogger = Inject("logger")

    def __init__(self) -> None:
        self.runs = 0  # runs started, the restarted ones included
        self._running = False
        self._crash_reason: str | None = None
        self._stopping = False

    async def init(self) -> None:
        # Each run (a restart runs init again) starts with a fresh event, made on the loop thread.
        self._wake = anyio.Event()
        self._crash_reason = None
        self._stopping = False

    async def run(self) -> None:
        self.runs += 1
        run = self.runs
        every = self.settings.crash_every
        now = anyio.current_time()
        crash_at = now + every if every else math.inf
        next_tick = now + TICK
        ticks = 0
        self._running = True
        self.logger.debug("flaky running", run=run, crash_every=every)
        try:
            while True:
                deadline = min(next_tick, crash_at)
                with anyio.CancelScope(deadline=deadline) as sleep:
                    await self._wake.wait()  # set by crash() and stop()
                if self._crash_reason is not None:
                    raise FlakyCrash(f"{self._crash_reason} (run {run}, after {ticks} ticks)")
                if self._stopping:
                    break
                if sleep.cancelled_caught and deadline == crash_at:
                    raise FlakyCrash(f"crashed by itself after {every:g}s (EXAMPLE_FLAKY_CRASH_EVERY; run {run})")
                ticks += 1
                next_tick += TICK
                self.logger.debug("flaky tick", run=run, tick=ticks)
        finally:
            self._running = False
        self.logger.debug("flaky stopped", run=run, ticks=ticks)

    def crash(self, reason: str) -> bool:
        """Make the current run raise ``FlakyCrash(reason)``; False if no run is going on (or it already crashes).

        Call it on the event loop's thread (the API's handlers run there).
        """
        if not self._running or self._stopping or self._crash_reason is not None:
            return False
        self._crash_reason = reason
        self._wake.set()
        return True

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
