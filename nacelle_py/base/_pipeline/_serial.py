"""The serial engine: one task, depth-first, deterministic — the reference semantics.

``emit(item)`` hands the item to each child in turn and returns once the
child's whole subtree has handled it; roots run one after another. Nothing
is buffered, so the order in which every stage sees its messages depends
only on the code, which makes this engine the tool for tests. Plain
functions still run on a thread (one hop per message): a blocking call
must not block the event loop, whatever the engine.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import anyio.lowlevel

from ..._errors import RegistrationError
from ._edge import Collector, pieces
from ._engine import FAILURES, Engine, check_result
from ._lanes import Outbox, Stopped
from ._stage import Node

__all__ = ["SerialEngine"]

_perf = time.perf_counter
Deliver = Callable[[Any], Awaitable[None]]


_FRAMES_PER_STAGE = 4  # emit -> deliver one -> call -> the stage's function
_MOST_STAGES = 2000  # 8,000 nested frames: far below what the C stack allows
_HEADROOM = 300  # frames below the root (the caller, the App, anyio) and inside a stage's own code


def _depth(node: Node) -> int:
    depth = 1
    while node.parent is not None:
        node, depth = node.parent, depth + 1
    return depth


def _allow_depth(depth: int) -> None:
    """Raise the interpreter's recursion limit so a tree ``depth`` stages deep runs.

    Only ever raised, never lowered: another task or thread may be deep in
    nested calls that the higher limit already allowed.
    """
    needed = depth * _FRAMES_PER_STAGE + _HEADROOM
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


class _Abort(BaseException):
    """Unwinds the stages above a failed one (a parent's ``except Exception`` must not catch it)."""


class SerialEngine(Engine):
    """One task runs everything, depth-first."""

    name = "serial"

    def __init__(self, nodes: list[Node], options: Any = None) -> None:
        super().__init__(nodes)
        self._one: dict[str, Deliver] = {}  # deliver one message to a stage
        self._many: dict[str, Callable[[list[Any]], Awaitable[None]]] = {}  # deliver several
        self._in_emit = False  # the current root is inside emit (its subtree is working)
        self._current: Node | None = None
        self._emitted = 0  # by the roots: every 256th emit lets other tasks run

    @classmethod
    def check(cls, nodes: list[Node], owner: str) -> None:
        """Refuse a tree deeper than ``_MOST_STAGES``: a message goes down it as nested calls."""
        depth = max(_depth(node) for node in nodes)
        if depth > _MOST_STAGES:
            raise RegistrationError(
                f"{owner}: the stage tree is {depth} stages deep; the serial engine runs a message "
                f"through its subtree as nested calls and goes to {_MOST_STAGES} stages deep. "
                "Use engine='parallel' (or PIPELINE_ENGINE=parallel) for this tree"
            )

    def started(self, node: Node) -> int:
        """Every message a stage took is started at once."""
        return node.taken

    def depth(self, node: Node) -> int:
        """Nothing waits: a message is handed over directly."""
        return 0

    async def run_nodes(self) -> None:
        """Run the roots in order; each returns once its last message has gone through its subtree."""
        for node in self.nodes:
            node.reset()
        for node in reversed(self.nodes):  # children first: a stage's emit calls its children's deliverers
            self._wire(node)
        _allow_depth(max(_depth(node) for node in self.nodes))
        for root in self.roots:
            if self.stopping or self.failure is not None:
                break
            await self._root(root)

    def stop_roots(self) -> None:
        """Let the current message finish its subtree; the root's next emit ends it."""
        super().stop_roots()
        current = self._current
        if current is not None and not self._in_emit and current.scope is not None:
            current.scope.cancel()  # the root waits for its own input: nothing is in flight

    # -- wiring ------------------------------------------------------------------------------

    def _emit_for(self, node: Node) -> Any:
        """The ``emit`` a stage is given: deliver to every child, depth-first."""
        ones = [self._one[c.name] for c in node.children]
        manys = [self._many[c.name] for c in node.children]

        async def emit(item: Any) -> None:
            if not ones:
                node.out += 1
            for one in ones:
                await one(item)

        async def many(items: Iterable[Any]) -> None:
            for chunk in pieces(items, 1024):  # an iterator is read a piece at a time
                if not manys:
                    node.out += len(chunk)
                for deliver in manys:
                    await deliver(chunk)

        emit.many = many  # type: ignore[attr-defined]
        return emit

    def _wire(self, node: Node) -> None:
        if node.role == "root":
            return
        emit = self._emit_for(node) if node.children else None
        fn = node.fn
        size = node.batch

        async def call(unit: Any, index: int) -> None:
            node.active += 1
            started = _perf()
            try:
                if node.is_async:
                    await (fn(unit, emit) if emit is not None else fn(unit))
                else:
                    out = await self.lane(node).run(functools.partial(_call_plain, node, fn, unit, emit is not None))
                    if out:
                        assert emit is not None
                        await emit.many(out)
            except (_Abort, Stopped):
                raise
            except FAILURES as exc:
                self.fail(node, index, exc)
                raise _Abort from exc
            finally:
                node.active -= 1
                node.busy += _perf() - started

        async def one(item: Any) -> None:
            index = node.taken
            node.taken = index + 1
            await call([item] if size else item, index)

        async def many(items: list[Any]) -> None:
            if not size:
                for item in items:
                    await one(item)
                return
            step = len(items) if size < 0 else size
            for start in range(0, len(items), step or 1):
                unit = items[start : start + step]
                index = node.taken
                node.taken = index + len(unit)
                await call(unit, index)

        self._one[node.name] = one
        self._many[node.name] = many

    # -- roots -------------------------------------------------------------------------------

    async def _root(self, node: Node) -> None:
        inner = self._emit_for(node)

        async def push(item: Any) -> None:
            self._in_emit = True
            try:
                await inner(item)
            finally:
                self._in_emit = False

        async def emit(item: Any) -> None:
            if self.stopping:
                raise Stopped
            self._emitted += 1
            if not self._emitted & 255:
                # Nothing below may ever wait: without this, a busy root would never let
                # another task (a stop(), a signal handler, a cancellation) run.
                await anyio.lowlevel.checkpoint()
                if self.stopping:
                    raise Stopped
            await push(item)

        async def many(items: Iterable[Any]) -> None:
            await anyio.lowlevel.checkpoint()
            if self.stopping:
                raise Stopped
            self._in_emit = True
            try:
                await inner.many(items)
            finally:
                self._in_emit = False

        emit.many = many  # type: ignore[attr-defined]
        self._current = node
        started = _perf()
        node.active = 1
        try:
            if node.is_async:
                with anyio.CancelScope() as scope:
                    node.scope = scope
                    await node.fn(emit)
            else:
                await self._plain_root(node, push)
        except (Stopped, _Abort):
            pass
        except FAILURES as exc:
            self.fail(node, None, exc)
        finally:
            node.active = 0
            node.busy += _perf() - started
            self._current = None

    async def _plain_root(self, node: Node, push: Any) -> None:
        """The root's function on its thread; each ``emit`` waits until the loop has run the subtree.

        The thread hands one message at a time to an outbox of size 1 and waits
        there until the message has gone through the subtree: depth-first, as
        for an async root, with every delivery inside the run's cancel scope.
        What is in the outbox was accepted (the thread's ``emit`` returns once it
        is taken), so it goes through even when a stop came after it: ``push``
        does not look at the stop, the outbox does, at the thread's next ``emit``.
        """
        assert self.waker is not None
        outbox = Outbox(self.waker, 1)

        async def deliver(chunk: list[Any]) -> None:
            for item in chunk:
                await push(item)

        async def forward() -> None:
            try:
                await outbox.forward(deliver)
            except (Stopped, _Abort):
                outbox.stop()  # the root's next emit ends it

        await self.run_plain_root(node, outbox, forward)


def _call_plain(node: Node, fn: Any, unit: Any, with_emit: bool) -> list[Any]:
    out = Collector()
    check_result(node, fn(unit, out) if with_emit else fn(unit))
    return out
