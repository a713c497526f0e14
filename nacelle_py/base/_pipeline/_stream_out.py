"""The sending side of a worker-based stage: its outputs and its acknowledgements, flushed in order.

``emit`` serialises each message at once (a message that is not JSON is the
emitting stage's error, raised by ``emit`` itself) and appends it to the
stage's log; when the stage is done with an input message, the input itself
is appended (the id wrappers of ``_message`` do it after the function
returned, through the same ``emit``, so an ordered stage's reorder buffer
keeps it behind its outputs). A flusher task turns the log into ``FLUSH``
ops: the outputs in chunks (one stream entry per chunk, for every child),
and after them the acknowledgements of the inputs whose messages are all
done. One script call applies many ops, atomically and in order.

Backpressure: ``FLUSH`` adds a chunk only where the child's edge has room
(its ``buffer``, counted in messages); otherwise the flusher waits and tries
again, and ``emit`` waits while what the log holds and what the fullest
child edge held at the last flush reach that child's ``buffer``: the
parent waits for its child, as on the other engines, and what waits for a
stage (on its edge, or in its parent's log) stays within its buffer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
from pydantic_core import PydanticSerializationError, to_json

from ._edge import READY
from ._lanes import Stopped
from ._stream_edge import Delivered, Entry, StreamInbox
from ._stream_scripts import FLUSH

if TYPE_CHECKING:
    from ._stage import Node
    from ._worker_based import Wiring

__all__ = ["Outbound"]

OPS_PER_CALL = 300  # ops per script call: a few hundred chunks, far below Lua's argument limits


class Outbound:
    """One local stage's way out; see the module docstring."""

    def __init__(self, node: Node, wiring: Wiring) -> None:
        self.node = node
        self.wiring = wiring
        self.inbox: StreamInbox | None = None
        children = node.children
        self.chunk = wiring.chunk_for(node)
        self.bound = min((child.buffer for child in children), default=1024)
        self.keys = [wiring.edge(node.name), wiring.count(node.name)]
        for child in children:
            self.keys += [wiring.edge(child.name), wiring.count(child.name)]
        self.head: list[Any] = [node.name, len(children), *[child.buffer for child in children]]  # the group
        self.script: Any = None
        self.token = os.urandom(6).hex()  # this run's, carried by a root's end (see _stream_scripts)
        self.log: list[Any] = []  # bytes: an output's JSON; Delivered: an input done
        self.waiting = 0  # outputs in the log or being flushed
        self.edge_count = 0  # the fullest child edge's messages, as the last flush saw them
        self.sent = 0  # outputs emitted (each goes to every child)
        self.sealed = False  # a stopped root: emit raises Stopped
        self.closing = False
        self.end = False  # when closing: pass the end on to the children
        self._wake: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._done = anyio.Event()
        self.threaded = not node.is_async and not children  # a plain leaf acknowledges from its thread
        self.probe = False  # a plain root's thread waits on the edge's count: look at it again
        self._probe_pause = 0.001
        self.from_thread = False
        self.on_room: Any = None
        self._freed: anyio.Event | None = None  # told when a flush made room (a plain root's thread waits for it)
        self._where = f"stage {node.name!r}"

    def attach(self, inbox: StreamInbox | None) -> Outbound:
        """For the run: the stage's input edge (whose chunks this acknowledges) and the connected client."""
        self.inbox = inbox
        self.script = self.wiring.client.register_script(FLUSH)
        return self

    # -- emitting ---------------------------------------------------------------------------------

    def emit(self, item: Any) -> Any:
        """Append an output (a ``Message``) or an input done (a ``Delivered``); wait when the log is full."""
        if type(item) is Delivered:
            self.log.append(item)
            self._kick()
            return READY
        if self.sealed:
            raise Stopped
        self.log.append(self._encode(item))
        self.sent += 1
        self.waiting += 1
        self._kick()
        if self.waiting + self.edge_count >= self.bound:
            return self._wait_room()
        return READY

    async def many(self, items: Iterable[Any]) -> None:
        """``emit`` each item, in order, waiting for room as needed (``emit``'s loop, inlined)."""
        append = self.log.append
        for item in items:
            if type(item) is Delivered:
                append(item)
                continue
            if self.sealed:
                raise Stopped
            try:
                append(to_json((item.id, item.body)))
            except PydanticSerializationError as exc:
                raise self._unsendable(item, exc) from None
            self.sent += 1
            self.waiting = waiting = self.waiting + 1
            if waiting + self.edge_count >= self.bound:
                self._kick()
                await self._wait_room()
                append = self.log.append  # the flusher has swapped the log meanwhile
        self._kick()

    __call__ = emit  # the outbound is the stage's emit (with .many)

    def ack(self, msg: Any) -> None:
        """A leaf is done with ``msg`` (nothing to order it behind).

        A plain leaf calls this on its thread: the append is atomic, and the
        loop is woken through the engine's waker, once per wake-up (``woken``).
        """
        self.log.append(msg)
        if not self.threaded:
            self._kick()
        elif not self.from_thread:
            self.from_thread = True
            waker = self.wiring.engine.waker
            if waker is not None:
                waker.notify()

    def woken(self) -> None:
        """On the loop, after a thread's wake-up: let the flusher look at the log (or at the edge)."""
        if self.from_thread or self.probe:
            self.from_thread = False
            self._kick()

    def _encode(self, msg: Any) -> bytes:
        try:
            return to_json((msg.id, msg.body))
        except PydanticSerializationError as exc:
            raise self._unsendable(msg, exc) from None

    def _unsendable(self, msg: Any, exc: Exception) -> TypeError:
        return TypeError(
            f"{self._where} emitted a message that cannot be sent as JSON on the worker-based engine: "
            f"{type(msg.body).__name__} {msg.body!r:.80} ({exc}); emit ints, strings, lists, dicts or "
            "pydantic models"
        )

    async def _wait_room(self) -> None:
        # Until what this emit appended was flushed, or the log and the edge are below the bound again
        # (the count is as the last flush saw it: once the log is empty there is nothing to wait for).
        while self.waiting and self.waiting + self.edge_count >= self.bound and not self.closing:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    def _kick(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    # -- flushing ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """The flusher: until ``close`` and an empty log (then the end, if asked)."""
        try:
            while True:
                if not self.log:
                    if self.closing:
                        break
                    if self.probe:
                        await self._probe()
                        continue
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                log, self.log = self.log, []
                ops, acked, outputs = self._ops(log)
                if await self._send(ops):
                    for item in log:
                        if type(item) is Delivered:
                            item.done = True
                if self.inbox is not None and acked:
                    for entry in acked:
                        self.inbox.acked(entry)
                    self.wiring.engine.freed(self.node)  # a local parent waiting for room on this edge
                self.waiting -= outputs
                room, self._room = self._room, None
                if room is not None:
                    room.set()
                if self.on_room is not None:
                    self.on_room()
            if self.end:
                await self._send(["E", b"E:" + self.token.encode(), ""])
        finally:
            self._done.set()

    def backlog(self) -> int:
        """What counts against a plain root's bound, read from its thread: the unflushed messages and the
        fullest child edge (as the last flush or probe saw it)."""
        return self.waiting + self.edge_count

    def blocked(self) -> None:
        """A plain root's thread waits for room: when only the edge's count (maybe old) holds it back,
        the flusher looks at the edge again (``_probe``), woken through the engine's waker."""
        if not self.waiting and self.edge_count and not self.probe:
            self.probe = True
            waker = self.wiring.engine.waker
            if waker is not None:
                waker.notify()

    async def _probe(self) -> None:
        """A FLUSH of no ops: the fullest child edge's count now. When it is still full, pause (a child
        here says when it frees room) before the next look."""
        reply = await self.wiring.call(lambda: self.script(keys=self.keys, args=self.head), self.inbox)
        self.probe = False
        if reply is not None:
            self.edge_count = int(reply[1])
        if self.on_room is not None:
            self.on_room()
        if self.edge_count >= self.bound:
            self._freed = anyio.Event()
            with anyio.move_on_after(self._probe_pause):
                await self._freed.wait()
            self._freed = None
            self._probe_pause = min(self._probe_pause * 2, 0.025)
        else:
            self._probe_pause = 0.001

    async def close(self, *, end: bool) -> None:
        """Flush what is logged (and then the end, with ``end``); return once it is in Redis (at once
        when it was closed before)."""
        if self._done.is_set():
            return
        self.closing = True
        self.end = end
        self._kick()
        room, self._room = self._room, None
        if room is not None:
            room.set()
        await self._done.wait()

    def _ops(self, log: list[Any]) -> tuple[list[Any], list[Entry], int]:
        """The log as FLUSH ops: chunks of outputs, each followed by the acks that may follow it."""
        ops: list[Any] = []
        parts: list[bytes] = []
        acks: list[Entry] = []
        acked: list[Entry] = []
        chunk, outputs = self.chunk, 0
        for item in log:
            if type(item) is bytes:
                parts.append(item)
                outputs += 1
                if len(parts) >= chunk:
                    ops += ("A", len(parts), b"[" + b",".join(parts) + b"]")
                    parts = []
                    for entry in acks:
                        ops += ("K", entry.id, entry.size)
                    acked += acks
                    acks = []
            else:
                entry = item.entry
                entry.left -= 1
                if entry.left == 0:
                    acks.append(entry)
        if parts:
            ops += ("A", len(parts), b"[" + b",".join(parts) + b"]")
        for entry in acks:
            ops += ("K", entry.id, entry.size)
        acked += acks
        return ops, acked, outputs

    async def _send(self, ops: list[Any]) -> bool:
        """Apply ``ops`` in calls of ``OPS_PER_CALL``; where a child's edge is full, wait and go on from there.

        False when given up (the run was cut short while Redis was away)."""
        wiring, head = self.wiring, self.head
        position, pause = 0, 0.001
        step = OPS_PER_CALL * 3
        while position < len(ops):
            part = ops[position : position + step]
            reply = await wiring.call(lambda: self.script(keys=self.keys, args=[*head, *part]), self.inbox)
            if reply is None:
                return False  # given up: a cut-off while Redis is away (the inputs stay pending, for a lease)
            stopped, self.edge_count = int(reply[0]), int(reply[1])
            if stopped == 0:
                position += len(part)
                pause = 0.001
                continue
            position += stopped - len(head) - 1  # the op that found a full edge, and after it
            if wiring.engine.halted:
                return False  # cut off: nobody will make room; what is not in Redis is given back
            # A child run here says when it made room (``freed``); one elsewhere cannot: look again
            # after a pause that grows while the edge stays full.
            self._freed = anyio.Event()
            with anyio.move_on_after(pause):
                await self._freed.wait()
            self._freed = None
            pause = min(pause * 2, 0.025)
        return True

    def freed(self) -> None:
        """A child's consumer here acknowledged messages: its edge has room again."""
        freed = self._freed
        if freed is not None:
            freed.set()
