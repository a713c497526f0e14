"""What every engine shares: the failure it reports, stopping, the threads of plain stages.

An engine runs the nodes of one pipeline once. The ``Pipeline`` process
picks the engine by name (``ENGINES``), so a new engine is a new module and
one entry here, and must pass the same equivalence suite
(``tests/base/test_pipeline_engines.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from ..._waker import Waker
from ._lanes import Lane, Outbox, Stopped
from ._message import carry_ids
from ._stage import Node

__all__ = ["FAILURES", "Engine", "Failure", "check_result"]

FAILURES = (Exception, SystemExit, KeyboardInterrupt)
"""What a stage may raise and have reported as its failure: a stage does not end the process."""


class Failure(Exception):
    """The first error of a run: which stage, which message, what was raised."""

    def __init__(self, node: Node, index: int | None, error: BaseException) -> None:
        super().__init__(node.name, index, error)
        self.node = node
        self.index = index
        self.error = error


class Engine:
    """The base of the engines: the run's state, failure and stop bookkeeping."""

    name = "engine"
    carries_ids = False  # True: every message carries its id (an engine whose edges need them)

    def __init__(self, nodes: list[Node], options: Any = None) -> None:
        self.wrap(nodes)
        self.nodes = nodes
        self.roots = [n for n in nodes if n.role == "root"]
        self.failure: Failure | None = None
        self.stopping = False
        self.dropped = 0
        self.waker: Waker | None = None
        self.outboxes: list[Outbox] = []  # plain roots' outboxes: told to stop when the run ends
        self._lanes: dict[str, list[Lane]] = {}
        self._scope: anyio.CancelScope | None = None
        self.halted = False

    def wrap(self, nodes: list[Node]) -> None:
        """Give every node the function this run calls (wrapped where its tree carries ids)."""
        carry_ids(nodes, always=self.carries_ids)

    @classmethod
    def check(cls, nodes: list[Node], owner: str) -> None:
        """Refuse, before anything runs, a tree this engine cannot run (``RegistrationError``)."""

    async def run(self) -> None:
        """Run every node to completion, a stop, or the first failure (kept in ``failure``)."""
        try:
            async with anyio.create_task_group() as outer:
                self._scope = outer.cancel_scope
                if self.needs_threads():
                    self.waker = Waker(on_wake=self.woken)
                    outer.start_soon(self.waker.pump)
                await self.run_nodes()
                outer.cancel_scope.cancel()
        finally:
            # However the run ended (a cut-off, an error, the caller's cancellation), a
            # plain root's thread must not go on emitting into a pipeline nobody runs.
            self.stopping = True
            for outbox in self.outboxes:
                outbox.stop()
            self.close_lanes()
            if self.waker is not None:
                self.waker.close()

    async def run_nodes(self) -> None:
        """The engine's own part of ``run``: within the run's cancel scope, threads ready."""
        raise NotImplementedError

    # -- progress, read by stats and the stall watch ------------------------------------------

    def started(self, node: Node) -> int:
        """Messages the stage has started processing (its ``messages_in``)."""
        return node.taken - node.remaining()

    def depth(self, node: Node) -> int:
        """Messages waiting for the stage: on its edge, and taken but not started."""
        return node.remaining()

    def emitted(self, node: Node) -> int:
        """Messages the stage emitted (each child received all of them)."""
        if not node.children:
            return node.out
        first = node.children[0]
        return first.taken + (len(first.inbox.items) if first.inbox is not None else 0)

    def extra(self, node: Node) -> dict[str, int]:
        """Counters only this engine has, for ``stats()`` (none by default)."""
        return {}

    # -- stopping ----------------------------------------------------------------------------

    def stop_roots(self) -> None:
        """Stop producing; what is in flight drains."""
        self.stopping = True
        for outbox in self.outboxes:
            outbox.stop()

    def cut_off(self) -> int:
        """Cancel everything still running (a drain that took too long); return what was dropped."""
        if self._scope is not None and not self._scope.cancel_called and not self.halted:
            self._note_dropped()
            self.halt()
        return self.dropped

    def halt(self) -> None:
        """Cancel the run's stages (a failure, a cut-off); the worker-based engine tidies up first."""
        self.halted = True
        if self._scope is not None:
            self._scope.cancel()

    def fail(self, node: Node, index: int | None, error: BaseException) -> None:
        """Record a stage's error; the first one stops the run."""
        node.errors += 1
        if self.failure is None:
            self.failure = Failure(node, index, error)
            if node.role != "root":  # the message that failed is in flight, and not dropped
                node.active = max(0, node.active - 1)
            self._note_dropped()
            if node.role != "root":
                node.active += 1
            self.halt()

    def drop(self, node: Node, count: int) -> None:
        """Count messages lost outside any stage's edge (a plain root's last emits during a stop)."""
        node.dropped += count
        self.dropped += count

    def _note_dropped(self) -> None:
        """Everything accepted and not finished is dropped: on each edge, and in flight."""
        for node in self.nodes:
            if node.role != "root":
                node.dropped = self.depth(node) + node.in_flight() + self.held(node)
        self.dropped = sum(node.dropped for node in self.nodes)

    def held(self, node: Node) -> int:
        """Messages a stage produced and holds back (an ordered stage's reorder buffer)."""
        return 0

    # -- plain stages ------------------------------------------------------------------------

    def lane(self, node: Node, worker: int = 0) -> Lane:
        """The thread of a plain stage's worker (created on first use)."""
        lanes = self._lanes.setdefault(node.name, [])
        while len(lanes) <= worker:
            assert self.waker is not None
            lanes.append(Lane(self.waker, f"nacelle pipeline {node.name}"))
        return lanes[worker]

    async def run_plain_root(
        self, node: Node, outbox: Outbox, forward: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        """Run a plain root's function on its thread, emitting into ``outbox``, while ``forward`` hands on.

        ``stop()`` cancels the wait for the thread (which the outbox then ends at its
        next ``emit``), not the forwarding: what the root emitted before drains. A
        failure of the root is raised as itself, not in the task group's ExceptionGroup.
        """
        self.outboxes.append(outbox)
        fn = node.fn

        def job() -> None:
            try:
                check_result(node, fn(outbox))
            finally:
                outbox.finish()

        error: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward)
            with anyio.CancelScope() as scope:
                node.scope = scope
                if self.stopping:
                    outbox.stop()
                    scope.cancel()
                try:
                    await self.lane(node).run(job)
                except Stopped:
                    pass  # what it emitted before still drains
                except FAILURES as exc:
                    error = exc
                    tg.cancel_scope.cancel()
        if error is not None:
            raise error
        if outbox.items:  # emitted while stop() was being called, after the outbox's last look
            self.drop(node, len(outbox.items))

    def woken(self) -> None:
        """The loop was woken from a stage's thread (the waker's ``notify``); nothing to do here."""

    def needs_threads(self) -> bool:
        """Whether any stage is a plain function."""
        return any(not n.is_async for n in self.nodes)

    def close_lanes(self) -> None:
        """Let the plain stages' threads exit."""
        for lanes in self._lanes.values():
            for lane in lanes:
                lane.close()
        self._lanes.clear()


def check_result(node: Node, result: Any) -> None:
    """A plain stage that returned a coroutine forgot ``async``: that is its error, not a silent no-op."""
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TypeError(f"stage {node.name!r}: the plain function returned an awaitable; declare it 'async def'")
