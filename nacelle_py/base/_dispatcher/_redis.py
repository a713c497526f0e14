"""The Redis backend: named tasks in a Redis stream that every replica's dispatcher consumes.

At-least-once, nothing lost, duplicates only after a crash:

- producers add entries (``ENQUEUE``: the idempotency key and the XADD in one
  step; delayed ones wait in the schedule, moved by ``MOVE`` when due);
- each consuming replica reads batches sized to its free workers and hands
  them to its worker pool; every entry it holds is under a renewed lease
  (``StreamGroup.renew``), and entries of dead consumers are reclaimed once
  idle longer than the lease;
- an entry is acknowledged and deleted only with its outcome, in one step
  with whatever replaces it (``SETTLE``: a kept result, a retry, a dead
  letter, or the entry itself handed back at a graceful stop). Outcomes are
  batched: one script call settles everything finished since the last.

The loops live in ``_redis_loops``; this module is the backend's state and
its answers to the Dispatcher.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from ..._health import HealthComponent
from .._redis._client import LOST, describe_failure, make_client, ping
from .._redis._retry import Reachability
from .._redis._streams import StreamGroup
from ._backend import Backend, Outcome, TaskIds
from ._codec import decode_letter, decode_result, encode_entry, encode_failure, encode_letter, encode_ok, reencode_entry
from ._jobs import DeadLetter, Failure, Job, log_failure, next_step
from ._redis_loops import GROUP, Loops
from ._redis_scripts import ENQUEUE, RETRY_DEAD
from ._settings import BackendOptions
from ._stats import DispatcherError
from ._tasks import TaskSpec

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher

__all__ = ["RedisBackend"]

CHUNK = 2000  # entries per ENQUEUE call (one round trip each)
CONNECT_WITHIN = 8.0  # seconds init keeps trying Redis before failing the boot (within 10 s)
ENQUEUE_WITHIN = 10.0  # seconds enqueue keeps trying while Redis is unreachable


class RedisBackend(Backend):
    """See the module docstring."""

    kind = "redis"

    def __init__(self, pool: Dispatcher, options: BackendOptions, *, processes: anyio.CapacityLimiter | None) -> None:
        self.pool = pool
        self.options = options
        self.processes = processes
        self.url = options.redis_url
        stream = self.stream = options.stream
        self.keys = (stream, f"{stream}:schedule", f"{stream}:dead", f"{stream}:dead:index")
        self.result_prefix = f"{stream}:result:"
        self.ids = TaskIds()
        self.client: Any = None  # open while serve() runs: the run's task owns it
        self.group: StreamGroup | None = None
        self.held: dict[bytes, Job] = {}  # delivered to this consumer and not yet settled in Redis
        self.outbox: list[tuple[str, bytes, str, str, str, float]] = []
        self.loops = Loops(self)
        # What Redis says (refreshed by the loops about once a second), and what this replica did.
        self.polled: dict[str, int | None] = dict.fromkeys(("stream_length", "pending", "lag", "scheduled"))
        self.retried = self.reclaimed = self.dead_lettered = 0
        self._scripts: dict[str, Any] = {}
        self.reach = Reachability(self.url, pool._log_event, stream=stream)

    # -- connection ---------------------------------------------------------------------

    async def open(self) -> None:
        await ping(self.url, within=CONNECT_WITHIN, who=f"Dispatcher (stream {self.stream!r})")

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        client = make_client(self.url, name=f"nacelle {self.loops.consumer}")
        async with client:
            self.client = client
            self.group = StreamGroup(client, self.stream, GROUP, self.loops.consumer)
            self._scripts = {
                name: client.register_script(src) for name, src in (("enqueue", ENQUEUE), ("retry_dead", RETRY_DEAD))
            }
            try:
                await self.loops.prepare()
                task_status.started()
                await self.loops.run()
            finally:
                self.client = None

    async def stop(self) -> None:
        await self.loops.stop()

    async def finish(self) -> None:
        await self.loops.finish()

    def connected(self) -> None:
        """A command went through: healthy again if it was not."""
        self.reach.connected()

    def lost(self, exc: BaseException) -> None:
        """A command failed for the connection's sake: unhealthy, naming Redis, until one goes through."""
        self.reach.lost(exc)

    @property
    def health(self) -> HealthComponent | None:
        """The ``<component>.redis`` health key, unhealthy while Redis does not answer."""
        return self.reach.health

    @health.setter
    def health(self, value: HealthComponent | None) -> None:
        self.reach.health = value

    async def _client(self, where: str) -> Any:
        """The open client, waiting (bounded) for the run to open it."""
        with anyio.move_on_after(ENQUEUE_WITHIN):
            while self.client is None:
                await anyio.sleep(0.01)
            return self.client
        raise DispatcherError(
            f"{where}: the dispatcher is not running, so it has no Redis connection; register it with an "
            "App (it runs before the components of higher priorities) or enter it with async with"
        )

    async def _retrying(self, where: str, call: Any) -> Any:
        """``await call()``, retried with backoff while Redis is unreachable, for at most ENQUEUE_WITHIN."""
        try:
            return await self.loops._until_done(call, within=ENQUEUE_WITHIN)
        except LOST as exc:
            raise DispatcherError(
                f"{where}: {describe_failure(self.url, exc)}; gave up after {ENQUEUE_WITHIN:g} s"
            ) from None

    # -- producing ----------------------------------------------------------------------

    async def enqueue(
        self,
        spec: TaskSpec,
        payloads: list[BaseModel | None],
        *,
        key: str | None,
        due: float | None,
        keep_result: float,
    ) -> list[str]:
        where = "Dispatcher.enqueue"
        await self._client(where)
        now = time.time()
        name = spec.name_json
        ids = self.ids.many(len(payloads))
        entries = [
            encode_entry(task_id, name, 0, keep_result, now, "null" if p is None else p.model_dump_json())
            for task_id, p in zip(ids, payloads, strict=True)
        ]
        script = self._scripts["enqueue"]
        when = "" if due is None or due <= now else repr(due)
        key_name = f"{self.stream}:key:{key}" if key is not None else f"{self.stream}:key:"
        ttl = "" if key is None else str(max(1, int(self.options.key_ttl * 1000)))
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start : start + CHUNK]

            mark = f"{self.stream}:sent:{ids[start]}"

            async def call(chunk: list[str] = chunk, mark: str = mark) -> Any:
                return await script(keys=[self.stream, self.keys[1], key_name, mark], args=[when, ttl, ids[0], *chunk])

            found = await self._retrying(where, call)
            if found:
                return [found.decode() if isinstance(found, bytes) else str(found)]
        if when:
            self.loops.kick_mover()
        return ids

    # -- outcomes (on the loop's thread) ---------------------------------------------------

    def succeeded(self, job: Job, value: Any) -> None:
        result = encode_ok(job.spec.name_json, value) if job.keep_result > 0 else ""
        self.loops.settle(("ok", job.entry, job.id, "", result, job.keep_result))

    def failed(self, job: Job, failure: Failure) -> None:
        delay = next_step(job, failure)
        log_failure(self.pool._log_event, job, failure, delay)
        if delay is not None:
            self.retried += 1
            entry = reencode_entry(job.raw, job.attempts)
            self.loops.settle(("retry", job.entry, job.id, entry, "", time.time() + delay))
            return
        self.dead(job.entry, job.raw, job.attempts, failure, job.keep_result, kind="dead")

    def handed_back(self, job: Job) -> None:
        self.loops.settle(("back", job.entry, job.id, reencode_entry(job.raw, job.attempts), "", 0.0))

    def dead(
        self, entry_id: bytes, entry: dict[str, Any], attempts: int, failure: Failure, keep: float, *, kind: str
    ) -> None:
        """Settle an entry as a dead letter (a failure for good, too many deliveries, or poison)."""
        self.dead_lettered += 1
        letter = encode_letter(entry, attempts, failure, time.time())
        task = str(entry.get("t", ""))
        result = encode_failure(task, failure) if keep > 0 and entry.get("i") else ""
        self.loops.settle((kind, entry_id, str(entry.get("i", "")), letter, result, keep))

    # -- reading back -------------------------------------------------------------------

    async def outcome(self, task_id: str, timeout: float) -> Outcome:
        key = self.result_prefix + task_id
        pause = 0.002
        with anyio.move_on_after(timeout):
            while True:
                client = await self._client("Dispatcher.result")
                try:
                    raw = await client.get(key)
                except LOST as exc:
                    self.lost(exc)
                    raw = None
                if raw is not None:
                    return decode_result(raw)
                await anyio.sleep(pause)
                pause = min(pause * 2, 0.1)
        raise TimeoutError(task_id)

    async def dead_letters(self) -> list[DeadLetter]:
        client = await self._client("Dispatcher.dead_letters")
        entries = await self._retrying("Dispatcher.dead_letters", lambda: client.xrange(self.keys[2], "-", "+"))
        return [decode_letter(entry.field_values[b"m"])[0] for entry in entries]

    async def retry_dead(self, task_id: str) -> bool:
        where = "Dispatcher.retry_dead"
        client = await self._client(where)
        dead_id = await self._retrying(where, lambda: client.hget(self.keys[3], task_id))
        if dead_id is None:
            return False
        entries = await self._retrying(where, lambda: client.xrange(self.keys[2], dead_id, dead_id))
        if not entries:
            return False
        _, entry = decode_letter(entries[0].field_values[b"m"])
        again = reencode_entry(entry, 0)
        script = self._scripts["retry_dead"]
        keys = [self.stream, self.keys[2], self.keys[3], self.result_prefix + task_id]
        moved = await self._retrying(where, lambda: script(keys=keys, args=[task_id, dead_id, again]))
        return bool(moved)

    def extra_stats(self) -> dict[str, Any]:
        return {
            **self.polled,
            "retried": self.retried,
            "reclaimed": self.reclaimed,
            "dead_lettered": self.dead_lettered,
        }
