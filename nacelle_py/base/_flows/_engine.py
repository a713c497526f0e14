"""Running a compiled flow: forward until done, failed or suspended; on failure, revert and decide.

One scheduler serves every engine; what differs is where atoms run (the
executor) and how many at once (``concurrency``: 1 for ``serial``). Going
forward, a task starts once every task ordered before it succeeded, the
lowest-written first. A failure stops new starts; once the atoms in flight
have ended, the failure is handled scope by scope, innermost first: the
scope's completed tasks are reverted, last completed first, and its retry
controller decides (``RETRY``: its tasks go back to PENDING and run again;
``REVERT``: the scope around it handles the failure; ``REVERT_ALL``: the
whole flow). With no controller left, the whole flow is reverted. A revert
that raises stops every further revert: the flow ends FAILED.
"""

from __future__ import annotations

import heapq
from typing import Any

import anyio

from ._failure import Failure, FlowFailed, FlowSuspended
from ._local import Executor
from ._plan import Node, Scope
from ._progress import Progress
from ._retry import RETRY, REVERT_ALL, Decision
from ._states import State

__all__ = ["FAILURES", "Scheduler"]

FAILURES = (Exception, SystemExit, KeyboardInterrupt)
"""What a task may raise and have recorded as its failure (it does not end the process)."""

S = State


class _Revert(Exception):
    """A revert raised: no further revert runs, the flow ends FAILED."""


class Scheduler:
    """Runs one ``Progress`` to its end (see the module's docstring)."""

    def __init__(self, progress: Progress, executor: Executor, concurrency: int | None) -> None:
        self.progress = progress
        self.plan = progress.plan
        self.executor = executor
        self.concurrency = concurrency
        self.suspending = False
        self.failing: dict[int, Scope] = {}  # the innermost retry scopes of this round's failures
        self.log = progress.listeners.log

    async def run(self) -> dict[str, Any]:
        """Drive the flow to SUCCESS (its values), or raise ``FlowFailed`` / ``FlowSuspended``."""
        p = self.progress
        self.suspending = False
        if p.state is S.SUCCESS:
            return p.output()
        if p.state in (S.REVERTED, S.FAILURE) or self._broken():
            raise self._failed()
        self._recover()
        if p.state is S.REVERTING:  # a whole-flow revert a crash interrupted: finish it
            root = self.plan.scopes[0]
            self.failing = {id(root): root}
        else:
            if p.state is not S.RUNNING:
                p.move_flow(S.RUNNING)
            self._controllers(S.RUNNING)
        while True:
            if not self.failing:
                await self._forward()
            if self.failing:
                if await self._handle():
                    continue
                raise self._failed()
            if self.suspending and not self._finished():
                p.move_flow(S.SUSPENDED)
                raise FlowSuspended(p.name, p.flow_id)
            if not self._finished():
                stuck = [n for n, state in p.atoms.items() if state is not S.SUCCESS]
                raise RuntimeError(f"flow {p.name!r}: nothing can start, yet {stuck} did not succeed (a bug)")
            self._controllers(S.SUCCESS)
            p.move_flow(S.SUCCESS)
            return p.output()

    def suspend(self) -> None:
        """Start no further atom; ``run()`` raises ``FlowSuspended`` once those running have ended."""
        self.suspending = True

    # Forward -------------------------------------------------------------------------------------

    def _finished(self) -> bool:
        return all(self.progress.atoms[n.name] is S.SUCCESS for n in self.plan.nodes)

    def _ready(self) -> tuple[list[tuple[int, Node]], list[int]]:
        """The tasks that can start now (a heap by written order) and, for each, how many it still waits for."""
        atoms = self.progress.atoms
        nodes = self.plan.nodes
        waiting = [sum(1 for p in n.preds if atoms[nodes[p].name] is not S.SUCCESS) for n in nodes]
        ready = [(n.index, n) for n in nodes if waiting[n.index] == 0 and atoms[n.name] is S.PENDING]
        heapq.heapify(ready)
        return ready, waiting

    def _stopping(self) -> bool:
        return bool(self.failing) or self.suspending

    async def _forward(self) -> None:
        ready, waiting = self._ready()
        if self.concurrency == 1:
            while ready and not self._stopping():
                _, node = heapq.heappop(ready)
                if await self._execute(node):
                    self._release(node, waiting, ready)
            return
        limiter = anyio.CapacityLimiter(self.concurrency) if self.concurrency else None

        async def one(node: Node) -> None:
            while True:
                if limiter is not None:
                    async with limiter:
                        if self._stopping():
                            return
                        ok = await self._execute(node)
                else:
                    ok = await self._execute(node)
                if not ok:
                    return
                self._release(node, waiting, ready)
                if not ready or self._stopping():
                    return
                # This task goes on with the first task that is ready and spawns the others: a spawn
                # costs more than a short task, and a chain of tasks then needs no spawn at all.
                node = heapq.heappop(ready)[1]
                start()

        def start() -> None:
            while ready and not self._stopping():
                tg.start_soon(one, heapq.heappop(ready)[1])

        async with anyio.create_task_group() as tg:
            start()

    def _release(self, node: Node, waiting: list[int], ready: list[tuple[int, Node]]) -> None:
        atoms = self.progress.atoms
        for s in node.succs:
            waiting[s] -= 1
            succ = self.plan.nodes[s]
            if waiting[s] == 0 and atoms[succ.name] is S.PENDING:
                heapq.heappush(ready, (s, succ))

    async def _execute(self, node: Node) -> bool:
        """Run one task's execute; whether it succeeded (a failure is recorded and kept for handling)."""
        p = self.progress
        name = node.name
        kwargs = node.task.arguments(p.values)
        p.move(name, S.RUNNING)
        try:
            result = await self.executor.execute(node, kwargs)
            p.check_result(node, result)
        except FAILURES as exc:
            p.move(name, S.FAILURE, failure=Failure.of(name, "execute", exc))
            self.failing[id(node.scope)] = node.scope
            return False
        p.provide(node, result)
        p.move(name, S.SUCCESS, result=result)
        return True

    # Failure -------------------------------------------------------------------------------------

    async def _handle(self) -> bool:
        """Handle this round's failures; True when a retry sends the flow forward again."""
        scopes, self.failing = self.failing, {}
        try:
            for scope in sorted(scopes.values(), key=lambda s: len(s.chain()), reverse=True):
                if not await self._settle(scope):
                    return False
        except _Revert:
            p = self.progress
            if p.state is not S.REVERTING:
                p.move_flow(S.REVERTING)
            self._controllers(S.FAILURE)  # those still deciding end with the flow, not left RUNNING
            p.move_flow(S.FAILURE)
            return False
        return True

    async def _settle(self, scope: Scope) -> bool:
        """Revert ``scope`` and follow its controller's decisions outward; True for a retry."""
        while True:
            if scope.retry is None:  # the root: the whole flow goes back
                await self._revert_all()
                return False
            await self._revert(scope.members)
            p = self.progress
            attempt = p.attempts[scope.name]
            decision = self._decide(scope, attempt)
            if decision is RETRY and scope.retry.has_value(attempt + 1):
                await self._retry(scope, attempt + 1)
                return True
            if decision is REVERT_ALL:  # recorded first: a resume must not take it for a REVERT
                p.move_flow(S.REVERTING)
            self._controller(scope, S.REVERTING)
            self._controller(scope, S.REVERTED)
            parent = scope.parent  # every scope but the root has a controller: the next to decide
            assert parent is not None  # the root has no controller, so a scope with one has a parent
            scope = self.plan.scopes[0] if decision is REVERT_ALL else parent

    def _decide(self, scope: Scope, attempt: int) -> Decision:
        assert scope.retry is not None
        try:
            decision = scope.retry.on_failure(self.progress.failures_so_far(), attempt)
            return Decision(decision)
        except Exception as exc:  # a broken controller: its subflow's failure goes on outward
            self.log.error(
                "a retry controller raised; its subflow's failure goes on to the enclosing flow",
                flow=self.progress.name,
                controller=scope.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return Decision.REVERT

    async def _retry(self, scope: Scope, attempt: int) -> None:
        p = self.progress
        assert scope.retry is not None
        # RETRYING is recorded before the tasks go back to PENDING: a crash in between must not
        # leave a store that reads as the same attempt about to run again.
        self._controller(scope, S.RETRYING)
        self._rewind(scope)
        p.move_flow(S.RETRYING)
        # Always a checkpoint, even without a backoff: a task that fails without awaiting
        # anything, retried again and again, must not keep the loop (or a cancellation) out.
        await anyio.sleep(max(scope.retry.wait(attempt - 1), 0))
        self._again(scope, attempt)

    def _again(self, scope: Scope, attempt: int) -> None:
        """Attempt ``attempt`` of ``scope`` begins (its controller RETRYING until now)."""
        p = self.progress
        p.attempts[scope.name] = attempt
        self._provide_retry(scope)
        if p.state is S.RETRYING:
            p.move_flow(S.RUNNING)
        self._controller(scope, S.RUNNING)
        for inner in self.plan.scopes:  # _rewind set them back to PENDING: they start over with it
            if inner is not scope and scope in inner.chain():
                self._controller(inner, S.RUNNING)
                self._provide_retry(inner)

    async def _revert_all(self) -> None:
        p = self.progress
        if p.state is not S.REVERTING:
            p.move_flow(S.REVERTING)
        await self._revert([n.index for n in self.plan.nodes])
        self._controllers(S.REVERTED)
        p.move_flow(S.REVERTED)

    async def _revert(self, members: list[int]) -> None:
        """Revert the completed tasks of ``members``, last completed first; ``_Revert`` when one raises."""
        p = self.progress
        for node in p.completed_in(members):
            name = node.name
            p.move(name, S.REVERTING)
            if not node.task.reverts:
                p.move(name, S.REVERTED)
                continue
            # The last execute's outcome: its failure while it stands, else what it returned.
            result = p.errors[name] if name in p.errors else p.results.get(name)
            kwargs = node.task.revert_arguments(p.values, result, p.failures_so_far())
            try:
                await self.executor.revert(node, kwargs)
            except FAILURES as exc:
                p.move(name, S.FAILURE, failure=Failure.of(name, "revert", exc))
                raise _Revert from exc
            p.move(name, S.REVERTED)

    # Retry controllers -----------------------------------------------------------------------------

    def _controller(self, scope: Scope, new: State) -> None:
        atoms = self.progress.atoms
        if atoms[scope.name] is not new:
            self.progress.move(scope.name, new)

    def _controllers(self, new: State) -> None:
        """Move every controller still active (or pending) to ``new``; on RUNNING, provide their values."""
        for scope in self.plan.scopes:
            if scope.retry is None:
                continue
            state = self.progress.atoms[scope.name]
            if new is S.RUNNING and state in (S.PENDING, S.RETRYING):
                self.progress.move(scope.name, S.RUNNING)
            elif new is S.SUCCESS and state is S.RUNNING:
                self.progress.move(scope.name, S.SUCCESS)
            elif new is S.REVERTED and state in (S.RUNNING, S.SUCCESS, S.RETRYING):
                self.progress.move(scope.name, S.REVERTING)
                self.progress.move(scope.name, S.REVERTED)
            elif new is S.FAILURE and state in (S.RUNNING, S.RETRYING):
                self.progress.move(scope.name, S.REVERTING)
                self.progress.move(scope.name, S.FAILURE)
            if new is S.RUNNING:
                self._provide_retry(scope)

    def _rewind(self, scope: Scope) -> None:
        """``scope``'s reverted tasks wait to run again, and the controllers inside it start over."""
        p = self.progress
        for i in scope.members:
            name = self.plan.nodes[i].name
            if p.atoms[name] is S.REVERTED:
                p.move(name, S.PENDING)
        for inner in self.plan.scopes:
            if inner is not scope and scope in inner.chain():
                self._reset(inner)

    def _reset(self, scope: Scope) -> None:
        p = self.progress
        p.attempts[scope.name] = 1  # first: the moves below record it, so a resume starts it at 1
        state = p.atoms[scope.name]
        if state in (S.RUNNING, S.SUCCESS, S.RETRYING):
            p.move(scope.name, S.REVERTING)
            state = S.REVERTED
            p.move(scope.name, state)
        if state is S.REVERTED:
            p.move(scope.name, S.PENDING)

    def _provide_retry(self, scope: Scope) -> None:
        retry = scope.retry
        if retry is not None and retry.provided:
            self.progress.values[retry.provided[0]] = retry.value(self.progress.attempts[scope.name])

    # Back from a crash ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """After a resume, carry on where the crash struck (each case is a window between two recorded moves).

        A task that was RUNNING runs again. Unless the whole flow was being
        reverted (``run`` finishes that): a task whose execute failed, not yet
        reverted or reverted while its controller still runs (the crash struck
        between two reverts of its scope, or before the decision), means its
        scope's failure was being handled, so it is handled again; a
        controller RETRYING had decided to retry, so its attempt begins; a
        controller REVERTED while the one around it runs had passed its
        failure outward. (A task reverted without a failure of its own was
        reverted with the scope of the task that failed, which decides.)
        """
        p = self.progress
        for node in self.plan.nodes:
            if p.atoms[node.name] is S.RUNNING:
                p.move(node.name, S.PENDING)
        for scope in self.plan.scopes[1:]:
            if p.atoms[scope.name] is S.REVERTING:  # a controller's REVERTED always follows at once: finish it
                p.move(scope.name, S.REVERTED)
            self._provide_retry(scope)  # what its tasks saw, for their reverts (a resumed revert-all too)
        if p.state in (S.REVERTING, S.PENDING):
            return
        for node in self.plan.nodes:
            failed = p.atoms[node.name] in (S.FAILURE, S.REVERTING, S.REVERTED) and node.name in p.errors
            if failed and self._runs(node.scope):
                self.failing[id(node.scope)] = node.scope
        for scope in self.plan.scopes[1:]:
            state = p.atoms[scope.name]
            if state is S.RETRYING:
                self._rewind(scope)
                self._again(scope, p.attempts[scope.name] + 1)
            elif state is S.REVERTED and scope.parent is not None:
                outer = scope.parent
                if self._runs(outer):  # else it retries (above) or passed the failure on itself
                    self.failing[id(outer)] = outer

    def _broken(self) -> bool:
        """After a resume: a revert had raised before the crash, so the flow ends FAILED now, reverting nothing more."""
        p = self.progress
        broken = {f.task for f in p.failures if f.operation == "revert"}
        if not broken:
            return False
        for name in sorted(broken):
            if p.atoms.get(name) is S.REVERTING:  # killed between recording the failure and the move
                p.move(name, S.FAILURE)
        if p.state is not S.REVERTING:
            p.move_flow(S.REVERTING)
        self._controllers(S.FAILURE)  # as when the revert raised: those still deciding end with the flow
        p.move_flow(S.FAILURE)
        return True

    def _runs(self, scope: Scope) -> bool:
        """Whether ``scope``'s attempt is under way: its controller RUNNING (the root: always, here)."""
        return scope.retry is None or self.progress.atoms[scope.name] is S.RUNNING

    def _failed(self) -> FlowFailed:
        p = self.progress
        return FlowFailed(p.name, p.state, tuple(p.failures), flow_id=p.flow_id, values=p.values)
