"""The reading side of a worker-based edge: a stage's consumer in its edge's consumer group.

A ``StreamInbox`` looks to the stage loops of the parallel engine like its
``Inbox`` (``items``, ``take``, ``wait``, ``closed``), and is filled by a
reader task:

- it reads chunks with XREADGROUP, as many as the stage's ``buffer`` has
  room for (what it holds and has not started counts), so no message is read
  that the stage cannot start soon;
- every chunk it holds, started or not, is leased: the keeper renews the
  leases (``StreamGroup.renew``) until the stage's outbound flush
  acknowledges the chunk, once every message of it is done;
- it reclaims the chunks of dead consumers idle past the lease
  (``StreamGroup.reclaim``). A chunk delivered again goes back as one entry
  per message, each with a delivery count of its own; a message delivered
  more than ``max_deliveries`` times goes to the dead-letter stream;
- the end of the edge: the consumer that reads it holds it until every other
  message of the edge is acknowledged by whichever replica held it, then
  passes it on to the children's edges in one step (``FINISH``); the other
  replicas of the stage see the edge's end key change and finish too.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
from pydantic_core import from_json, to_json

from .._redis._streams import StreamGroup
from ._message import Message
from ._stream_scripts import DEAD, END, EXPLODE, FINISH

if TYPE_CHECKING:
    from ._stage import Node
    from ._worker_based import Wiring

__all__ = ["BLOCK_MS", "Delivered", "Entry", "StreamInbox"]

BLOCK_MS = 100  # a read waits this long for entries; a stop or an end is noticed within it


class Entry:
    """A chunk this consumer holds: its entry id, its messages, how many are not done yet, and how
    many times its messages were delivered (this time included)."""

    __slots__ = ("deliveries", "id", "left", "messages", "size")

    def __init__(self, entry_id: bytes, size: int, deliveries: int) -> None:
        self.id = entry_id
        self.size = size
        self.left = size
        self.deliveries = deliveries
        self.messages: list[Delivered] = []


class Delivered(Message[Any]):
    """A message read from an edge: a ``Message`` that knows the chunk it came in (and whether the
    stage raised for it)."""

    __slots__ = ("done", "entry", "failed")

    def __init__(self, id: str, body: Any, entry: Entry) -> None:  # noqa: A002
        self.id = id
        self.body = body
        self.entry = entry
        self.failed = False
        self.done = False  # processed, and what it emitted is in Redis


def decode_chunk(raw: bytes) -> tuple[list[list[Any]], int]:
    """A chunk's ``[id, body]`` pairs and the deliveries its messages had before (a chunk split up after
    a crash: ``{"d": deliveries, "m": pairs}``); ``ValueError`` for anything else."""
    data = from_json(raw)
    before: Any = 0
    if type(data) is dict:
        before, data = data.get("d"), data.get("m")
        if type(before) is not int or before < 0:
            raise ValueError("a split chunk without its count of deliveries")
    if type(data) is not list:
        raise ValueError("not a list of [id, body] pairs")
    return data, before  # each pair is checked as it becomes a message (``_deliver``)


class StreamInbox:
    """The input edge of one stage run here; see the module docstring."""

    def __init__(self, node: Node, wiring: Wiring, group: StreamGroup) -> None:
        self.node = node
        self.wiring = wiring
        self.group = group
        self.items: list[Delivered] = []
        self.closed = False
        self.stopping = False  # stop reading (a replica's stop): what is held drains
        self.held: dict[bytes, Entry] = {}  # chunks read and not acknowledged: leased
        self.ends: dict[bytes, bytes] = {}  # the ends this consumer holds: entry id -> E:<token>
        # Messages delivered before (their replica died or failed holding them): handed to the stage one
        # at a time, the next once the last one's outcome is in Redis, so that a message that kills its
        # replica takes nobody's delivery count with it but its own.
        self.careful: deque[Delivered] = deque()
        self._careful_entry: Entry | None = None
        self.reread = False  # a failed call: our own pending list may hold entries we never saw
        self.reclaimed = 0
        self.dead_lettered = 0
        self.lag = 0
        self.pending = 0
        self._consumer: anyio.Event | None = None
        self.done: anyio.Event | None = None  # set when the reader has exited
        self._room: anyio.Event | None = None
        self._scripts = {
            name: group.client.register_script(text)
            for name, text in (("finish", FINISH), ("explode", EXPLODE), ("dead", DEAD))
        }

    # -- what the stage loops use (as the parallel engine's Inbox) --------------------------------

    def take(self) -> list[Delivered] | None:
        """Everything read and not yet taken, or None."""
        items = self.items
        if not items:
            return None
        self.items = []
        self._wake_reader()
        return items

    async def wait(self) -> None:
        """Sleep until the reader delivers or the edge closes."""
        self._wake_reader()
        if self._consumer is None:
            self._consumer = anyio.Event()
        await self._consumer.wait()

    def close(self) -> None:
        """No more messages on this edge for this replica."""
        self.closed = True
        self._wake_consumer()

    def acked(self, entry: Entry) -> None:
        """The outbound flush acknowledged ``entry``: its lease ends."""
        self.held.pop(entry.id, None)
        self._wake_reader()

    def leased(self) -> list[bytes]:
        """The entry ids this consumer holds (the end too)."""
        return [*self.held, *self.ends]

    # -- the reader -------------------------------------------------------------------------------

    async def read(self, baseline: bytes | None) -> None:
        """Fill ``items`` until the edge ends for this replica, or a stop; see the module docstring.

        ``baseline`` is the edge's end key when the run began: another replica's
        end counts only when the key has changed since.
        """
        wiring, node, group = self.wiring, self.node, self.group
        lease = wiring.lease
        next_reclaim = 0.0  # at once: a dead replica's chunks are the oldest work there is
        self.done = anyio.Event()
        try:
            while not self.closed and not self.stopping:
                if self.careful:
                    fed = self._careful_entry
                    if fed is None or fed.id not in self.held:
                        msg = self.careful.popleft()
                        self._careful_entry = msg.entry
                        self.items.append(msg)
                        self._wake_consumer()
                    await self._nap()  # until the flush acknowledges it
                    continue
                if self.reread:
                    self.reread = False
                    own = await wiring.call(lambda: group.read_own(1000), self)
                    await self._deliver(
                        [(eid, raw, 1) for eid, raw in own or () if eid not in self.held and eid not in self.ends]
                    )
                    continue
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + max(lease / 2, 0.05)
                    found = await wiring.call(lambda: group.reclaim(lease, 100), self)
                    if found:
                        taken = sum(1 for _, raw, _ in found if raw is not None and raw[:1] != END)
                        if taken:
                            self.reclaimed += taken
                            wiring.log(
                                "warning",
                                "pipeline chunks reclaimed from a replica that stopped renewing their lease",
                                stage=node.name,
                                entries=taken,
                                lease=lease,
                            )
                        await self._deliver(found)
                        continue
                if self.ends and not self._busy():
                    if await self._ended(baseline):
                        self.close()
                        break
                room = node.buffer - self._holding()
                if room <= 0 or (self.ends and self._busy()):
                    # Full; or the end is here and what came before it is still being done here.
                    await self._nap()
                    continue
                count = max(1, room // wiring.chunk_of(node))
                entries = await wiring.call(lambda: group.read(count, BLOCK_MS), self)
                if entries:
                    await self._deliver([(eid, raw, 1) for eid, raw in entries])
                    continue
                if entries is None:
                    continue  # a stop while Redis was away
                if await self._ended(baseline):
                    self.close()
        finally:
            self.done.set()
            if not self.closed and self.stopping:
                self.close()  # a stop: the stage drains what it holds, then ends

    def _holding(self) -> int:
        """Messages of the chunks held here that are not done: waiting, in flight, or awaiting their flush."""
        return sum(entry.left for entry in self.held.values())

    def _busy(self) -> bool:
        """Whether messages read here are not all done and flushed."""
        return bool(self.held or self.items or self.node.remaining() or self.node.active)

    async def _ended(self, baseline: bytes | None) -> bool:
        """Idle: whether the edge is done (the end held here passed on, or another replica saw it)."""
        wiring, node = self.wiring, self.node
        if self.ends:
            if self._busy():
                return False
            keys = [
                wiring.edge(node.name),
                wiring.end_key(node.name),
                wiring.run_key(node),
                *[wiring.edge(child.name) for child in node.children],
            ]
            for entry_id, end in list(self.ends.items()):
                done = await wiring.call(
                    lambda: self._scripts["finish"](
                        keys=keys, args=[self.group.group, self.group.consumer, entry_id, end]
                    ),
                    self,
                )
                if done == -1:  # an end of an earlier run of the root: dropped
                    self.ends.pop(entry_id, None)
                elif done:
                    self.ends.clear()
                    return True
            # Not yet; or another replica held a copy of the same end and passed it on (ours is gone).
        elif self.held or self.items:
            return False
        key = await wiring.call(lambda: self.group.client.get(wiring.end_key(node.name)), self)
        if key is not None and key != baseline:
            self.ends.clear()
            return True
        return False

    async def _deliver(self, entries: list[tuple[bytes, bytes | None, int]]) -> None:
        """Turn entries into messages (or an end, a dead letter, single entries again)."""
        wiring, node = self.wiring, self.node
        out = self.items
        for entry_id, raw, deliveries in entries:
            if raw is None or entry_id in self.held:
                continue  # deleted while pending, or ours already
            if raw[:1] == END:
                if raw in self.ends.values() and entry_id not in self.ends:
                    # The same end twice (a flush sent again): one is enough; acknowledged and deleted.
                    await wiring.call(
                        lambda: self._scripts["explode"](
                            keys=[wiring.edge(node.name), wiring.count(node.name)], args=[self.group.group, entry_id, 0]
                        ),
                        self,
                    )
                else:
                    self.ends[entry_id] = raw  # FINISH tells a current end from an earlier run's
                continue
            try:
                pairs, before = decode_chunk(raw)
            except ValueError as exc:
                await self._dead(entry_id, raw, 1, f"undecodable entry: {exc}", deliveries)
                continue
            deliveries += before
            if deliveries > wiring.max_deliveries:
                await self._dead(
                    entry_id,
                    raw,
                    len(pairs),
                    f"delivered {deliveries} times (PIPELINE_MAX_DELIVERIES="
                    f"{wiring.max_deliveries}): it keeps failing or killing its replica",
                    deliveries,
                )
                continue
            if deliveries > 1 and len(pairs) > 1:
                # Each message goes back alone, with the deliveries it had so far (this one ran nothing).
                singles = [to_json({"d": deliveries - 1, "m": [pair]}) for pair in pairs]
                await wiring.call(
                    lambda: self._scripts["explode"](
                        keys=[wiring.edge(node.name), wiring.count(node.name)],
                        args=[self.group.group, entry_id, 0, *singles],
                    ),
                    self,
                )
                continue
            entry = Entry(entry_id, len(pairs), deliveries)
            try:
                entry.messages = messages = [Delivered(i, body, entry) for i, body in pairs]
                if messages and type(messages[-1].id) is not str:
                    raise ValueError("an id that is not a string")
            except (ValueError, TypeError) as exc:
                await self._dead(
                    entry_id, raw, len(pairs), f"undecodable entry: not [id, body] pairs ({exc})", deliveries
                )
                continue
            self.held[entry_id] = entry
            if deliveries > 1:
                self.careful.extend(messages)  # delivered before: one at a time, each flushed before the next
            else:
                out.extend(messages)
        self._wake_consumer()

    async def hand_back(self) -> int:
        """After a stop, a failure or a cut-off: the messages of every chunk held here that were not
        done go back at once, one entry each, so no replica waits for a lease; those done leave the
        edge. The delivery counts only for a message the stage raised for; the others were cut
        short by it, or never started (the end goes back as it was)."""
        wiring, script = self.wiring, self._scripts["explode"]
        keys = [wiring.edge(self.node.name), wiring.count(self.node.name)]
        given = 0
        for entry in list(self.held.values()):
            singles = [
                to_json({"d": entry.deliveries - (0 if msg.failed else 1), "m": [[msg.id, msg.body]]})
                for msg in entry.messages
                if not msg.done
            ]
            gone = entry.size - len(singles)
            if await wiring.call(lambda: script(keys=keys, args=[self.group.group, entry.id, gone, *singles]), self):
                given += len(singles)
            self.held.pop(entry.id, None)
        for entry_id, end in list(self.ends.items()):
            await wiring.call(lambda: script(keys=keys, args=[self.group.group, entry_id, 0, end]), self)
        self.ends.clear()
        self.items = []
        return given

    def withhold(self) -> None:
        """A stop: the messages read here and not started are not started (``hand_back`` returns them)."""
        node = self.node
        self.items = []
        self.careful.clear()
        cursor = node.cursor
        if cursor is not None:
            rest = node.remaining()  # messages (a batch stage's cursor walks lists of them)
            for _ in cursor:  # the stage's loop finds its batch used up
                pass
            node.taken -= rest

    async def _dead(self, entry_id: bytes, raw: bytes, size: int, error: str, deliveries: int) -> None:
        wiring, name = self.wiring, self.node.name
        try:
            messages: Any = decode_chunk(raw)[0]
        except ValueError:
            messages = raw.decode("utf-8", "replace")
        letter = json.dumps(
            {
                "stage": name,
                "entry": entry_id.decode(),
                "messages": messages,
                "error": error,
                "deliveries": deliveries,
                "at": time.time(),
            },
            default=str,
        )
        moved = await wiring.call(
            lambda: self._scripts["dead"](
                keys=[wiring.edge(name), wiring.count(name), wiring.dead(name)],
                args=[self.group.group, entry_id, size, letter],
            ),
            self,
        )
        if moved:
            self.dead_lettered += 1
            wiring.log(
                "error",
                "pipeline message dead-lettered",
                stage=name,
                entry=entry_id.decode(),
                deliveries=deliveries,
                error=error,
                dead_letters=wiring.dead(name),
            )

    async def _nap(self) -> None:
        """Wait (at most a read's BLOCK) for the stage to take messages or a flush to acknowledge some."""
        self._room = anyio.Event()
        with anyio.move_on_after(BLOCK_MS / 1000):
            await self._room.wait()

    def _wake_consumer(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None
            consumer.set()

    def _wake_reader(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            room.set()
