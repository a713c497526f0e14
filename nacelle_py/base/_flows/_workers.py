"""The worker-based engine: each atom's execute or revert runs as a named task on a Dispatcher.

The orchestrating replica (the one in ``flows.run``) keeps the flow's state
and decides; every call to a task's ``execute`` or ``revert`` is queued as
one run of the named task ``nacelle.flows.atom`` with its arguments as JSON,
and whichever consuming replica reads it runs it and keeps the outcome for
the orchestrator. On the Redis backend a replica that dies mid-atom is
noticed by the dispatcher's leases: its entry is reclaimed and run by a
survivor, so the orchestrator never waits on a dead worker for ever.
Every replica that consumes must know the flows it may be sent:
``flows.serve(dispatcher, flow, ...)`` (a ``FlowRunner`` does it for its own).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from ._failure import Failure, Failures
from ._local import call
from ._patterns import Flow
from ._persist import jsonable
from ._plan import Node, Plan, compile_flow

if TYPE_CHECKING:
    from .._dispatcher import Dispatcher

__all__ = ["TASK", "AtomCall", "RemoteExecutor", "RemoteFailure", "Workers", "serve", "workers_of"]

TASK = "nacelle.flows.atom"
DISPATCH_BOUND = 86400.0  # the dispatcher's own bound on one atom call: the atom's timeout is what counts
KEEP_OUTCOME = 600.0  # seconds an outcome is kept for the orchestrator (it reads it at once)
WAIT_SLICE = 10.0  # the orchestrator waits for an outcome this long at a time (cancellable between)


class AtomCall(BaseModel):
    """One call of a task's execute or revert, as it crosses to a worker."""

    flow: str
    atom: str
    operation: Literal["execute", "revert"]
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: Any = None  # revert: what execute returned ...
    failure: dict[str, str] | None = None  # ... or the failure it raised
    failures: dict[str, dict[str, str]] | None = None  # revert: the flow's execute failures so far


class RemoteFailure(Exception):
    """An atom failed in a worker: its failure (type, message and traceback of the remote error)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class Workers:
    """The flows whose atoms this replica runs for the worker-based engine, on one dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.plans: dict[str, Plan] = {}
        if TASK not in dispatcher.tasks:
            dispatcher.task(TASK, timeout=DISPATCH_BOUND)(self.handle)

    def add(self, flow: Flow) -> Plan:
        """Know ``flow`` (by name; a newer flow of the same name replaces the older)."""
        known = self.plans.get(flow.name)
        if known is not None and known.flow is flow:
            return known
        plan = compile_flow(flow)
        self.plans[flow.name] = plan
        return plan

    async def handle(self, request: AtomCall) -> dict[str, Any]:
        """Run one atom call here: ``{"ok": True, "value": ...}`` or ``{"ok": False, "failure": ...}``."""
        label = f"{request.atom}.{request.operation}"
        try:
            node = self._node(request)
            task = node.task
            kwargs = dict(request.arguments)
            if request.operation == "execute":
                value = await call(task.execute, task.execute_signature, kwargs, task.time_limit, label)
                return {"ok": True, "value": jsonable(f"the result of task {request.atom!r}", value)}
            wanted = set(task.revert_signature.required + task.revert_signature.optional)
            if "result" in wanted or task.revert_signature.rest:
                kwargs["result"] = Failure.from_json(request.failure) if request.failure else request.result
            if "failures" in wanted or task.revert_signature.rest:
                kwargs["failures"] = Failures({k: Failure.from_json(v) for k, v in (request.failures or {}).items()})
            await call(task.revert, task.revert_signature, kwargs, task.time_limit, label)
            return {"ok": True, "value": None}
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            failure = Failure.of(request.atom, request.operation, exc)
            return {"ok": False, "failure": failure.to_json()}

    def _node(self, request: AtomCall) -> Node:
        plan = self.plans.get(request.flow)
        if plan is None:
            known = ", ".join(sorted(self.plans)) or "none"
            raise LookupError(
                f"flow {request.flow!r} is not known in this replica (known: {known}); call "
                "flows.serve(dispatcher, flow) (or give the flow to a FlowRunner) in every replica that consumes"
            )
        node = plan.by_name.get(request.atom)
        if node is None:
            raise LookupError(f"flow {request.flow!r} has no task {request.atom!r} in this replica (another version?)")
        return node


_WORKERS: weakref.WeakKeyDictionary[Any, Workers] = weakref.WeakKeyDictionary()
# Per dispatcher, not per process: two apps with two dispatchers do not share flows.


def workers_of(dispatcher: Dispatcher) -> Workers:
    """The flows ``dispatcher`` runs atoms of (registering the named task on first use)."""
    workers = _WORKERS.get(dispatcher)
    if workers is None:
        workers = _WORKERS[dispatcher] = Workers(dispatcher)
    return workers


def serve(dispatcher: Dispatcher, *flows: Flow) -> None:
    """Let ``dispatcher``'s workers run the atoms of ``flows`` for the worker-based engine.

    Call it in every replica that consumes, before the dispatcher starts
    (with the flows of every orchestrator that may send it work).
    """
    from .._dispatcher import Dispatcher

    if not isinstance(dispatcher, Dispatcher):
        raise TypeError(f"flows.serve: expected a Dispatcher, got {dispatcher!r}")
    workers = workers_of(dispatcher)
    for flow in flows:
        if not isinstance(flow, Flow):
            raise TypeError(f"flows.serve: expected flows (flows.linear/unordered/graph), got {flow!r}")
        workers.add(flow)


class RemoteExecutor:
    """Atoms run by whichever replica consumes ``dispatcher``'s named task (the worker-based engine)."""

    def __init__(self, dispatcher: Dispatcher, flow: Flow) -> None:
        serve(dispatcher, flow)  # this replica serves its own flow too (when it consumes)
        self.dispatcher = dispatcher
        self.flow = flow.name

    async def execute(self, node: Node, kwargs: dict[str, Any]) -> Any:
        """Queue ``node``'s execute and wait for its outcome."""
        return await self._call(AtomCall(flow=self.flow, atom=node.name, operation="execute", arguments=kwargs))

    async def revert(self, node: Node, kwargs: dict[str, Any]) -> None:
        """Queue ``node``'s revert (its result or failure and the flow's failures as JSON) and wait."""
        args = dict(kwargs)
        result = args.pop("result", None)
        failures = args.pop("failures", None)
        request = AtomCall(flow=self.flow, atom=node.name, operation="revert", arguments=args)
        if isinstance(result, Failure):
            request.failure = result.to_json()
        else:
            request.result = jsonable(f"the result of {node.name}", result)
        if isinstance(failures, Failures):
            request.failures = {k: v.to_json() for k, v in failures.items()}
        await self._call(request)

    async def _call(self, request: AtomCall) -> Any:
        request.arguments = jsonable(f"the arguments of {request.atom}.{request.operation}", request.arguments)
        task_id = await self.dispatcher.enqueue(TASK, request, keep_result=KEEP_OUTCOME)
        while True:
            try:
                outcome = await self.dispatcher.result(task_id, timeout=WAIT_SLICE)
                break
            except TimeoutError:
                continue  # still queued or running: a dead worker's entry is reclaimed by a live one
        if not outcome.get("ok"):
            raise RemoteFailure(Failure.from_json(outcome["failure"]))
        return outcome.get("value")
