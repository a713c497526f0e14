"""Worker: a process that calls ``tick()`` on an interval until it is stopped."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ClassVar, NamedTuple

import anyio
import structlog
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .._calls import call, is_async
from .._components import Process
from .._config import Config
from .._errors import RegistrationError
from .._health import Health, HealthComponent
from .._inject import Inject
from .._metric import Metric
from .._validate import positive, positive_setting
from .._waker import Waker

__all__ = ["Worker", "WorkerSettings", "WorkerStats"]

Tick = Callable[[], "Awaitable[None] | None"]


class WorkerSettings(BaseSettings):
    """Worker: the deployment's choices, which override the code's when set."""

    model_config = SettingsConfigDict(env_prefix="WORKER_")

    tick_interval: float | None = Field(
        None, description="Seconds between ticks of every Worker (overrides the code's interval)."
    )
    strict_clock: bool | None = Field(
        None, description="Count the interval from each tick's start (true) or its end (false)."
    )

    @field_validator("tick_interval")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        return positive_setting(value)


class WorkerStats(NamedTuple):
    """A worker's counters: ticks finished, tick errors tolerated, the last tick's seconds."""

    ticks: Annotated[int, Metric.counter("Ticks the worker finished (a restart starts again from 0).")]
    errors: Annotated[int, Metric.counter("Tick errors the worker tolerated (tolerate_errors=True).")]
    last_duration: Annotated[float, Metric.gauge("Seconds the worker's latest tick took.", unit="seconds")]


class Worker(Process):
    """Calls ``tick()`` at once, then every ``interval`` seconds, until stopped.

    Pass ``tick`` (an ``async def`` or a plain function, run on a thread), or
    subclass and override ``tick``. The interval is counted from the end of a
    tick, or with ``strict=True`` from its start (the tick's duration is
    subtracted; a tick longer than the interval is followed at once by the
    next). ``stop()`` cancels a tick in progress (a plain one is abandoned:
    nothing can interrupt a thread). A tick's error ends ``run`` with it, the
    process's error, unless ``tolerate_errors``: then it is logged, counted,
    and the health key (the component's name) is unhealthy until a tick
    succeeds. ``WORKER_TICK_INTERVAL`` and ``WORKER_STRICT_CLOCK`` override
    the code's choices without a code change.
    """

    health_keys: ClassVar[tuple[str, ...] | None] = ("{name}",)

    health: Health | None = Inject("health", optional=True)
    logger: Any = Inject("logger", optional=True)
    settings: WorkerSettings = Inject()

    def __init__(
        self, tick: Tick | None = None, *, interval: float = 1.0, strict: bool = False, tolerate_errors: bool = False
    ) -> None:
        if tick is not None and not callable(tick):
            raise RegistrationError(f"Worker: tick must be callable, got {tick!r}")
        if tick is None and type(self).tick is Worker.tick:
            raise RegistrationError("Worker: pass tick=..., or subclass Worker and override tick()")
        for option, value in (("strict", strict), ("tolerate_errors", tolerate_errors)):
            if not isinstance(value, bool):
                raise RegistrationError(f"Worker: {option} must be True or False, got {value!r}")
        self._tick: Tick = tick if tick is not None else self.tick
        self._code_interval: float = positive("Worker", "interval", interval)
        self._code_strict = strict
        self.interval = self._code_interval
        self.strict = strict
        self.tolerate_errors = tolerate_errors
        self._ticks = 0
        self._errors = 0
        self._last = 0.0
        self._stopping: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._health: HealthComponent | None = None

    async def tick(self) -> None:
        """One unit of work; override it in a subclass (or pass ``tick=`` to the constructor)."""

    def stats(self) -> WorkerStats:
        """Ticks finished, tick errors tolerated, and the last tick's duration in seconds."""
        return WorkerStats(self._ticks, self._errors, self._last)

    async def init(self) -> None:
        """Under an App: register the health key and apply the settings."""
        health = vars(self).get("health")
        if health is not None:
            self._health = health.register(health.owner or "worker")
        self._apply(vars(self).get("settings"))

    async def run(self) -> None:
        """Tick until ``stop()``; raise the first tick error unless ``tolerate_errors``."""
        if self._stopping is not None:
            raise RuntimeError("Worker.run: the worker is already running")
        if "settings" not in vars(self):  # standalone: the same settings, from the environment
            self._apply(Config().load(WorkerSettings))
        log = vars(self).get("logger") or structlog.get_logger().bind(component="worker")
        stopping = self._stopping = anyio.Event()
        plain = not is_async(self._tick)
        waker = Waker() if plain else None
        if self._health is not None:
            self._health.update(True)
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                if waker is not None:
                    tg.start_soon(waker.pump)
                try:
                    await self._loop(stopping, log, waker)
                except Exception as exc:  # raised below as itself, not in the task group's ExceptionGroup
                    error = exc
                tg.cancel_scope.cancel()
        finally:
            self._stopping = None
            self._scope = None
            if waker is not None:
                waker.close()
            if self._health is not None:
                self._health.update(False)
        if error is not None:
            raise error

    async def _loop(self, stopping: anyio.Event, log: Any, waker: Waker | None) -> None:
        while not stopping.is_set():
            started = time.perf_counter()
            with anyio.CancelScope() as self._scope:
                await self._one(log, waker)
            self._scope = None
            if stopping.is_set():
                return
            wait = self.interval - (time.perf_counter() - started) if self.strict else self.interval
            with anyio.move_on_after(max(0.0, wait)):
                await stopping.wait()

    async def stop(self) -> None:
        """Cancel the tick in progress and end ``run``."""
        stopping = self._stopping
        if stopping is not None:
            stopping.set()
            if self._scope is not None:
                self._scope.cancel()

    async def _one(self, log: Any, waker: Waker | None) -> None:
        started = time.perf_counter()
        try:
            if waker is None:
                await self._tick()  # type: ignore[misc]  # async: checked by is_async
            else:
                await call(self._tick, waker, "worker tick")
        except Exception as exc:
            if not self.tolerate_errors:
                raise
            self._errors += 1
            log.error("tick failed", errors=self._errors, exc_info=exc)
            if self._health is not None:
                self._health.update(False)
            return
        finally:
            self._last = time.perf_counter() - started
        self._ticks += 1
        if self._health is not None and self._errors:
            self._health.update(True)

    def _apply(self, settings: WorkerSettings | None) -> None:
        """The constructor's values, overridden by the settings that are set."""
        self.interval, self.strict = self._code_interval, self._code_strict
        if settings is None:
            return
        if settings.tick_interval is not None:
            self.interval = settings.tick_interval
        if settings.strict_clock is not None:
            self.strict = settings.strict_clock
