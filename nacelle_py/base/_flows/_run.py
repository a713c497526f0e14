"""The public way to run flows: ``load`` a run (then ``run``, ``suspend``), ``run`` one, ``resume`` one.

The engine is picked by name (``engine=``, else the ``FLOWS_ENGINE``
environment variable, else ``serial``); every engine runs the same flow with
the same semantics, only where atoms run and how many at once differ.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import structlog

from ._engine import Scheduler
from ._events import Listener, Listeners, checked_listeners
from ._failure import Failure
from ._local import Executor, LocalExecutor
from ._patterns import Flow
from ._persist import Persistence, dumps
from ._plan import FlowError, compile_flow
from ._progress import Progress
from ._settings import engine_name
from ._states import State
from ._workers import RemoteExecutor

if TYPE_CHECKING:
    from .._dispatcher import Dispatcher

__all__ = ["FlowEngine", "check_concurrency", "load", "resume", "run"]


def check_concurrency(where: str, value: object) -> int | None:
    """``value`` as a bound on atoms at once (an int >= 1, or None for none); ValueError naming ``where``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: concurrency must be an int >= 1 or None (no bound), got {value!r}")
    return value


class FlowEngine:
    """One run of a flow on one engine: ``await run()`` drives it, ``suspend()`` pauses it between atoms.

    ``state`` and ``atom_states`` show where it is; ``listen()`` adds a
    listener. After a ``FlowSuspended``, ``run()`` again carries on.
    """

    def __init__(
        self,
        flow: Flow,
        *,
        store: Mapping[str, Any] | None = None,
        engine: str | None = None,
        persistence: Persistence | None = None,
        listeners: Iterable[Listener] | None = None,
        flow_id: str | None = None,
        concurrency: int | None = None,
        dispatcher: Dispatcher | None = None,
        executor: Executor | None = None,
        resuming: bool = False,
    ) -> None:
        where = f"flows ({getattr(flow, 'name', flow)!r})"
        plan = compile_flow(flow)
        if store is not None and not isinstance(store, Mapping):
            raise TypeError(f"{where}: store must be a mapping of value names to values, got {store!r}")
        values = dict(store or {})
        if not resuming:
            plan.check_store(values)
        if engine is None:  # the deployment's choice: a bad value names the variable it came from
            self.engine = engine_name(os.environ.get("FLOWS_ENGINE", "serial"), f"{where}: FLOWS_ENGINE")
        else:
            self.engine = engine_name(engine, where)
        limit = check_concurrency(where, concurrency)
        if flow_id is not None and (not isinstance(flow_id, str) or not flow_id):
            raise TypeError(f"{where}: flow_id must be a non-empty string, got {flow_id!r}")
        self.flow = flow
        self.flow_id = flow_id or uuid.uuid4().hex
        log = structlog.get_logger().bind(flow=flow.name, flow_id=self.flow_id)
        self._listeners = Listeners(checked_listeners(where, listeners), log)
        self._progress = Progress(plan, self.flow_id, values, persistence, self._listeners)
        if executor is None:
            if self.engine == "worker-based":
                if dispatcher is None:
                    raise TypeError(
                        f"{where}: the worker-based engine runs atoms as named tasks of a Dispatcher; "
                        "pass dispatcher= (its backend redis, for replicas to share the work), or use a FlowRunner"
                    )
                executor = RemoteExecutor(dispatcher, flow)
            else:
                executor = LocalExecutor()
        self._scheduler = Scheduler(self._progress, executor, 1 if self.engine == "serial" else limit)
        if persistence is not None and not resuming:
            persistence.begin(self.flow_id, flow.name, self.engine, values)
        if persistence is not None:
            dumps(f"the store of flow {flow.name!r}", values)

    @property
    def state(self) -> State:
        """The flow's state."""
        return self._progress.state

    @property
    def atom_states(self) -> Mapping[str, State]:
        """Every atom's state (tasks and retry controllers), by name."""
        return dict(self._progress.atoms)

    @property
    def values(self) -> Mapping[str, Any]:
        """The store and every value provided so far."""
        return dict(self._progress.values)

    @property
    def failures(self) -> tuple[Failure, ...]:
        """Every failure so far (execute and revert), in order."""
        return tuple(self._progress.failures)

    def listen(self, listener: Listener) -> None:
        """Tell ``listener`` every move from now on."""
        self._listeners.add(listener)

    async def run(self) -> dict[str, Any]:
        """Run the flow to its end: its values, or ``FlowFailed`` / ``FlowSuspended``."""
        return await self._scheduler.run()

    def suspend(self) -> None:
        """Start no further atom; the running ones finish, then ``run()`` raises ``FlowSuspended``."""
        self._scheduler.suspend()

    def __repr__(self) -> str:
        return f"<FlowEngine {self.flow.name!r} {self.flow_id} {self.engine} {self.state}>"


class RunOptions(TypedDict, total=False):
    """The keywords of ``load`` and ``run`` (each as ``FlowEngine``'s)."""

    store: Mapping[str, Any] | None
    engine: str | None
    persistence: Persistence | None
    listeners: Iterable[Listener] | None
    flow_id: str | None
    concurrency: int | None
    dispatcher: Dispatcher | None
    executor: Executor | None


class ResumeOptions(TypedDict, total=False):
    """The keywords of ``resumed`` and ``resume`` besides ``persistence``."""

    engine: str | None
    listeners: Iterable[Listener] | None
    concurrency: int | None
    dispatcher: Dispatcher | None
    executor: Executor | None


def load(flow: Flow, **options: Unpack[RunOptions]) -> FlowEngine:
    """A run of ``flow``, checked and ready: ``await engine.run()`` starts it.

    Keywords: ``store`` (the values the flow starts with), ``engine``
    (``serial``, ``parallel`` or ``worker-based``; default ``FLOWS_ENGINE``,
    else serial), ``persistence`` (a store such as ``SQLiteStore``),
    ``listeners``, ``flow_id`` (default: a new one), ``concurrency`` (atoms
    at once on the parallel and worker-based engines), ``dispatcher`` (the
    worker-based engine's).
    """
    return FlowEngine(flow, **options)


async def run(flow: Flow, **options: Unpack[RunOptions]) -> dict[str, Any]:
    """Run ``flow`` to its end: a dict of the store and every provided value.

    On failure everything that ran is reverted and ``FlowFailed`` is raised
    (``state`` REVERTED, or FAILED when a revert raised too). The keywords
    are ``load``'s.
    """
    return await FlowEngine(flow, **options).run()


def resumed(flow: Flow, flow_id: str, *, persistence: Persistence, **options: Unpack[ResumeOptions]) -> FlowEngine:
    """The run ``flow_id`` of ``flow`` as ``persistence`` recorded it, ready to carry on (``await .run()``)."""
    where = f"flows.resume({flow_id!r})"
    if persistence is None:
        raise TypeError(f"{where}: persistence is required (the store the run was recorded in)")
    saved = persistence.load(flow_id)
    if saved is None:
        raise LookupError(f"{where}: no flow run with this id in {persistence!r}")
    if saved.name != flow.name:
        raise FlowError(f"{where}: the recorded run is of flow {saved.name!r}, not {flow.name!r}")
    if options.get("engine") is None:
        options["engine"] = saved.engine
    loaded = FlowEngine(flow, store=saved.store, persistence=persistence, flow_id=flow_id, resuming=True, **options)
    unknown = sorted(set(saved.atoms) - set(loaded._progress.atoms))
    if unknown:
        raise FlowError(
            f"{where}: the recorded run has atoms {unknown} that flow {flow.name!r} no longer has; "
            "resume it with the code it was started with"
        )
    loaded._progress.restore(saved)
    return loaded


async def resume(
    flow: Flow, flow_id: str, *, persistence: Persistence, **options: Unpack[ResumeOptions]
) -> dict[str, Any]:
    """Carry on the run ``flow_id`` of ``flow`` from ``persistence``: only what had not finished runs again.

    A run that had ended returns its values (or raises its ``FlowFailed``)
    again without running anything. The engine is the recorded one unless
    ``engine=`` says otherwise.
    """
    return await resumed(flow, flow_id, persistence=persistence, **options).run()
