"""The parallel engine: a task per stage worker, connected by bounded inboxes (``_edge``).

A stage finishes when its parent has finished and its inbox is empty; it
then closes its children's inboxes, so a finished root drains its subtree
in order. Plain functions run on the stage's own daemon thread in slices of
a few milliseconds (one thread hop per slice, not per message), and a plain
root emits through an ``Outbox`` that blocks its thread while the edge is full.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import anyio

from ._edge import AsyncCollector, Collector, Inbox, emitter
from ._engine import FAILURES, Engine, check_result
from ._lanes import Outbox, Stopped
from ._stage import Node

__all__ = ["ParallelEngine"]

_END: Any = object()
_SLICE = 0.002  # seconds of work per thread hop: hop cost well under 1%, output latency bounded
_perf = time.perf_counter


class ParallelEngine(Engine):
    """Every stage worker is a task; edges are bounded buffers with backpressure."""

    name = "parallel"

    def __init__(self, nodes: list[Node], options: Any = None) -> None:
        super().__init__(nodes)
        self._emits: dict[str, Any] = {}
        self._pools: dict[str, _Pool] = {}

    def depth(self, node: Node) -> int:
        """Waiting on the edge plus taken and not started."""
        inbox = node.inbox
        return node.remaining() + (len(inbox.items) if inbox is not None else 0)

    async def run_nodes(self) -> None:
        """Run every stage; returns when all have finished, were cut off, or one failed."""
        for node in self.nodes:
            node.reset()
            if node.role != "root":
                node.inbox = Inbox(node.buffer, node)
        for node in self.nodes:
            self._emits[node.name] = emitter([c.inbox for c in node.children], node)
        async with anyio.create_task_group() as stages:
            for node in self.nodes:
                stages.start_soon(self._run_node, node, name=f"pipeline stage {node.name}")

    def held(self, node: Node) -> int:
        """Outputs an ordered pool finished and holds for their turn."""
        pool = self._pools.get(node.name)
        return sum(len(out) for out in pool.ready.values()) if pool is not None else 0

    def stop_roots(self) -> None:
        """Cancel async roots, make plain roots' next emit raise; the rest drains.

        The roots' edges are sealed too: a root that catches the cancellation
        gets ``Stopped`` from its next ``emit`` instead of feeding the drain.
        """
        super().stop_roots()
        for node in self.roots:
            if node.is_async:  # a plain root's outbox is stopped instead, and what it holds drains
                for child in node.children:
                    child.inbox.seal()
            if node.scope is not None:
                node.scope.cancel()

    async def _run_node(self, node: Node) -> None:
        if node.role == "root":
            done = await self._root(node)
        elif node.workers > 1:
            done = await self._pool(node)
        elif node.is_async:
            done = await self._single(node)
        else:
            done = await self._single_plain(node)
        await self.finish_node(node, done)

    async def finish_node(self, node: Node, done: bool) -> None:
        """A stage ended: when it finished (not failed), its children's edges end."""
        if done:
            for child in node.children:
                child.inbox.close()

    # -- roots -------------------------------------------------------------------------------

    async def _root(self, node: Node) -> bool:
        emit = self._emits[node.name]
        started = _perf()
        node.active = 1
        try:
            if node.is_async:
                with anyio.CancelScope() as scope:
                    node.scope = scope
                    if self.stopping:
                        scope.cancel()
                    await node.fn(emit)
            else:
                await self._plain_root(node, emit)
        except Stopped:
            pass  # its edges were sealed by stop(): what it emitted before drains
        except FAILURES as exc:
            self.fail(node, None, exc)
            return False
        finally:
            node.active = 0
            node.busy += _perf() - started
        return True

    async def _plain_root(self, node: Node, emit: Any) -> None:
        """The root's function on its thread; what it emits is forwarded from the outbox.

        A stop cancels only the wait for the thread (which may be blocked in its own
        code, where nothing can interrupt it): what is already in the outbox drains.
        """
        assert self.waker is not None
        inboxes = [child.inbox for child in node.children]

        def backlog() -> int:  # read from the root's thread: lengths only, atomic under the GIL
            return max((len(inbox.items) + inbox.node.remaining() for inbox in inboxes), default=0)

        # The thread waits while what it emitted and its children's edges reach the
        # smallest child buffer: the outbox adds no hidden buffer of its own.
        cap = min((inbox.cap for inbox in inboxes), default=node.buffer)
        outbox = Outbox(self.waker, cap, backlog)
        for inbox in inboxes:
            inbox.on_take = outbox.room.set
        await self.run_plain_root(node, outbox, functools.partial(outbox.forward, emit.many))

    # -- one worker --------------------------------------------------------------------------

    async def _single(self, node: Node) -> bool:
        """An async stage with one worker: the hot loop."""
        inbox, fn = node.inbox, node.fn
        emit = self._emits[node.name] if node.children else None
        while (batch := inbox.take() or await _take(inbox)) is not None:
            it = node.load(batch)
            node.active = 1  # from here to the end of the batch, one message is always in flight
            started = _perf()
            try:
                if emit is None:
                    for msg in it:
                        await fn(msg)
                else:
                    for msg in it:
                        await fn(msg, emit)
            except FAILURES as exc:
                self.fail(node, node.index(it), exc)
                return False
            finally:
                node.busy += _perf() - started
            node.cursor = None
            node.active = 0
        return True

    async def _single_plain(self, node: Node) -> bool:
        """A plain stage with one worker: slices of the batch on the stage's thread."""
        inbox = node.inbox
        lane = self.lane(node)
        forward = self._emits[node.name].many if node.children else None
        job = functools.partial(_slice, node, node.fn, bool(node.children))
        while (batch := inbox.take() or await _take(inbox)) is not None:
            it = node.load(batch)
            node.active = 1
            started = _perf()
            try:
                while True:
                    out, error = await lane.run(functools.partial(job, it))
                    if out:
                        assert forward is not None
                        await forward(out)
                    if error is not None:
                        self.fail(node, node.index(it), error)
                        return False
                    if not it.__length_hint__():
                        break
            finally:
                node.busy += _perf() - started
            node.cursor = None
            node.active = 0
        return True

    # -- several workers ---------------------------------------------------------------------

    async def _pool(self, node: Node) -> bool:
        """``workers`` tasks share the stage's inbox; ordered stages put outputs back in order."""
        pool = self._pools[node.name] = _Pool(self, node)
        async with anyio.create_task_group() as tg:
            for worker in range(node.workers):
                tg.start_soon(pool.work, worker)
        return not pool.failed


class _Pool:
    """The shared state of a stage's workers: the batch they pull from, and the reorder buffer."""

    def __init__(self, engine: ParallelEngine, node: Node) -> None:
        self.engine = engine
        self.node = node
        self.emit = engine._emits[node.name] if node.children else None
        self.forward = self.emit.many if self.emit is not None else None
        self.collect = node.children and node.ordered  # outputs wait for their turn
        self.pulled = 0  # units handed out, in order: the sequence numbers of the reorder buffer
        self.next = 0  # the next sequence number to forward
        self.ready: dict[int, list[Any]] = {}
        self.forwarding = False
        self.moved: anyio.Event | None = None
        self.window = max(2 * node.workers, 16)  # units a worker may run ahead of the slowest
        self.failed = False

    async def work(self, worker: int) -> None:
        node, engine, inbox = self.node, self.engine, self.node.inbox
        fn = node.fn
        lane = None if node.is_async else engine.lane(node, worker)
        while not self.failed:
            if self.collect and self.pulled - self.next >= self.window:
                await self._wait_moved()
                continue
            it = node.cursor
            unit = next(it, _END) if it is not None else _END
            if unit is _END:
                # Take the next batch only once the current one is used up: a worker that
                # waited must look at the cursor again (another may have loaded one meanwhile).
                batch = inbox.take()
                if batch is not None:
                    node.load(batch)
                elif inbox.closed:
                    return
                else:
                    await inbox.wait()
                continue
            index = node.index(it)
            seq = self.pulled
            self.pulled += 1
            node.active += 1
            started = _perf()
            try:
                if lane is not None:
                    out, error = await lane.run(functools.partial(_one, node, fn, unit, bool(node.children)))
                    if error is not None:
                        raise error
                elif self.emit is None:
                    out = None
                    await fn(unit)
                elif self.collect:
                    out = AsyncCollector()
                    await fn(unit, out)
                else:
                    out = None
                    await fn(unit, self.emit)
            except FAILURES as exc:
                self.failed = True
                engine.fail(node, index, exc)
                return
            finally:
                node.active -= 1
                node.busy += _perf() - started
            if self.collect:
                self.ready[seq] = out or []
                await self._forward_in_order()
            elif out:
                assert self.forward is not None
                await self.forward(out)

    async def _forward_in_order(self) -> None:
        """Forward every consecutive finished unit; one worker at a time does it."""
        if self.forwarding:
            return
        self.forwarding = True
        try:
            assert self.forward is not None
            while self.next in self.ready:
                out = self.ready.pop(self.next)
                self.next += 1
                if out:
                    await self.forward(out)
                moved, self.moved = self.moved, None
                if moved is not None:
                    moved.set()
        finally:
            self.forwarding = False

    async def _wait_moved(self) -> None:
        if self.moved is None:
            self.moved = anyio.Event()
        await self.moved.wait()


async def _take(inbox: Inbox) -> list[Any] | None:
    """The next batch on ``inbox``, waiting for one; None once it is closed and empty."""
    while (batch := inbox.take()) is None:
        if inbox.closed:
            return None
        await inbox.wait()
    return batch


def _slice(node: Node, fn: Any, with_emit: bool, it: Any) -> tuple[list[Any], BaseException | None]:
    """On the stage's thread: run messages from ``it`` for about ``_SLICE`` seconds."""
    out = Collector()
    deadline = _perf() + _SLICE
    try:
        if with_emit:
            for msg in it:
                result = fn(msg, out)
                if result is not None:
                    check_result(node, result)
                if _perf() > deadline:
                    break
        else:
            for msg in it:
                result = fn(msg)
                if result is not None:
                    check_result(node, result)
                if _perf() > deadline:
                    break
    except FAILURES as exc:
        return out, exc
    return out, None


def _one(node: Node, fn: Any, unit: Any, with_emit: bool) -> tuple[list[Any], BaseException | None]:
    """On a worker's thread: run one message (or batch)."""
    out = Collector()
    try:
        check_result(node, fn(unit, out) if with_emit else fn(unit))
    except FAILURES as exc:
        return out, exc
    return out, None
