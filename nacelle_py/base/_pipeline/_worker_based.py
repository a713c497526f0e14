"""The worker-based engine: every edge a Redis stream, every stage a consumer group, any replica.

The stage loops are the parallel engine's (one worker or a pool, ordered or
not, async or plain, single messages or batches); what changes is where
messages wait. A stage's input edge is a ``StreamInbox`` (read from Redis)
and its ``emit`` an ``Outbound`` (flushed to Redis), so the same tree can run
with all its stages in one process or spread over many: a replica runs the
stages ``PIPELINE_STAGES`` names and reads and writes the edges of those.

Every message carries its id (``_message``), and the id wrappers report each
input done behind its outputs, which is what lets an input be acknowledged
only once everything it caused is on the child edges.

A finite pipeline ends as on the other engines: a root that returns (or is
stopped) sends the end behind its messages; the end moves on from a stage's
edge to its children's once every message before it was acknowledged, by
whichever replica held it (``FINISH``), and every replica running the stage
finishes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import anyio

from ..._health import HealthComponent
from .._redis._client import consumer_name, make_client
from .._redis._retry import Reachability, until_done
from .._redis._streams import StreamGroup
from ._engine import Engine
from ._lanes import Outbox
from ._message import carry_ids
from ._parallel import ParallelEngine
from ._stage import Node
from ._stream_edge import StreamInbox
from ._stream_out import Outbound
from ._stream_scripts import DEAD, EXPLODE, FINISH, FLUSH

__all__ = ["WorkerBasedEngine", "WorkerOptions", "Wiring"]

COUNT_EVERY = 1.0  # seconds between looks at the edges' lag and pending counts (stats)
HAND_BACK_WITHIN = 5.0  # seconds a failed or cut-off run spends giving back what it held


@dataclass(frozen=True)
class WorkerOptions:
    """What the worker-based engine needs from the Pipeline: where, which stages, how long a lease."""

    redis_url: str
    namespace: str
    stages: frozenset[str]
    lease: float
    max_deliveries: int
    log: Any
    health: HealthComponent | None = None


class Wiring:
    """What the edges and outbounds of one run share: key names, options, the client, retried calls."""

    def __init__(self, options: WorkerOptions, engine: WorkerBasedEngine) -> None:
        self.options = options
        self.client: Any = None  # the run's, once it has connected
        self.engine = engine
        self.lease = options.lease
        self.max_deliveries = options.max_deliveries
        self.consumer = consumer_name()
        self.reach = Reachability(options.redis_url, self.log, options.health, namespace=options.namespace)
        self._ns = options.namespace

    def edge(self, stage: str) -> str:
        """The stream of the edge into ``stage``."""
        return f"{self._ns}:edge:{stage}"

    def count(self, stage: str) -> str:
        """The count of messages on the edge into ``stage``."""
        return f"{self._ns}:count:{stage}"

    def end_key(self, stage: str) -> str:
        """The id of the last end that went through the edge into ``stage``."""
        return f"{self._ns}:end:{stage}"

    def run_key(self, node: Node) -> str:
        """The token of the latest run of ``node``'s root (an end carries the token of its run)."""
        while node.parent is not None:
            node = node.parent
        return f"{self._ns}:run:{node.name}"

    def dead(self, stage: str) -> str:
        """The dead-letter stream of ``stage``."""
        return f"{self._ns}:dead:{stage}"

    @staticmethod
    def chunk_for(node: Node) -> int:
        """Messages per stream entry on ``node``'s outputs: a quarter of the smallest child buffer, at most 256."""
        if not node.children:
            return 1
        return max(1, min(256, min(child.buffer for child in node.children) // 4))

    def chunk_of(self, node: Node) -> int:
        """Messages per entry on the edge into ``node``."""
        return self.chunk_for(node.parent) if node.parent is not None else 1

    def log(self, level: str, event: str, **fields: Any) -> None:
        """One log line through the pipeline's logger."""
        getattr(self.options.log, level)(event, **fields)

    async def call(self, fn: Any, inbox: StreamInbox | None) -> Any:
        """``await fn()``, retried with backoff while Redis is unreachable (given up once the run was cut
        short); after a failure, ``inbox`` re-reads its own pending entries."""
        reach = self.reach

        def lost(exc: BaseException) -> None:
            if inbox is not None:
                inbox.reread = True
            reach.lost(exc)

        regroup = inbox.group.ensure if inbox is not None else None
        return await until_done(
            fn, lost=lost, connected=reach.connected, regroup=regroup, give_up=lambda: self.engine.halted
        )


class WorkerBasedEngine(ParallelEngine):
    """Edges are Redis streams; a replica runs the stages it is given; see the module docstring."""

    name = "worker-based"
    carries_ids = True

    def __init__(self, nodes: list[Node], options: WorkerOptions | None = None) -> None:
        assert options is not None, "the worker-based engine needs its options"
        self.options = options
        self.outs: dict[str, Outbound] = {}
        self._stages: anyio.CancelScope | None = None
        self._withheld = False  # a stop left messages read and not started: given back at the end
        self.wiring = Wiring(options, self)
        self.local = [node for node in nodes if node.name in options.stages]
        self.outs = {node.name: Outbound(node, self.wiring) for node in self.local}
        super().__init__(nodes)
        self._draining: set[str] = set()  # stages that drain through the end when stopped

    def wrap(self, nodes: list[Node]) -> None:
        """Ids everywhere, and each stage reports the messages it is done with (a leaf to its outbound)."""
        carry_ids(nodes, always=True, acks=lambda node: self.outs[node.name].ack if node.name in self.outs else None)

    # -- the run -----------------------------------------------------------------------------------

    async def run_nodes(self) -> None:
        """Connect, make the groups, then run the local stages with their readers and flushers."""
        options = self.options
        for node in self.nodes:
            node.reset()
        local_inputs = [node for node in self.local if node.role != "root"]
        client = make_client(
            options.redis_url, name=f"nacelle pipeline {options.namespace}", max_connections=len(local_inputs) + 8
        )
        async with client:
            wiring = self.wiring
            wiring.client = client
            groups = {
                node.name: StreamGroup(client, wiring.edge(node.name), node.name, wiring.consumer)
                for node in self.nodes
                if node.role != "root"
            }

            async def prepare() -> dict[str, Any]:
                for group in groups.values():  # every edge: a replica may emit into edges it does not read
                    await group.ensure()
                for script in (FLUSH, FINISH, EXPLODE, DEAD):
                    await client.script_load(script)
                for node in self.local:  # a new run of a root: an end its earlier runs left is stale now
                    if node.role == "root":
                        await client.set(wiring.run_key(node), self.outs[node.name].token)
                return {node.name: await client.get(wiring.end_key(node.name)) for node in local_inputs}

            baselines = await wiring.call(prepare, None)
            for node in local_inputs:
                node.inbox = StreamInbox(node, wiring, groups[node.name])
            for node in self.local:
                self._emits[node.name] = self.outs[node.name].attach(node.inbox)
            self._draining = {node.name for node in self.local if self._ancestors_local(node)}
            async with anyio.create_task_group() as tg:
                for node in self.local:
                    tg.start_soon(self.outs[node.name].run)
                for node in local_inputs:
                    tg.start_soon(node.inbox.read, baselines[node.name])
                tg.start_soon(self._keeper)
                tg.start_soon(self._counter)
                async with anyio.create_task_group() as stages:
                    self._stages = stages.cancel_scope
                    for node in self.local:
                        stages.start_soon(self._run_node, node, name=f"pipeline stage {node.name}")
                if self.halted or self._withheld:
                    # Flush what the stages finished first (nothing done is given back), and the end of
                    # a root cut off by a stop (its downstream replicas still end); then give back the rest.
                    with anyio.move_on_after(HAND_BACK_WITHIN):
                        for node in self.local:
                            ends = node.role == "root" and self.stopping and self.failure is None
                            await self.outs[node.name].close(end=ends)
                    with anyio.move_on_after(HAND_BACK_WITHIN):
                        await self._hand_back(local_inputs)
                tg.cancel_scope.cancel()

    async def _hand_back(self, inputs: list[Node]) -> None:
        """A failure or a cut-off stopped the stages: stop reading, then give back what is held."""
        for node in inputs:
            node.inbox.stopping = True
        for node in inputs:
            if node.inbox.done is not None:
                await node.inbox.done.wait()
        for node in inputs:
            given = await node.inbox.hand_back()
            if given:
                self.wiring.log(
                    "info",
                    "pipeline messages given back to their edge for other replicas",
                    stage=node.name,
                    messages=given,
                )

    def halt(self) -> None:
        """Cancel the local stages only: the readers, the client and the hand-back outlive them."""
        self.halted = True  # also: Redis calls give up instead of waiting for Redis
        if self._stages is not None:
            self._stages.cancel()
        else:
            super().halt()

    def _ancestors_local(self, node: Node) -> bool:
        parent = node.parent
        while parent is not None:
            if parent.name not in self.options.stages:
                return False
            parent = parent.parent
        return True

    async def finish_node(self, node: Node, done: bool) -> None:
        """A local stage ended: flush its outbound; a root that ended (not failed) sends the end."""
        out = self.outs.get(node.name)
        if out is not None and done:
            await out.close(end=node.role == "root")

    async def _keeper(self) -> None:
        """Renew the leases of every chunk the local stages hold, four times per lease."""
        wiring = self.wiring
        while True:
            await anyio.sleep(wiring.lease / 4)
            for node in self.local:
                inbox = node.inbox
                if node.role == "root" or inbox is None:
                    continue
                ids = inbox.leased()
                if not ids:
                    continue
                lost = await wiring.call(functools.partial(inbox.group.renew, ids), inbox)
                for entry_id in lost or ():
                    if inbox.held.pop(entry_id, None) is not None or inbox.ends.pop(entry_id, None) is not None:
                        wiring.log(
                            "warning",
                            "pipeline lease lost: another replica took the chunk over",
                            stage=node.name,
                            entry=entry_id.decode(),
                        )

    async def _counter(self) -> None:
        """The lag and pending counts of the local stages' edges, for stats (once a second)."""
        wiring = self.wiring
        while True:
            for node in self.local:
                inbox = node.inbox
                if node.role == "root" or inbox is None:
                    continue
                counts = await wiring.call(inbox.group.counts, inbox)
                if counts is not None:
                    _, inbox.pending, lag = counts
                    inbox.lag = lag or 0
            await anyio.sleep(COUNT_EVERY)

    def freed(self, node: Node) -> None:
        """``node`` acknowledged messages here: its parent's outbound, if here and waiting, goes on."""
        parent = node.parent
        if parent is not None:
            out = self.outs.get(parent.name)
            if out is not None:
                out.freed()

    def woken(self) -> None:
        """A plain leaf's thread acknowledged messages: its flusher looks."""
        for out in self.outs.values():
            out.woken()

    # -- roots -------------------------------------------------------------------------------------

    async def _plain_root(self, node: Node, emit: Any) -> None:
        """A plain root's thread emits into an outbox bounded by what its outbound has not flushed."""
        assert self.waker is not None
        out = self.outs[node.name]
        # As for an async root: what the outbound holds and what its fullest child edge holds count
        # against the bound (the outbox adds no buffer of its own).
        outbox = Outbox(self.waker, out.bound, out.backlog, out.blocked)
        out.on_room = outbox.room.set
        await self.run_plain_root(node, outbox, functools.partial(outbox.forward, out.many))

    # -- stopping ----------------------------------------------------------------------------------

    def stop_roots(self) -> None:
        """Stop the local roots (their end follows what they emitted); stages fed from elsewhere stop
        reading, finish the messages in flight and give back the ones they had not started."""
        Engine.stop_roots(self)
        for node in self.local:
            if node.role == "root":
                if node.is_async:  # a plain root's outbox is stopped instead, and what it holds drains
                    self.outs[node.name].sealed = True
                if node.scope is not None:
                    node.scope.cancel()
            elif node.name not in self._draining and isinstance(node.inbox, StreamInbox):
                # Fed from another replica: stop reading, finish what is in flight, give back the rest.
                node.inbox.stopping = True
                node.inbox.withhold()
                self._withheld = True

    # -- stats -------------------------------------------------------------------------------------

    def depth(self, node: Node) -> int:
        """Messages waiting for the stage here: read and not started, and emitted by a local parent and
        not yet flushed (the edge's backlog in Redis is ``lag``)."""
        inbox = node.inbox
        waiting = node.remaining() + (len(inbox.items) if inbox is not None else 0)
        parent = node.parent
        if parent is not None and parent.name in self.outs:
            waiting += self.outs[parent.name].waiting
        return waiting

    def emitted(self, node: Node) -> int:
        """Messages the stage emitted here (each went to every child's edge)."""
        out = self.outs.get(node.name)
        return out.sent if out is not None else 0

    def extra(self, node: Node) -> dict[str, int]:
        """The edge's counts for ``stats()``: lag, pending, reclaimed, dead_lettered."""
        inbox = node.inbox
        if not isinstance(inbox, StreamInbox):
            return {}
        return {
            "lag": inbox.lag,
            "pending": inbox.pending,
            "reclaimed": inbox.reclaimed,
            "dead_lettered": inbox.dead_lettered,
        }
