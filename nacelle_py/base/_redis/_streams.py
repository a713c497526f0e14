"""A consumer in a Redis Streams consumer group: read, keep leases, reclaim the dead's entries.

What every stream consumer of the framework needs (the Dispatcher's today,
the Pipeline's edges next), in one place:

- ``read``: XREADGROUP for new entries, with a short BLOCK. Readers stop by a
  flag, never by cancelling a blocked read: a cancelled read can still have
  entries delivered to its dead connection (they then sit in this consumer's
  pending list until someone reclaims them).
- ``renew``: the lease. An entry delivered to a consumer stays its own while
  the consumer renews it; renewing resets the entry's idle time (XCLAIM of
  its own ids with JUSTID, which does not count as a delivery). The script
  checks ownership first, so a consumer whose entry was reclaimed while it
  was away (a long pause, Redis unreachable) learns so instead of taking it back.
- ``reclaim``: XAUTOCLAIM of entries idle longer than the lease (their
  consumer died), following its cursor; each comes back with its delivery
  count, so a task that keeps killing its worker can be dead-lettered.
  Entries deleted while pending are dropped by Redis itself (7.0 and later).

Entries carry one field, ``m``: the message as JSON (one field parses much
faster than many).
"""

from __future__ import annotations

from typing import Any

from coredis.exceptions import StreamDuplicateConsumerGroupError

__all__ = ["FIELD", "StreamGroup"]

FIELD = b"m"

# ARGV: group, consumer, ids... -> the ids that are no longer this consumer's.
_RENEW = """
local lost, mine = {}, {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], '0'}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then mine[#mine + 1] = ARGV[i] else lost[#lost + 1] = ARGV[i] end
end
if #mine > 5 then
  mine[#mine + 1] = 'JUSTID'
  redis.call(unpack(mine))
end
return lost
"""

# ARGV: group, consumer, min idle ms, cursor, count -> {next cursor, {{id, message, deliveries}...}}
_RECLAIM = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  if e and e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local message = false
    for i = 1, #e[2], 2 do if e[2][i] == 'm' then message = e[2][i + 1] end end
    out[#out + 1] = {e[1], message, p[1] and p[1][4] or 1}
  end
end
return {r[1], out}
"""


class StreamGroup:
    """One consumer of one consumer group on one stream; see the module docstring."""

    def __init__(self, client: Any, stream: str, group: str, consumer: str) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._renew = client.register_script(_RENEW)
        self._reclaim = client.register_script(_RECLAIM)
        self._cursor = "0-0"

    async def ensure(self) -> None:
        """Create the group (and the stream) if they do not exist; load the scripts (a bad one fails here)."""
        try:
            await self.client.xgroup_create(self.stream, self.group, identifier="0", mkstream=True)
        except StreamDuplicateConsumerGroupError:
            pass
        for script in (self._renew, self._reclaim):
            await self.client.script_load(script.script)

    async def read(self, count: int, block_ms: int) -> list[tuple[bytes, bytes | None]]:
        """Up to ``count`` new entries for this consumer (waiting up to ``block_ms``): (entry id, message)."""
        return await self._read(">", count, block=block_ms)

    async def read_own(self, count: int) -> list[tuple[bytes, bytes | None]]:
        """This consumer's own pending entries (XREADGROUP from 0): after a lost reply, some of them
        may have been delivered to it without its knowing."""
        return await self._read("0", count)

    async def _read(self, start: str, count: int, **block: int) -> list[tuple[bytes, bytes | None]]:
        reply = await self.client.xreadgroup(
            self.group, self.consumer, streams={self.stream: start}, count=count, **block
        )
        if not reply:
            return []
        entries = next(iter(reply.values()))
        return [(_bytes(entry.identifier), entry.field_values.get(FIELD)) for entry in entries]

    async def renew(self, ids: list[bytes]) -> list[bytes]:
        """Renew the leases of ``ids``; returns those that another consumer owns now (or nobody)."""
        if not ids:
            return []
        lost = await self._renew(keys=[self.stream], args=[self.group, self.consumer, *ids])
        return [_bytes(i) for i in lost or ()]

    async def reclaim(self, min_idle: float, count: int) -> list[tuple[bytes, bytes | None, int]]:
        """Entries idle longer than ``min_idle`` seconds, now this consumer's: (id, message, deliveries).

        Follows XAUTOCLAIM's cursor across calls, starting again from the
        beginning once it wraps.
        """
        reply = await self._reclaim(
            keys=[self.stream],
            args=[self.group, self.consumer, max(1, int(min_idle * 1000)), self._cursor, count],
        )
        self._cursor = _bytes(reply[0]).decode()
        return [(_bytes(eid), message or None, int(deliveries)) for eid, message, deliveries in reply[1]]

    async def forget_me(self) -> None:
        """Leave the group (XGROUP DELCONSUMER) when nothing is pending for this consumer any more."""
        pending = await self.client.xpending(
            self.stream, self.group, start="-", end="+", count=1, consumer=self.consumer
        )
        if not pending:
            await self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)

    async def counts(self) -> tuple[int, int, int | None]:
        """The stream's length, the group's pending entries, and its lag (None when Redis cannot tell)."""
        async with self.client.pipeline(transaction=False) as pipe:
            length = pipe.xlen(self.stream)
            groups = pipe.xinfo_groups(self.stream)
        pending, lag = 0, None
        for group in await groups:
            name = group.get("name", group.get(b"name"))
            if _bytes(name) == self.group.encode():
                pending = int(group.get("pending", group.get(b"pending")) or 0)
                value = group.get("lag", group.get(b"lag"))
                lag = None if value is None else int(value)
        return int(await length), pending, lag


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
