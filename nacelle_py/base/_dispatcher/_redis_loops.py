"""The Redis backend's loops: read, keep leases and reclaim, move due entries, settle, count.

Each loop survives a lost connection: it marks the backend unhealthy (the
reason names Redis), waits with capped backoff, and carries on, so that when
Redis comes back work resumes where it stopped. Outcomes that could not be
settled stay in the outbox until they can: nothing is acknowledged twice
(each entry is settled once) and nothing unfinished is acknowledged.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import TYPE_CHECKING, Any

import anyio
from pydantic_core import from_json

from .._redis._client import LOST, GroupGone, consumer_name
from .._redis._retry import until_done
from ._jobs import Failure, Job
from ._redis_scripts import MOVE, SETTLE

if TYPE_CHECKING:
    from ._redis import RedisBackend

__all__ = ["GROUP", "Loops"]

GROUP = "nacelle"  # the consumer group every replica of a dispatcher joins
BLOCK_MS = 100  # a read waits this long for entries; a stop waits at most this for the reader
SETTLE_BATCH = 1000  # outcomes per SETTLE call
MOVE_BATCH = 500  # due entries per MOVE call
MOVE_EVERY = 0.25  # seconds between looks at the schedule when nothing is due sooner
COUNT_EVERY = 1.0  # seconds between refreshes of the stream's counts for stats()
STOP_WITHIN = 5.0  # seconds a graceful stop waits for Redis to take the handed-back entries


class Loops:
    """The loops of one backend (see the module docstring)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.consumer = consumer_name()
        self.stopping = False
        self.active = 0  # delivered and not yet finished here (the reader's measure of free workers)
        self._room: anyio.Event | None = None
        self._flush: anyio.Event | None = None
        self._reader_done: anyio.Event | None = None
        self._mover_kick: anyio.Event | None = None
        self._quick = False  # see _capacity
        self._duration = 1.0  # seconds, the estimate of a task's duration
        self.finished = 0  # tasks this consumer finished (settled), for the estimate
        self.reread = False  # set when a command failed: the reader re-reads its own pending entries
        self._reported: set[bytes] = set()  # entries already reported as lost leases
        self._flushed: anyio.Event | None = None
        self.prepared = False  # the group exists and the scripts are loaded (a stop may come first)

    async def _until_done(self, call: Any, *, stoppable: bool = False, within: float | None = None) -> Any:
        """``await call()`` until it goes through (``until_done``); after a failure, re-read our own
        pending entries. ``stoppable``: give up (None) once a graceful stop has begun. ``within``:
        give up after that many seconds, raising the last connection error."""
        backend = self.backend

        def lost(exc: BaseException) -> None:
            backend.lost(exc)
            self.reread = True

        async def regroup() -> None:
            # NOGROUP: Redis lost the group (restarted without persistence, or the stream was
            # deleted). Create it again; what was pending in it is gone with it.
            backend.pool._log_event(
                "warning", "consumer group missing in Redis (data lost?); creating it again", stream=backend.stream
            )
            assert backend.group is not None
            await backend.group.ensure()

        return await until_done(
            call,
            lost=lost,
            connected=backend.connected,
            regroup=regroup,
            give_up=(lambda: self.stopping) if stoppable else None,
            within=within,
        )

    # -- the run --------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Create the group and load the scripts (retrying while Redis is unreachable)."""
        backend = self.backend
        assert backend.group is not None
        self._room, self._flush = anyio.Event(), anyio.Event()
        self._settle = backend.client.register_script(SETTLE)
        self._move = backend.client.register_script(MOVE)
        group, client = backend.group, backend.client

        async def load() -> None:
            await group.ensure()
            for script in (self._settle, self._move, *backend._scripts.values()):
                await client.script_load(script.script)

        await self._until_done(load)
        self.prepared = True

    async def run(self) -> None:
        """Every loop, until cancelled (the dispatcher's run ends)."""
        async with anyio.create_task_group() as tg:
            if self.backend.options.consume:
                self._reader_done = anyio.Event()
                tg.start_soon(self._reader)
                tg.start_soon(self._keeper)
            tg.start_soon(self._mover)
            tg.start_soon(self._flusher)
            tg.start_soon(self._counter)

    async def stop(self) -> None:
        """Graceful stop: no more reads; entries read and not started go back into the stream."""
        if self.stopping:
            return
        self.stopping = True
        if self._room is not None:
            self._room.set()
        if self._reader_done is not None:
            with anyio.move_on_after(BLOCK_MS / 1000 + 2.0):
                await self._reader_done.wait()
        backend = self.backend
        for job in backend.pool._withdraw(lambda owner: isinstance(owner, Job) and owner.backend is backend):
            job.handed_back()
        await self.finish()

    async def finish(self) -> None:
        """Settle every outcome still in the outbox (bounded), then leave the group if nothing is ours."""
        with anyio.move_on_after(STOP_WITHIN):
            while self.backend.outbox:
                self._flushed = anyio.Event()
                self._wake_flusher()
                await self._flushed.wait()
            group = self.backend.group
            if self.backend.options.consume and self.prepared and group is not None and not self.backend.held:
                try:
                    await group.forget_me()
                except LOST:  # Redis is away: the consumer stays listed, with nothing pending
                    pass
                except GroupGone:  # the group is gone with Redis' data: nothing to leave
                    pass

    # -- reading ------------------------------------------------------------------------

    async def _reader(self) -> None:
        backend = self.backend
        group = backend.group
        assert group is not None and self._reader_done is not None
        lease = backend.options.lease
        reclaim_at = 0.0
        try:
            while not self.stopping:
                room = self._capacity() - self.active
                if room < self._low_water:
                    waited, finished = time.monotonic(), self.finished
                    self._room = anyio.Event()
                    with anyio.move_on_after(1.0):
                        await self._room.wait()
                    self._pace(time.monotonic() - waited, self.finished - finished)
                    continue
                if self.reread:
                    # A read or a reconnect failed: entries may have been delivered to this consumer
                    # in a reply that never arrived. Its own pending list has them.
                    self.reread = False
                    # What is held when asking is ours whatever the reply says: the flusher may
                    # settle (and forget) one of them while the reply is on its way, and the reply
                    # still lists it as pending. Only entries we never knew of are lost replies.
                    ours = set(backend.held)
                    own = await self._until_done(lambda: group.read_own(len(backend.held) + room), stoppable=True)
                    lost = [
                        (i, m, 1) for i, m in own or () if i not in ours and i not in backend.held and m is not None
                    ]
                    await self.deliver(lost)
                    continue
                if time.monotonic() >= reclaim_at:
                    # The dead's entries first: they are older than anything new, and a
                    # consumer kept busy by new entries would otherwise never take them.
                    reclaim_at = time.monotonic() + lease / 4
                    ours = set(backend.held)  # as above: one of ours settled during the call is not idle
                    claimed = await self._until_done(lambda: group.reclaim(lease, room), stoppable=True)
                    await self._deliver_reclaimed([c for c in claimed or () if c[0] not in ours])
                    continue
                entries = await self._until_done(lambda: group.read(room, BLOCK_MS), stoppable=True)
                await self.deliver([(entry_id, message, 1) for entry_id, message in entries or ()])
        finally:
            self._reader_done.set()

    async def _deliver_reclaimed(self, claimed: list[tuple[bytes, bytes | None, int]]) -> None:
        backend = self.backend
        backend.reclaimed += len(claimed)
        await self.deliver(claimed)
        if claimed:
            backend.pool._log_event(
                "info", "reclaimed idle entries (their consumer died, or lost track of them)", entries=len(claimed)
            )

    async def deliver(self, entries: list[tuple[bytes, bytes | None, int]]) -> None:
        """Hand the pool a job per entry (id, message, deliveries); settle the ones that cannot run."""
        pool = self.backend.pool
        runners: list[tuple[Any, Any]] = []
        for entry_id, message, deliveries in entries:
            made = self._job_for(entry_id, message, deliveries)
            if made is not None:
                runners.append(made)
        while runners:  # runs of one timeout, taken together (usually the whole batch)
            timeout = runners[0][1]
            run = [runner for runner, _ in itertools.takewhile(lambda r: r[1] == timeout, runners)]
            del runners[: len(run)]
            taken = pool._offer_many(run, timeout)
            for runner in run[taken:]:  # the pool's buffer is full: wait for room
                await pool._put(runner, timeout)

    def _job_for(self, entry_id: bytes, message: bytes | None, deliveries: int) -> tuple[Any, Any] | None:
        """The job for one entry, held here, as (runner, its pool timeout); None when it cannot run."""
        backend = self.backend
        try:
            entry = from_json(message or b"")  # pydantic-core's parser: several times json.loads' speed
            if not isinstance(entry, dict):
                raise ValueError("an entry is a JSON object")
        except ValueError as exc:
            failure = Failure("ValueError", f"poison entry (not a task): {exc}", "", retryable=False)
            self._refuse(entry_id, {"p": (message or b"").decode(errors="replace")}, 0, failure, 0.0, "poison")
            return None
        attempts, keep = entry.get("a", 0), entry.get("k", 0.0)
        spec = backend.pool._registry.tasks.get(entry.get("t"))  # type: ignore[arg-type]
        if spec is None and self._pass_on(entry_id, entry):
            return None
        try:
            if spec is None:
                raise LookupError(f"no replica that took it knows a task named {entry.get('t')!r}")
            payload = spec.decode_data(entry.get("p"))
            if not isinstance(attempts, int) or not isinstance(keep, (int, float)):
                raise ValueError("the entry's counts are not numbers")
        except Exception as exc:
            failure = Failure.of(exc, retryable=False)
            failure = Failure(failure.error_type, f"poison payload: {failure.message}", failure.traceback, False)
            numbers = isinstance(attempts, int) and isinstance(keep, (int, float))
            self._refuse(entry_id, entry, attempts if numbers else 0, failure, keep if numbers else 0.0, "dead")
            return None
        if deliveries > backend.options.max_deliveries:
            failure = Failure(
                "DeliveryError",
                f"delivered {deliveries} times (max_deliveries="
                f"{backend.options.max_deliveries}): it keeps killing its worker",
                "",
                False,
            )
            self._refuse(entry_id, entry, attempts, failure, keep, "dead")
            return None
        if entry_id in backend.held:  # reclaimed our own entry after a lapse: it runs here already
            return None
        job = Job(str(entry.get("i")), spec, payload, backend, keep, entry.get("e", 0.0), attempts)
        backend.held[entry_id] = job.delivered(entry_id, entry, deliveries)
        self.active += 1
        return job.runner(backend.processes, backend.pool._token), spec.pool_timeout

    def _refuse(
        self, entry_id: bytes, entry: dict[str, Any], attempts: int, failure: Failure, keep: float, kind: str
    ) -> None:
        """Dead-letter an entry that cannot run (poison, too many deliveries), with one log line saying why."""
        self.backend.pool._log_event(
            "error",
            "task dead-lettered without running",
            task=entry.get("t"),
            task_id=entry.get("i"),
            error=failure.error(),
        )
        self.backend.dead(entry_id, entry, attempts, failure, keep, kind=kind)

    def _pass_on(self, entry_id: bytes, entry: dict[str, Any]) -> bool:
        """A task this replica does not know: back into the stream, due in a second, for a replica
        that knows it (a rolling deploy); False once it has been passed on ``max_deliveries`` times."""
        hops = int(entry.get("u", 0)) + 1
        if hops > self.backend.options.max_deliveries:
            return False
        self.backend.pool._log_event(
            "warning",
            "task unknown here: passed on to another replica",
            task=entry.get("t"),
            task_id=entry.get("i"),
            times=hops,
        )
        again = json.dumps({**entry, "u": hops}, separators=(",", ":"))
        self.settle(("retry", entry_id, str(entry.get("i", "")), again, "", time.time() + 1.0))
        return True

    # -- leases -------------------------------------------------------------------------

    async def _keeper(self) -> None:
        """Renew the leases of what this consumer holds (every quarter of the lease)."""
        backend = self.backend
        group = backend.group
        assert group is not None
        while True:
            await anyio.sleep(backend.options.lease / 4)
            held = list(backend.held)
            for start in range(0, len(held), 500):
                chunk = held[start : start + 500]
                lost = await self._until_done(lambda: group.renew(chunk))
                # Settled meanwhile (its acknowledgement raced the renewal) is not lost.
                lost = [
                    i
                    for i in lost
                    if (job := backend.held.get(i)) is not None and not job.settled and i not in self._reported
                ]
                self._reported.update(lost)
                if lost:
                    backend.pool._log_event(
                        "warning",
                        "lease lost: another consumer reclaimed entries held here (they may run twice)",
                        entries=len(lost),
                    )

    # -- settling -----------------------------------------------------------------------

    # How much to read: tasks are read only when a worker can start them soon. While tasks are
    # slow, that means one per free worker, read as soon as one is free. While they are quick, a
    # consumer that read one task per free worker would make a round trip for every few tasks:
    # it holds up to four batches (one per worker each) and reads again once two are done; the
    # last task read starts within a few task durations, a few milliseconds.
    QUICK = 0.005  # seconds: tasks shorter than this (on average) are quick

    def _capacity(self) -> int:
        workers = self.backend.pool.max_workers
        return 4 * workers if self._quick else workers

    @property
    def _low_water(self) -> int:
        return 2 * self.backend.pool.max_workers if self._quick else 1

    def _pace(self, waited: float, finished: int) -> None:
        """Update the estimate of a task's duration: ``finished`` tasks ended during ``waited`` seconds."""
        if finished:
            duration = waited * self.backend.pool.max_workers / finished  # the workers run in parallel
            self._duration = 0.8 * self._duration + 0.2 * duration
            self._quick = self._duration < self.QUICK

    def settle(self, record: tuple[str, bytes, str, str, str, float]) -> None:
        """Queue one outcome for the flusher (called on the loop's thread)."""
        backend = self.backend
        backend.outbox.append(record)
        if record[1] in backend.held:
            self.active -= 1
            self.finished += 1
            if self._room is not None and self._capacity() - self.active >= self._low_water:
                self._room.set()
        if self._flush is not None:
            self._flush.set()

    def _wake_flusher(self) -> None:
        if self._flush is not None:
            self._flush.set()

    async def _flusher(self) -> None:
        backend = self.backend
        keys = list(backend.keys)
        while True:
            if not backend.outbox:
                if self._flushed is not None:
                    self._flushed.set()
                self._flush = anyio.Event()
                await self._flush.wait()
                continue
            batch = backend.outbox[:SETTLE_BATCH]
            args: list[Any] = [GROUP, repr(time.time()), backend.result_prefix]
            retried = False
            for kind, entry_id, task_id, data, result, number in batch:
                args.append(
                    b"\x1f".join(
                        (
                            kind.encode(),
                            entry_id,
                            task_id.encode(),
                            repr(float(number)).encode(),
                            data.encode(),
                            result.encode(),
                        )
                    )
                )
                retried = retried or kind == "retry"
            await self._until_done(lambda: self._settle(keys=keys, args=args))
            del backend.outbox[: len(batch)]
            for record in batch:
                backend.held.pop(record[1], None)
                self._reported.discard(record[1])
            if retried:
                self.kick_mover()  # a retry due soon need not wait for the mover's next look

    # -- the schedule and the counts ----------------------------------------------------

    def kick_mover(self) -> None:
        """Look at the schedule now: this process just scheduled something (a delay, a retry)."""
        if self._mover_kick is not None:
            self._mover_kick.set()

    async def _mover(self) -> None:
        backend = self.backend
        keys = [backend.stream, backend.keys[1]]
        while True:
            self._mover_kick = kick = anyio.Event()
            reply = await self._until_done(lambda: self._move(keys=keys, args=[repr(time.time()), MOVE_BATCH]))
            moved, upcoming = int(reply[0]), reply[1]
            if moved >= MOVE_BATCH:
                continue
            # Until the next due entry, at most MOVE_EVERY: other replicas schedule too.
            wait = MOVE_EVERY if not upcoming else min(max(float(upcoming) - time.time(), 0.001), MOVE_EVERY)
            with anyio.move_on_after(wait):
                await kick.wait()

    async def _counter(self) -> None:
        backend = self.backend
        group = backend.group
        assert group is not None
        while True:
            try:
                length, pending, lag = await group.counts()
                scheduled = await backend.client.zcard(backend.keys[1])
            except LOST as exc:
                backend.lost(exc)
            else:
                backend.polled.update(stream_length=length, pending=pending, lag=lag, scheduled=int(scheduled))
            await anyio.sleep(COUNT_EVERY)
