"""``FlowRunner``: a process that runs submitted flows, a bounded number at once, and resumes the unfinished.

With a store (``FLOWS_STORE`` or ``store=``) every flow's history is in an
SQLite file: at start the runner resumes every run it finds unfinished (a
``kill -9`` included), and a graceful stop suspends the running flows (the
atoms in flight finish first) so that the next start carries them on.
Without one, a stop lets the running flows finish within the shutdown
timeout, and flows still waiting for a slot are dropped (and logged).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple

import anyio
import structlog

from ..._components import Process
from ..._config import Config
from ..._errors import RegistrationError
from ..._health import Health, HealthComponent
from ..._inject import Inject
from ..._metric import Metric
from ._events import Listener, checked_listeners
from ._failure import FlowFailed, FlowSuspended
from ._patterns import Flow
from ._persist import Persistence
from ._run import FlowEngine, check_concurrency, resumed
from ._settings import FlowsSettings, engine_name
from ._sqlite import SQLiteStore
from ._states import State
from ._workers import serve

if TYPE_CHECKING:
    from .._dispatcher import Dispatcher

__all__ = ["FlowRunner", "FlowRunnerStats"]

KEEP_OUTCOMES = 1000  # finished flows whose outcome result() can still read


class FlowRunnerStats(NamedTuple):
    """A FlowRunner's counters."""

    running: Annotated[int, Metric.gauge("Flows running now.")]
    waiting: Annotated[int, Metric.gauge("Flows submitted and waiting for a free slot.")]
    succeeded: Annotated[int, Metric.counter("Flows that ended SUCCESS.")]
    reverted: Annotated[int, Metric.counter("Flows that failed and were reverted (REVERTED).")]
    failed: Annotated[int, Metric.counter("Flows that failed and whose revert raised too (FAILED).")]
    suspended: Annotated[int, Metric.counter("Flows a stop suspended (resumed at the next start).")]
    resumed: Annotated[int, Metric.counter("Unfinished flows found in the store at start and resumed.")]


class _Outcome:
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.values: dict[str, Any] | None = None
        self.error: BaseException | None = None


class FlowRunner(Process):
    """Runs submitted flows (``await submit(flow, store)``), at most ``max_running`` at once.

    ``flows`` are the flows it knows by name (``submit("checkout", ...)``),
    and the ones it resumes from its store and, on the worker-based engine,
    serves on ``dispatcher``. ``FLOWS_ENGINE``, ``FLOWS_MAX_RUNNING``,
    ``FLOWS_STORE`` and ``FLOWS_CONCURRENCY`` override the keywords; ``store``
    is an SQLite file's path, a store, or a function returning either, called
    at init (to derive it from another setting). Health
    (the component's name) is healthy while it runs. ``stats()`` counts flows
    running, waiting, succeeded, reverted, failed, suspended and resumed.
    """

    health_keys: ClassVar[tuple[str, ...] | None] = ("{name}",)

    health: Health | None = Inject("health", optional=True)
    logger: Any = Inject("logger", optional=True)
    settings: FlowsSettings = Inject()

    def __init__(
        self,
        flows: Iterable[Flow] = (),
        *,
        engine: str = "serial",
        store: str | os.PathLike[str] | Persistence | Callable[[], str | os.PathLike[str] | Persistence] | None = None,
        max_running: int = 16,
        concurrency: int | None = None,
        dispatcher: Dispatcher | None = None,
        listeners: Iterable[Listener] | None = None,
    ) -> None:
        where = "FlowRunner"
        if isinstance(flows, Flow) or not isinstance(flows, Iterable):
            raise RegistrationError(f"{where}: flows must be a list of flows, got {flows!r}")
        self.flows: dict[str, Flow] = {}
        for flow in flows:
            if not isinstance(flow, Flow):
                raise RegistrationError(f"{where}: {flow!r} is not a flow (flows.linear/unordered/graph)")
            if flow.name in self.flows:
                raise RegistrationError(f"{where}: two flows are named {flow.name!r}")
            self.flows[flow.name] = flow
        try:
            self._code_engine = engine_name(engine, where)
            check_concurrency(where, concurrency)
        except ValueError as exc:
            raise RegistrationError(str(exc)) from None
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise RegistrationError(f"{where}: max_running must be an int >= 1, got {max_running!r}")
        self._code = (max_running, concurrency, store)
        self.dispatcher = dispatcher
        if dispatcher is not None:
            serve(dispatcher, *self.flows.values())  # before the dispatcher consumes
        try:
            self.listeners = checked_listeners(where, listeners)
        except TypeError as exc:
            raise RegistrationError(str(exc)) from None
        self.engine = self._code_engine
        self.max_running = max_running
        self.concurrency = concurrency
        self.store: Persistence | None = None
        self._owned_store: SQLiteStore | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._running: dict[str, FlowEngine] = {}
        self._waiting: dict[str, FlowEngine] = {}  # in submission order: the first gets the next free slot
        self._outcomes: OrderedDict[str, _Outcome] = OrderedDict()
        self._stopping: anyio.Event | None = None
        self._counts = dict.fromkeys(("succeeded", "reverted", "failed", "suspended", "resumed"), 0)
        self._health: HealthComponent | None = None
        self._log: Any = structlog.get_logger().bind(component="flows")

    # Configuration -------------------------------------------------------------------------------

    async def init(self) -> None:
        """Under an App: register the health key, apply the settings, open the store."""
        health = vars(self).get("health")
        if health is not None:
            self._health = health.register(health.owner or "flows")
        self._log = vars(self).get("logger") or self._log
        self._apply(vars(self).get("settings"))

    def _apply(self, settings: FlowsSettings | None) -> None:
        max_running, concurrency, store = self._code
        engine = self._code_engine
        if settings is not None:
            engine = settings.engine or engine
            max_running = settings.max_running or max_running
            concurrency = settings.concurrency or concurrency
            store = settings.store or store
        if callable(store) and not isinstance(store, SQLiteStore):
            store = store()  # a store that depends on something only known at init (another setting)
        if engine == "worker-based" and self.dispatcher is None:
            raise RegistrationError(
                "FlowRunner: the worker-based engine (FLOWS_ENGINE) runs atoms on a Dispatcher: "
                "pass FlowRunner(dispatcher=...) (a Dispatcher on the redis backend), or choose serial or parallel"
            )
        self.engine, self.max_running, self.concurrency = engine, max_running, concurrency
        if self.store is None:
            if isinstance(store, (str, os.PathLike)):
                self.store = self._owned_store = SQLiteStore(store)
            else:
                self.store = store

    # Submitting ----------------------------------------------------------------------------------

    async def submit(
        self, flow: Flow | str, store: Mapping[str, Any] | None = None, *, flow_id: str | None = None
    ) -> str:
        """Queue a run of ``flow`` (a flow, or the name of one it knows) with ``store``; its flow id.

        The flow is checked (and, with a store, recorded) before this returns;
        it starts once a slot is free. ``result(flow_id)`` waits for its end.
        """
        where = "FlowRunner.submit"
        if self._tg is None or self._stopping is None or self._stopping.is_set():
            raise RuntimeError(f"{where}: the runner is not running (submit while the app serves)")
        if isinstance(flow, str):
            known = self.flows.get(flow)
            if known is None:
                raise LookupError(f"{where}: no flow named {flow!r} (known: {', '.join(sorted(self.flows)) or 'none'})")
            flow = known
        elif isinstance(flow, Flow):
            self.flows.setdefault(flow.name, flow)
        else:
            raise TypeError(f"{where}: expected a flow or a flow's name, got {flow!r}")
        engine = FlowEngine(
            flow,
            store=store,
            engine=self.engine,
            persistence=self.store,
            listeners=self.listeners,
            flow_id=flow_id,
            concurrency=self.concurrency,
            dispatcher=self.dispatcher,
        )
        self._start(engine)
        return engine.flow_id

    async def result(self, flow_id: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """The values of flow ``flow_id`` once it ends, or its ``FlowFailed`` / ``FlowSuspended`` raised.

        ``TimeoutError`` when it has not ended within ``timeout`` seconds;
        ``LookupError`` for an id this runner does not have (it keeps the
        outcomes of the last 1,000 flows).
        """
        outcome = self._outcomes.get(flow_id)
        if outcome is None:
            raise LookupError(f"FlowRunner.result: no flow {flow_id!r} here (unknown, or ended long ago)")
        with anyio.move_on_after(timeout):
            await outcome.done.wait()
        if not outcome.done.is_set():
            raise TimeoutError(f"FlowRunner.result: flow {flow_id!r} did not end within {timeout:g} s")
        if outcome.error is not None:
            raise outcome.error
        assert outcome.values is not None
        return outcome.values

    def state(self, flow_id: str) -> State | None:
        """Where flow ``flow_id`` is (None if this runner does not have it)."""
        engine = self._running.get(flow_id) or self._waiting.get(flow_id)
        if engine is not None:
            return engine.state
        outcome = self._outcomes.get(flow_id)
        if outcome is None or not outcome.done.is_set():
            return None
        if outcome.error is None:
            return State.SUCCESS
        return getattr(outcome.error, "state", State.FAILURE)

    def stats(self) -> FlowRunnerStats:
        """Flows running, waiting, and the counts of those ended, suspended and resumed."""
        c = self._counts
        return FlowRunnerStats(
            len(self._running),
            len(self._waiting),
            c["succeeded"],
            c["reverted"],
            c["failed"],
            c["suspended"],
            c["resumed"],
        )

    # Running -------------------------------------------------------------------------------------

    def _start(self, engine: FlowEngine) -> None:
        self._outcomes[engine.flow_id] = _Outcome()
        while len(self._outcomes) > KEEP_OUTCOMES:
            oldest = next(iter(self._outcomes))
            if not self._outcomes[oldest].done.is_set():
                break
            del self._outcomes[oldest]
        self._waiting[engine.flow_id] = engine
        self._fill()

    def _fill(self) -> None:
        """Start the waiting flows, first submitted first, while a slot is free (none once stopping)."""
        assert self._tg is not None and self._stopping is not None
        while self._waiting and len(self._running) < self.max_running and not self._stopping.is_set():
            flow_id = next(iter(self._waiting))
            engine = self._running[flow_id] = self._waiting.pop(flow_id)
            self._tg.start_soon(self._drive, engine)

    async def _drive(self, engine: FlowEngine) -> None:
        outcome = self._outcomes[engine.flow_id]
        flow_id = engine.flow_id
        try:
            try:
                outcome.values = await engine.run()
            finally:
                del self._running[flow_id]
                self._fill()
            self._counts["succeeded"] += 1
            self._log.debug("flow succeeded", flow=engine.flow.name, flow_id=flow_id)
        except FlowSuspended as exc:
            self._suspended(engine, exc)
        except FlowFailed as exc:
            outcome.error = exc
            reverted = exc.state is State.REVERTED
            self._counts["reverted" if reverted else "failed"] += 1
            log = self._log.warning if reverted else self._log.error
            log("flow reverted" if reverted else "flow failed", flow=engine.flow.name, flow_id=flow_id, error=str(exc))
        except Exception as exc:  # a bug, or a store that broke: this flow ends, the runner goes on
            outcome.error = exc
            self._counts["failed"] += 1
            self._log.error("flow crashed", flow=engine.flow.name, flow_id=flow_id, exc_info=exc)
        finally:
            outcome.done.set()

    def _suspended(self, engine: FlowEngine, exc: FlowSuspended) -> None:
        """Flow ``engine`` ended suspended (a stop), or never started before the stop."""
        self._outcomes[engine.flow_id].error = exc
        self._outcomes[engine.flow_id].done.set()
        if self.store is not None:  # without one, a flow not started is dropped (logged once for all)
            self._counts["suspended"] += 1
            self._log.info("flow suspended; the next start resumes it", flow=engine.flow.name, flow_id=engine.flow_id)

    def _resume_unfinished(self) -> None:
        if self.store is None:
            return
        for flow_id in self.store.unfinished():
            saved = self.store.load(flow_id)
            if saved is None:
                continue
            flow = self.flows.get(saved.name)
            if flow is None:
                self._log.warning(
                    "an unfinished flow of a flow this runner does not know is left as it is",
                    flow=saved.name,
                    flow_id=flow_id,
                )
                continue
            engine = resumed(
                flow,
                flow_id,
                persistence=self.store,
                engine=self.engine,
                listeners=self.listeners,
                concurrency=self.concurrency,
                dispatcher=self.dispatcher,
            )
            self._counts["resumed"] += 1
            self._log.info("resuming an unfinished flow", flow=saved.name, flow_id=flow_id, state=str(saved.state))
            self._start(engine)

    async def run(self) -> None:
        """Resume what the store holds unfinished, then run submitted flows until ``stop()``."""
        if self._tg is not None:
            raise RuntimeError("FlowRunner.run: the runner is already running")
        if "settings" not in vars(self):  # standalone: the same settings, from the environment
            self._apply(Config().load(FlowsSettings))
        stopping = self._stopping = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._resume_unfinished()
                if self._health is not None:
                    self._health.update(True)
                await stopping.wait()
                self._wind_down()
        finally:
            self._tg = None
            if self._health is not None:
                self._health.update(False)
            if self._owned_store is not None:
                self._owned_store.close()
                self.store = self._owned_store = None

    def _wind_down(self) -> None:
        """A stop: suspend what runs when a store keeps it, else let it finish; start nothing that waits.

        A waiting flow never started: with a store its record stays unfinished and the next
        start runs it; without one it is dropped (and logged). Its ``result()`` raises
        ``FlowSuspended`` either way.
        """
        if self.store is not None:
            for engine in list(self._running.values()):
                engine.suspend()
        elif self._waiting:
            self._log.warning(
                "flows not started are dropped: the runner has no store (FLOWS_STORE) to keep them",
                dropped=len(self._waiting),
            )
        waiting, self._waiting = self._waiting, {}
        for engine in waiting.values():
            self._suspended(engine, FlowSuspended(engine.flow.name, engine.flow_id))

    async def stop(self) -> None:
        """Stop taking flows; suspend (with a store) or finish (without) the running ones, then end ``run``."""
        if self._stopping is not None:
            self._stopping.set()
