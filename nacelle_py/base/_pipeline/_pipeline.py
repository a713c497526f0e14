"""Pipeline: a tree of stages run by a selectable engine, as an ordinary Process or standalone."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, NamedTuple

import anyio
import structlog
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..._components import Process
from ..._config import Config
from ..._errors import RegistrationError
from ..._extras import require
from ..._health import Health, HealthComponent
from ..._inject import Inject
from ..._metric import Metric
from ..._validate import positive, positive_setting
from .._redis._settings import RedisSettings
from ._engine import Engine
from ._parallel import ParallelEngine
from ._placement import Placement, parse_stages
from ._serial import SerialEngine
from ._stage import Node, Stage, build

__all__ = ["ENGINES", "Pipeline", "PipelineError", "PipelineSettings", "StageStats"]

ENGINES: tuple[str, ...] = ("serial", "parallel", "worker-based")
"""The engines by name; every one passes ``tests/base/test_pipeline_engines.py``."""


def engine_class_of(name: str) -> type[Engine]:
    """The engine called ``name`` (the worker-based one needs the ``redis`` extra)."""
    if name == "serial":
        return SerialEngine
    if name == "parallel":
        return ParallelEngine
    require("coredis", "redis", "Pipeline(engine='worker-based')")
    from ._worker_based import WorkerBasedEngine

    return WorkerBasedEngine


class PipelineSettings(BaseSettings):
    """Pipeline: the deployment's choices, which override the code's when set."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_")

    engine: str | None = Field(
        None, description=f"Engine that runs every pipeline: {', '.join(ENGINES)} (overrides the code's choice)."
    )
    shutdown_timeout: float | None = Field(
        None, description="Seconds stop() lets in-flight messages drain (overrides the code's choice)."
    )
    stages: str | None = Field(
        None, description="Worker-based engine: the stages this replica runs, comma-separated (default: all)."
    )
    namespace: str | None = Field(
        None,
        description="Worker-based engine: the prefix of the pipeline's Redis keys (default: nacelle:<app>:<name>).",
    )
    lease: float | None = Field(
        None, description="Worker-based engine: seconds a replica holds a message unrenewed before others reclaim it."
    )
    max_deliveries: int | None = Field(
        None, description="Worker-based engine: deliveries of a message before it is dead-lettered."
    )

    @field_validator("engine", mode="before")
    @classmethod
    def _known(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in ENGINES:
                raise ValueError(f"unknown engine {value!r}; use one of: {', '.join(ENGINES)}")
        return value

    @field_validator("shutdown_timeout", "lease")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        return positive_setting(value)

    @field_validator("max_deliveries")
    @classmethod
    def _count(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be a whole number of deliveries, 1 or more")
        return value

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: str | None) -> str | None:
        if value is not None:
            parse_stages(value)  # raises ValueError naming what is wrong
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError("must be a non-empty prefix without spaces, e.g. myapp:orders")
        return value


class PipelineError(RuntimeError):
    """A stage raised: the pipeline stopped. Names the stage and the message it failed on.

    ``stage`` is the stage's name, ``index`` the 0-based index of the message on
    that stage's input (of the first message of a batch; ``None`` for a root),
    ``error`` the exception it raised (also the ``__cause__``).
    """

    def __init__(self, stage: str, index: int | None, error: BaseException, emitted: int = 0) -> None:
        where = f"after emitting {emitted} message(s)" if index is None else f"on message {index}"
        super().__init__(f"stage {stage!r} failed {where}: {type(error).__name__}: {error}")
        self.stage = stage
        self.index = index
        self.error = error


class StageStats(NamedTuple):
    """One stage's counters: ``p.stats()["square"].messages_in``.

    ``messages_in`` counts messages the stage started, ``messages_out`` what it
    emitted (each child receives all of it), ``queue_depth`` what waits for it,
    ``busy`` the seconds it spent working (for the serial engine, including its
    subtree's time), ``dropped`` what a cut-off (a drain past the timeout, or an
    error) left unfinished.
    """

    name: str
    messages_in: Annotated[int, Metric.counter("Messages the stage started (0 for a root).")]
    messages_out: Annotated[int, Metric.counter("Messages the stage emitted (each child receives all of them).")]
    errors: Annotated[int, Metric.counter("Errors the stage raised.")]
    queue_depth: Annotated[int, Metric.gauge("Messages waiting for the stage: on its edge, and taken but not started.")]
    busy: Annotated[
        float,
        Metric.counter(
            "Seconds the stage spent working, waits for room downstream included (serial engine: its subtree's too).",
            unit="seconds",
        ),
    ]
    dropped: Annotated[
        int, Metric.counter("Messages a cut-off (a drain past its timeout) or an error left unfinished.")
    ]
    lag: Annotated[
        int, Metric.gauge("Worker-based engine: entries on the stage's edge not delivered to any replica yet.")
    ] = 0
    pending: Annotated[
        int, Metric.gauge("Worker-based engine: entries delivered to a replica of the stage, not acknowledged.")
    ] = 0
    reclaimed: Annotated[
        int,
        Metric.counter(
            "Worker-based engine: chunks this replica took over from one that stopped renewing their lease.",
        ),
    ] = 0
    dead_lettered: Annotated[
        int,
        Metric.counter(
            "Worker-based engine: messages this replica moved to the stage's dead-letter stream.",
        ),
    ] = 0


class Pipeline(Process):
    """A tree of stages: roots produce, inner stages transform or filter, leaves consume.

    Register it as a process (``run`` returns when a finite pipeline has drained)
    or run it standalone with ``await p.run()``. ``engine`` chooses how it runs
    (``"serial"``: one task, depth-first, deterministic; ``"parallel"``: a task
    per stage with bounded edges); the ``PIPELINE_ENGINE`` setting overrides it
    without a code change. ``stop()`` stops the roots and lets what is in flight
    drain for ``shutdown_timeout`` seconds; ``dropped`` counts what was cut off.
    A stage's error stops the pipeline and ``run`` raises ``PipelineError``.
    The health key (the component's name) is healthy while it runs and no stage
    has been stalled (work waiting, none finished) for ``stall_after`` seconds.
    """

    health_keys: ClassVar[tuple[str, ...] | None] = ("{name}",)  # and "{name}.redis" on Redis (the engine is a setting)

    health: Health | None = Inject("health", optional=True)
    logger: Any = Inject("logger", optional=True)
    app_name: str | None = Inject("app_name", optional=True)
    settings: PipelineSettings = Inject()
    redis_settings: RedisSettings = Inject()

    def __init__(
        self,
        roots: Sequence[Stage],
        engine: str | None = None,
        *,
        redis_url: str | None = None,
        namespace: str | None = None,
        stages: Sequence[str] | None = None,
        lease: float | None = None,
        max_deliveries: int | None = None,
        shutdown_timeout: float = 5.0,
        stall_after: float = 30.0,
    ) -> None:
        if engine is not None and engine not in ENGINES:
            raise RegistrationError(
                f"Pipeline: unknown engine {engine!r}; use one of: {', '.join(ENGINES)} (or set PIPELINE_ENGINE)"
            )
        self._nodes: list[Node] = build(roots, "Pipeline")
        self._placement = Placement.checked(
            [n.name for n in self._nodes],
            redis_url=redis_url,
            namespace=namespace,
            stages=stages,
            lease=lease,
            max_deliveries=max_deliveries,
        )
        if engine is not None and engine != "worker-based" and self._placement.given():
            raise RegistrationError(
                f"Pipeline: {', '.join(self._placement.given())} apply to the worker-based engine only; "
                f"drop them or use engine='worker-based' (this pipeline's engine: {engine!r})"
            )
        self._placed: Placement | None = None  # the options in force for a worker-based run
        self._ignored: list[str] = []  # worker-based settings set while another engine runs
        self._redis_health: HealthComponent | None = None
        self._code_engine = self._engine_name = engine or "parallel"
        self._code_timeout = positive("Pipeline", "shutdown_timeout", shutdown_timeout)
        self.shutdown_timeout: float = self._code_timeout
        self.stall_after: float = positive("Pipeline", "stall_after", stall_after)
        self._engine: Engine | None = None
        self._running = False
        self._finished: anyio.Event | None = None
        self._health: HealthComponent | None = None
        self._log: Any = None
        self._stalled: set[str] = set()
        self._stop_requested = False

    # -- the public surface -----------------------------------------------------------------

    @property
    def engine(self) -> str:
        """The engine's name: the setting's if ``PIPELINE_ENGINE`` is set, else the constructor's."""
        return self._engine_name

    @property
    def stages(self) -> list[str]:
        """The stages' names, parents before children."""
        return [n.name for n in self._nodes]

    @property
    def dropped(self) -> int:
        """Messages the last run left unfinished (a drain cut off, or an error); 0 after a clean end."""
        return self._engine.dropped if self._engine is not None else 0

    @property
    def running(self) -> bool:
        """Whether ``run`` is running."""
        return self._running

    def stats(self) -> dict[str, StageStats]:
        """Per stage (by name): messages in and out, errors, queue depth, busy seconds, dropped."""
        engine = self._engine
        out: dict[str, StageStats] = {}
        for node in self._nodes:
            if engine is None:
                out[node.name] = StageStats(node.name, 0, 0, 0, 0, 0.0, 0)
                continue
            out[node.name] = StageStats(
                name=node.name,
                messages_in=0 if node.role == "root" else engine.started(node),
                messages_out=engine.emitted(node),
                errors=node.errors,
                queue_depth=0 if node.role == "root" else engine.depth(node),
                busy=node.busy,
                dropped=node.dropped,
                **engine.extra(node),
            )
        return out

    # -- as a Process -----------------------------------------------------------------------

    async def preflight(self) -> None:
        """Worker-based: reach Redis before any component of the app initialises (a wrong URL changes nothing)."""
        self._apply(vars(self).get("settings"), vars(self).get("redis_settings"))
        if self._placed is not None:
            await self._placed.reach()

    async def init(self) -> None:
        """Under an App: register the health key and apply the settings (worker-based: reach Redis)."""
        health = vars(self).get("health")
        owner = "pipeline"
        if health is not None:
            owner = health.owner or owner
            self._health = health.register(owner)
        app = vars(self).get("app_name")
        self._default_namespace = f"nacelle:{app}:{owner}" if app else f"nacelle:{owner}"
        self._apply(vars(self).get("settings"), vars(self).get("redis_settings"))
        if self._placed is not None:
            await self._placed.reach()
            if health is not None:
                self._redis_health = health.register(f"{owner}.redis")

    async def run(self) -> None:
        """Run until every root has finished and its subtree drained, or ``stop()``; raise a stage's error."""
        if self._running:
            raise RuntimeError("Pipeline.run: the pipeline is already running")
        if "settings" not in vars(self):  # standalone: read the same settings from the environment
            config = Config()
            self._apply(config.load(PipelineSettings), config.load(RedisSettings))
            if self._placed is not None:
                await self._placed.reach()
        self._log = vars(self).get("logger") or structlog.get_logger().bind(component="pipeline")
        if self._ignored:
            self._log.warning(
                "worker-based settings ignored: this pipeline's engine is not worker-based",
                engine=self._engine_name,
                settings=self._ignored,
            )
        engine_class = engine_class_of(self._engine_name)
        engine_class.check(self._nodes, "Pipeline")
        log = vars(self).get("logger") or structlog.get_logger().bind(component="pipeline")
        options = None if self._placed is None else self._placed.options(self._nodes, log, self._redis_health)
        engine = self._engine = engine_class(self._nodes, options)
        self._running = True
        self._stop_requested = False
        self._stalled.clear()
        self._finished = anyio.Event()
        started = time.perf_counter()
        where = {} if self._placed is None else self._placed.fields()
        self._log.info("pipeline starting", engine=engine.name, stages=len(self._nodes), **where)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch)
                if self._health is not None:
                    self._health.update(True)
                await engine.run()
                tg.cancel_scope.cancel()
        finally:
            self._running = False
            self._finished.set()
            if self._health is not None:  # healthy while running: a finished batch is not serving
                self._health.update(False)
        failure = engine.failure
        if failure is not None:
            emitted = self.stats()[failure.node.name].messages_out
            error = PipelineError(failure.node.name, failure.index, failure.error, emitted)
            raise error from failure.error
        fields = {"engine": engine.name, "seconds": round(time.perf_counter() - started, 3)}
        if engine.dropped:
            per_stage = {n.name: n.dropped for n in self._nodes if n.dropped}
            self._log.warning("pipeline stopped; messages dropped", dropped=engine.dropped, stages=per_stage, **fields)
        elif self._stop_requested:
            self._log.info("pipeline stopped; everything in flight drained", **fields)
        else:
            self._log.info("pipeline finished", **fields)

    async def stop(self) -> None:
        """Stop the roots, let in-flight messages drain for ``shutdown_timeout``, then cut off the rest."""
        engine = self._engine
        if not self._running or engine is None or self._finished is None:
            return
        self._stop_requested = True
        engine.stop_roots()
        with anyio.move_on_after(self.shutdown_timeout):
            await self._finished.wait()
        if not self._finished.is_set():
            engine.cut_off()
            await self._finished.wait()

    # -- inside -----------------------------------------------------------------------------

    def _apply(self, settings: PipelineSettings | None, redis: RedisSettings | None = None) -> None:
        """The constructor's values, overridden by the settings that are set (looked at anew each time)."""
        self._engine_name, self.shutdown_timeout = self._code_engine, self._code_timeout
        if settings is not None:
            if settings.engine is not None:
                self._engine_name = settings.engine
            if settings.shutdown_timeout is not None:
                self.shutdown_timeout = settings.shutdown_timeout
        default = getattr(self, "_default_namespace", "nacelle:pipeline")
        self._placed, self._ignored = self._placement.for_engine(
            self._engine_name, [n.name for n in self._nodes], settings, redis, default
        )

    async def _watch(self) -> None:
        """Health: unhealthy while a stage has work and has started nothing new for ``stall_after``."""
        engine = self._engine
        assert engine is not None
        period = min(self.stall_after / 4, 1.0)
        seen: dict[str, tuple[int, float]] = {}
        while True:
            await anyio.sleep(period)
            now = time.monotonic()
            stalled = set()
            for node in self._nodes:
                if node.role == "root":
                    continue
                progress = engine.started(node) + node.errors
                busy = node.active or engine.depth(node)
                last = seen.get(node.name)
                if last is None or last[0] != progress or not busy:
                    seen[node.name] = (progress, now)
                elif now - last[1] >= self.stall_after:
                    stalled.add(node.name)
            for name in sorted(stalled - self._stalled):
                self._log.warning("pipeline stage stalled", stage=name, seconds=self.stall_after)
            for name in sorted(self._stalled - stalled):
                self._log.info("pipeline stage moving again", stage=name)
            self._stalled = stalled
            if self._health is not None:
                self._health.update(not stalled)
