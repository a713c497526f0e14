"""The Redis backend's delivery guarantees under crashes, restarts and signals, with real processes.

At-least-once, nothing lost, duplicates only after a crash: every test here
runs consumer replicas as real App subprocesses (``tests/scripts/redis_consumer.py``)
against a real ``redis-server``, and checks the side effect each task leaves
behind, a row per task in SQLite whose ``runs`` column counts its runs, plus
what Redis holds afterwards (the group's pending list, the dead-letter stream,
the schedule). The replicas log the tasks they start to a file of their own,
so a test knows what a killed replica had started.

The tests that drive a producer in this process are async and run on asyncio
and trio; the replicas they start run on both backends too.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import pytest
from _redis import RedisFactory, command, free_port
from structlog.testing import capture_logs

from nacelle_py.base import Dispatcher

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from harness import ROOT, AppProcess, clean_env  # noqa: E402
from redis_consumer import Item  # noqa: E402

SCRIPT = ROOT / "tests" / "scripts" / "redis_consumer.py"
STREAM = "qa:jobs"
BOOT_TIMEOUT = 30.0  # a replica's boot: the interpreter, imports, connecting
GROUP = "nacelle"


# -- replicas -------------------------------------------------------------------------------


def replica_env(url: str, *, lease: float, **extra: str) -> dict[str, str]:
    """The environment of a replica: JSON logs, the Redis backend, and nothing else of this machine's."""
    env = {
        k: v for k, v in clean_env().items() if not k.startswith(("DISPATCHER_", "REDIS_", "RC_", "SHUTDOWN_TIMEOUT"))
    }
    env.update(
        DISPATCHER_BACKEND="redis",
        REDIS_URL=url,
        DISPATCHER_STREAM=STREAM,
        DISPATCHER_LEASE=str(lease),
        DISPATCHER_MAX_DELIVERIES="5",
        **extra,
    )
    return env


class Replica:
    """One consumer subprocess, its log of started tasks and its JSON log events."""

    def __init__(
        self,
        name: str,
        backend: str,
        url: str,
        tmp: Path,
        *,
        lease: float,
        kind: str = "async",
        max_workers: int = 32,
        max_threads: int = 16,
    ) -> None:
        self.name = name
        self.backend = backend
        self.log = tmp / f"started-{name}.log"
        self.app = AppProcess(
            [
                str(SCRIPT),
                backend,
                str(tmp / "rows.sqlite3"),
                str(self.log),
                "--kind",
                kind,
                "--max-workers",
                str(max_workers),
                "--max-threads",
                str(max_threads),
            ],
            replica_env(url, lease=lease),
        )

    def marks(self, what: str) -> list[tuple[int, float]]:
        """``(task number, unix time)`` of each ``what`` line (``s``: started, ``d``: row committed)."""
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == what:  # a line cut short by SIGKILL has fewer parts
                found.append((int(parts[1]), float(parts[2])))
        return found

    def started(self) -> list[int]:
        """The task numbers this replica started, in order (a task it ran twice is listed twice)."""
        return [n for n, _ in self.marks("s")]

    def done(self) -> list[int]:
        """The task numbers whose row this replica committed."""
        return [n for n, _ in self.marks("d")]

    async def ready(self) -> None:
        await anyio.to_thread.run_sync(self.app.wait_event, "app healthy; supervising", BOOT_TIMEOUT)

    def events(self, fragment: str) -> list[dict[str, Any]]:
        """The log events whose text contains ``fragment`` (the exact wording may change)."""
        return [e for e in list(self.app.events) if fragment in str(e.get("event", ""))]

    async def wait_for(self, fragment: str, timeout: float) -> None:
        """Wait (bounded) for a log event whose text contains ``fragment``."""
        await anyio.to_thread.run_sync(
            self.app.wait_for, lambda e: fragment in str(e.get("event", "")), timeout, repr(fragment)
        )

    def problems(self) -> list[dict[str, Any]]:
        return [e for e in list(self.app.events) if e.get("level") in ("error", "critical")]


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """``replicas(name, backend, url, lease=...)`` starts a replica; every one is killed at teardown."""
    started: list[Replica] = []

    def start(name: str, backend: str, url: str, **options: Any) -> Replica:
        replica = Replica(name, backend, url, tmp_path, **options)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.app.close()


# -- looking at Redis and at the rows --------------------------------------------------------


def redis(url: str, *args: str | int) -> Any:
    return command(urlsplit(url).port or 6379, *args)


def pending_count(url: str) -> int:
    """The group's pending entries (XPENDING's summary count)."""
    summary = redis(url, "XPENDING", STREAM, GROUP)
    return int(summary[0])


def pending_by_consumer(url: str) -> dict[str, int]:
    summary = redis(url, "XPENDING", STREAM, GROUP)
    return {name.decode(): int(count) for name, count in (summary[3] or [])}


def dead_count(url: str) -> int:
    return int(redis(url, "XLEN", f"{STREAM}:dead"))


def rows(tmp: Path) -> dict[int, int]:
    """Task number -> runs, read from the replicas' database (empty before the first row)."""
    path = tmp / "rows.sqlite3"
    if not path.exists():
        return {}
    connection = sqlite3.connect(path, timeout=30.0)
    try:
        return dict(connection.execute("SELECT n, runs FROM runs").fetchall())
    except sqlite3.OperationalError:  # the table is not there yet
        return {}
    finally:
        connection.close()


async def eventually(predicate: Callable[[], bool], limit: float, what: str, poll: float = 0.1) -> float:
    """Wait (bounded) until ``predicate()``; the seconds it took; fails naming ``what``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            raise AssertionError(f"not within {limit:g} s: {what}")
        await anyio.sleep(poll)
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def producer(url: str) -> AsyncIterator[Dispatcher]:
    """A producer-only dispatcher (consume=False) that knows the ``record`` task."""
    jobs = Dispatcher(backend="redis", redis_url=url, stream=STREAM, consume=False)

    @jobs.task("record")
    async def record(item: Item) -> int:
        raise AssertionError("a producer-only dispatcher ran a task")

    async with jobs:
        yield jobs


def duplicates(found: dict[int, int]) -> dict[int, int]:
    return {n: runs for n, runs in found.items() if runs > 1}


def explain(group: list[Replica], twice: dict[int, int]) -> str:
    """For a failure's message: when each replica started and finished each task that ran twice, and
    every warning the replicas logged (a lease lost, Redis unreachable), so that a rare duplicate
    leaves the evidence needed to find its cause."""
    lines = []
    for replica in group:
        for what in ("s", "d"):
            lines += [f"  {replica.name} {what} {n} at {at:.6f}" for n, at in replica.marks(what) if n in twice]
        lines += [f"  {replica.name} log: {e}" for e in replica.app.events if e.get("level") in ("warning", "error")]
    return "\n".join(lines)


# -- 1. a consumer killed mid-run ---------------------------------------------------------------

TOTAL = 10_000


@pytest.mark.anyio
async def test_a_killed_consumer_loses_nothing_and_only_its_tasks_run_twice(
    anyio_backend: str, redis_url: str, replicas: Callable[..., Replica], tmp_path: Path
) -> None:
    """3 replicas, 10,000 tasks, one replica SIGKILLed mid-run: every task has its row, and the only
    tasks that ran twice are ones the killed replica had started; nothing is pending or dead."""
    lease = 2.0
    # The victim runs on the test's backend; the survivors on one each.
    victim = replicas("victim", anyio_backend, redis_url, lease=lease, max_workers=16)
    survivors = [replicas(f"survivor-{b}", b, redis_url, lease=lease, max_workers=16) for b in ("asyncio", "trio")]
    everyone = [victim, *survivors]
    for replica in everyone:
        await replica.ready()

    async with producer(redis_url) as jobs:
        items = [Item(n=n, sleep=0.002 + (n % 5) * 0.002) for n in range(TOTAL)]
        ids = await jobs.enqueue_many("record", items)
        assert len(set(ids)) == TOTAL

        # Mid-run: the victim has finished some of its work, and much is left for everyone.
        await eventually(lambda: len(victim.done()) >= 600, 30, "the victim commits 600 rows")
        victim.app.proc.send_signal(signal.SIGKILL)
        victim.app.proc.wait(10)
        at_kill = rows(tmp_path)
        held = pending_by_consumer(redis_url)
        victim_started = set(victim.started())
        assert len(at_kill) < TOTAL * 0.8, f"killed too late to matter: {len(at_kill)} rows already"
        victim_held = sum(count for name, count in held.items() if f":{victim.app.proc.pid}:" in name)
        assert victim_held > 0, f"the victim held nothing when killed: {held}"

        took = await eventually(lambda: len(rows(tmp_path)) == TOTAL, 60, "every task has its row")
        await eventually(lambda: pending_count(redis_url) == 0, 10, "the group's pending list empties")

        found = rows(tmp_path)
        assert sorted(found) == list(range(TOTAL))
        twice = duplicates(found)
        assert set(twice) <= victim_started, (
            f"tasks ran twice that the killed replica never started: {sorted(set(twice) - victim_started)[:20]}"
        )
        assert max(found.values()) <= 2, f"a task ran more than twice: {max(found.values())}"
        assert dead_count(redis_url) == 0
        assert int(redis(redis_url, "XLEN", STREAM)) == 0  # acknowledged entries are deleted
        assert int(redis(redis_url, "ZCARD", f"{STREAM}:schedule")) == 0
        reclaimed = [e for s in survivors for e in s.events("reclaimed")]
        assert reclaimed, "no survivor logged reclaiming the dead consumer's entries"
        # A sample of outcomes reads back through the public API.
        for n in random.Random(7).sample(range(TOTAL), 20):
            assert await jobs.result(ids[n], timeout=5) == n

    # The survivors are healthy and stop cleanly.
    for survivor in survivors:
        assert survivor.app.proc.poll() is None, survivor.app.dump()
        assert survivor.problems() == [], survivor.app.dump()
        survivor.app.send(signal.SIGTERM)
    for survivor in survivors:
        assert await anyio.to_thread.run_sync(survivor.app.wait, 15.0) == 0, survivor.app.dump()
    print(
        f"\n[crash/{anyio_backend}] all rows {took:.1f} s after the kill; the victim held "
        f"{victim_held} entries at the kill; {len(twice)} duplicates (victim started {len(victim_started)})"
    )


# -- 2. Redis restarted mid-run ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_redis_restarted_mid_run_loses_nothing(
    anyio_backend: str, how: str, redis_factory: RedisFactory, replicas: Callable[..., Replica], tmp_path: Path
) -> None:
    """Redis goes away (SIGTERM or SIGKILL) and comes back on the same port and AOF: the replicas
    report it, reconnect, and every task (queued, running, scheduled, or enqueued while Redis was
    down) completes."""
    server = redis_factory(appendonly=True)
    url = server.url
    total, late, scheduled = 3000, 300, 200
    lease = 10.0  # longer than the outage: no lease lapses, so no reclaim races the owner
    group = [replicas(f"r-{b}", b, url, lease=lease, max_workers=16) for b in ("asyncio", "trio")]
    for replica in group:
        await replica.ready()

    async with producer(url) as jobs:
        ids = await jobs.enqueue_many("record", [Item(n=n, sleep=0.01) for n in range(total)])
        ids += await jobs.enqueue_many("record", [Item(n=n) for n in range(total, total + scheduled)], delay=2.0)
        await eventually(lambda: len(rows(tmp_path)) >= 500, 30, "500 rows before the outage")
        server.stop() if how == "stop" else server.kill()
        down_at = len(rows(tmp_path))

        late_ids: list[str] = []

        async def enqueue_while_down() -> None:
            payloads = [Item(n=n) for n in range(total + scheduled, total + scheduled + late)]
            late_ids.extend(await jobs.enqueue_many("record", payloads))

        async with anyio.create_task_group() as tg:
            tg.start_soon(enqueue_while_down)
            for replica in group:
                await replica.wait_for("redis unreachable", 10.0)
            await anyio.sleep(1.0)
            server.start()
        everything = total + scheduled + late
        took = await eventually(lambda: len(rows(tmp_path)) == everything, 60, "every task has its row")
        await eventually(lambda: pending_count(url) == 0, 15, "the group's pending list empties")
        found = rows(tmp_path)
        assert sorted(found) == list(range(everything))
        assert len(set(ids + late_ids)) == everything
        assert dead_count(url) == 0
        assert server.command("ZCARD", f"{STREAM}:schedule") == 0
        for replica in group:
            await replica.wait_for("reachable again", 10.0)
            assert replica.app.proc.poll() is None, replica.app.dump()
        for n in (0, total, total + scheduled, everything - 1):
            assert await jobs.result((ids + late_ids)[n], timeout=5) == n
        twice = duplicates(found)
        # A replica that lost Redis did not crash: a task ran twice only if a reply was lost
        # with the connection (Redis SIGKILLed while a settle was in flight), never after a stop.
        if how == "stop":
            assert twice == {}, f"tasks ran twice across a clean Redis restart: {twice}\n" + explain(group, twice)
        assert len(twice) <= 64, f"{len(twice)} tasks ran twice"
    # A read whose reply the outage swallowed leaves entries in a live replica's pending list,
    # unknown to it: they run only once idle for a lease (reclaimed, by it or the other one).
    orphans = sum(int(e.get("entries", 0)) for replica in group for e in replica.events("reclaimed"))
    print(
        f"\n[restart-{how}/{anyio_backend}] {down_at} rows at the outage; all {everything} "
        f"{took:.1f} s after Redis came back; {len(twice)} ran twice; {orphans} waited for the lease"
    )


@pytest.mark.anyio
async def test_a_redis_restarted_empty_is_consumed_again(
    anyio_backend: str, redis_factory: RedisFactory, replicas: Callable[..., Replica], tmp_path: Path
) -> None:
    """Redis restarts without its data (no AOF) while the replica runs tasks: the replica reconnects,
    recreates its group (renewing leases on entries Redis forgot is no reason to die) and runs the
    tasks enqueued afterwards (it died of NOGROUP before e4cdd0d)."""
    server = redis_factory(appendonly=False)
    replica = replicas("r", anyio_backend, server.url, lease=2.0)
    await replica.ready()
    async with producer(server.url) as jobs:
        await jobs.enqueue_many("record", [Item(n=n, sleep=2.5) for n in range(5)])
    await eventually(lambda: len(replica.started()) == 5, 10, "the replica starts the first tasks")
    server.stop()
    await replica.wait_for("redis unreachable", 10.0)
    server.start()  # empty: no stream, no group
    await eventually(
        lambda: replica.app.proc.poll() is not None or bool(replica.events("reachable again")),
        10,
        "the replica reconnects (or dies)",
    )
    await anyio.sleep(1.5)  # its loops (read, renew, count) have met the empty Redis by now
    assert replica.app.proc.poll() is None, f"the replica died when Redis came back empty\n{replica.app.dump()}"
    async with producer(server.url) as jobs:
        await jobs.enqueue_many("record", [Item(n=n) for n in range(5, 15)])
        await eventually(lambda: len(rows(tmp_path)) == 15, 15, "the running and the new tasks leave their rows")
    assert duplicates(rows(tmp_path)) == {}
    assert replica.problems() == [], replica.app.dump()


# -- 3. a slow task keeps its lease -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_task_three_times_its_lease_runs_once(anyio_backend: str, redis_url: str) -> None:
    """lease=1 s, tasks of 3.5 s, two consumers: the holder renews the lease, so nobody reclaims it."""
    lease, duration = 1.0, 3.5
    runs: list[tuple[str, int]] = []

    def consumer(name: str) -> Dispatcher:
        jobs = Dispatcher(backend="redis", redis_url=redis_url, stream=STREAM, lease=lease, max_workers=4)

        @jobs.task("slow", timeout=30.0)
        async def slow(item: Item) -> int:
            runs.append((name, item.n))
            await anyio.sleep(item.sleep)
            return item.n

        return jobs

    first, second = consumer("first"), consumer("second")
    with capture_logs() as logs:
        async with first, second:
            ids = [await first.enqueue("slow", Item(n=n, sleep=duration)) for n in range(3)]
            with anyio.fail_after(duration + 10):
                values = [await first.result(task_id, timeout=duration + 10) for task_id in ids]
            assert values == [0, 1, 2]
            await anyio.sleep(lease * 1.5)  # long enough for a reclaimed copy to have started
            stats = [first.stats(), second.stats()]
            assert pending_count(redis_url) == 0
    assert sorted(n for _, n in runs) == [0, 1, 2], f"runs: {runs}"
    assert [s.reclaimed for s in stats] == [0, 0]
    assert not [e for e in logs if "lease lost" in str(e.get("event")) or "reclaimed" in str(e.get("event"))], logs


@pytest.mark.anyio
async def test_a_clean_busy_run_reports_no_lost_leases(
    anyio_backend: str, redis_url: str, replicas: Callable[..., Replica], tmp_path: Path
) -> None:
    """Two replicas run 4,000 quick tasks with no crash and no outage: nobody's lease lapses, so
    none logs that another consumer took its entries, and every task runs once.

    Up to e4cdd0d every busy replica warned so several times a run: the keeper renewed entries
    whose SETTLE was in flight (acknowledged in Redis, still in ``held`` until the reply), and
    the renewal reported them as taken by another consumer.
    """
    group = [replicas(f"r-{b}", b, redis_url, lease=1.0) for b in ("asyncio", "trio")]
    for replica in group:
        await replica.ready()
    async with producer(redis_url) as jobs:
        await jobs.enqueue_many("record", [Item(n=n, sleep=0.001) for n in range(4000)])
        await eventually(lambda: len(rows(tmp_path)) == 4000, 40, "every task has its row")
    found = rows(tmp_path)
    assert duplicates(found) == {}
    assert [e for r in group for e in r.events("reclaimed")] == []
    lost = [(r.name, e.get("entries")) for r in group for e in r.events("lease lost")]
    assert lost == [], f"'lease lost' warnings without any lapse: {lost}"


# -- 4. the schedule moved by three replicas -----------------------------------------------------------


@pytest.mark.anyio
async def test_three_replicas_move_each_scheduled_task_exactly_once(
    anyio_backend: str, redis_url: str, replicas: Callable[..., Replica], tmp_path: Path
) -> None:
    """500 delayed tasks (250 due at one instant, 250 at random instants) with three replicas and
    the producer all moving the schedule: each task runs once, none before it is due."""
    group = [replicas(f"r{i}-{b}", b, redis_url, lease=5.0) for i, b in enumerate(("asyncio", "trio", "asyncio"))]
    for replica in group:
        await replica.ready()
    rng = random.Random(4)
    due: dict[int, float] = {}
    async with producer(redis_url) as jobs:
        together = 1.5
        start = time.time()
        await jobs.enqueue_many("record", [Item(n=n) for n in range(250)], delay=together)
        due.update(dict.fromkeys(range(250), start + together))

        async def one(n: int) -> None:
            delay = rng.uniform(0.2, 2.5)
            at = time.time()
            await jobs.enqueue("record", Item(n=n), delay=delay)
            due[n] = at + delay

        async with anyio.create_task_group() as tg:
            for n in range(250, 500):
                tg.start_soon(one, n)
        took = await eventually(lambda: len(rows(tmp_path)) == 500, 30, "every scheduled task has its row")
        await eventually(lambda: pending_count(redis_url) == 0, 10, "the group's pending list empties")
        found = rows(tmp_path)
        assert sorted(found) == list(range(500))
        assert duplicates(found) == {}, f"moved (and run) more than once: {duplicates(found)}"
        assert int(redis(redis_url, "ZCARD", f"{STREAM}:schedule")) == 0
        assert dead_count(redis_url) == 0
        started = [mark for replica in group for mark in replica.marks("s")]
        assert sorted(n for n, _ in started) == list(range(500))
        early = {n: round(due[n] - at, 3) for n, at in started if at < due[n]}
        assert early == {}, f"tasks started before they were due (seconds early): {early}"
    # Every replica took part (each had room for the whole burst, and all three read the stream).
    assert all(replica.started() for replica in group), [len(r.started()) for r in group]
    print(f"\n[schedule/{anyio_backend}] 500 scheduled tasks ran once each within {took:.1f} s")


# -- 5. a graceful stop hands back what it has not started ---------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_sigterm_hands_back_tasks_read_but_not_started(
    kind: str, redis_url: str, replicas: Callable[..., Replica], tmp_path: Path
) -> None:
    """A replica gets SIGTERM while it runs tasks: it finishes what runs, starts nothing more, and
    hands back what it holds without running (``sync``: plain functions on 2 threads, 16 workers, so
    it holds far more than it runs; ``async``: whatever it read ahead, if anything), so the other
    replica runs the rest at once, long before the 60 s lease would hand it over; nothing runs twice.

    Up to e4cdd0d ``sync`` failed: plain-function jobs waiting in the thread pool's queue were not
    handed back, so the stopping replica ran them all in its drain, overran its shutdown timeout
    (exit 1) and left the rest to the lease.
    """
    lease, total, duration = 60.0, 120, 1.0
    holder = replicas("holder", "asyncio", redis_url, lease=lease, kind=kind, max_workers=16, max_threads=2)
    holder.app.wait_event("app healthy; supervising", BOOT_TIMEOUT)
    running = 2 if kind == "sync" else 16  # tasks the holder runs at once

    def holds() -> int:
        """The entries pending for the holder (its consumer name carries its pid)."""
        pid = f":{holder.app.proc.pid}:"
        return sum(count for name, count in pending_by_consumer(redis_url).items() if pid in name)

    async def enqueue() -> list[str]:
        async with producer(redis_url) as jobs:
            return await jobs.enqueue_many("record", [Item(n=n, sleep=duration) for n in range(total)])

    ids = anyio.run(enqueue)
    assert len(ids) == total
    deadline = time.monotonic() + 15
    # sync: the holder takes more than its 2 threads run (the hand-back is the point); async: it
    # runs all it takes, or reads ahead when its tasks are quick (an implementation's choice).
    more = 1 if kind == "sync" else 0
    while not (len(holder.started()) >= running and holds() >= running + more):
        assert time.monotonic() < deadline, f"the holder took too little: {pending_by_consumer(redis_url)}"
        time.sleep(0.02)
    taker = replicas("taker", "trio", redis_url, lease=lease, kind="async", max_workers=16)
    taker.app.wait_event("app healthy; supervising", BOOT_TIMEOUT)
    # Signal the holder just after a wave of its tasks started (far from the moment they end).
    seen, changed = len(holder.started()), time.monotonic()
    wave = False
    while time.monotonic() - changed < (0.1 if wave else 5.0):
        time.sleep(0.01)
        if len(holder.started()) != seen:
            seen, changed, wave = len(holder.started()), time.monotonic(), True
    held_at_signal = holds()
    started_at_signal = holder.started()
    sent = time.monotonic()
    holder.app.send(signal.SIGTERM)
    status = holder.app.wait(15.0)
    after_signal = holder.started()[len(started_at_signal) :]
    assert after_signal == [], (
        f"the stopping holder started {len(after_signal)} of the tasks it held after SIGTERM "
        f"instead of handing them back (exit status {status})"
    )
    assert status == 0, holder.app.dump()
    if kind == "sync":
        assert held_at_signal > running, f"the holder held only what it ran ({held_at_signal}): nothing to hand back"

    deadline = time.monotonic() + 20  # a third of the lease: nothing waits for it
    while len(rows(tmp_path)) < total or pending_count(redis_url):
        assert time.monotonic() < deadline, (
            f"{len(rows(tmp_path))}/{total} rows, {pending_count(redis_url)} pending 20 s after SIGTERM"
        )
        time.sleep(0.05)
    took = time.monotonic() - sent
    found = rows(tmp_path)
    assert sorted(found) == list(range(total))
    assert duplicates(found) == {}
    assert sorted(holder.started() + taker.started()) == list(range(total))
    assert dead_count(redis_url) == 0
    print(
        f"\n[sigterm/{kind}] holder held {held_at_signal} (running {running}) at SIGTERM; "
        f"holder ran {len(holder.started())}, taker {len(taker.started())}; "
        f"all done {took:.1f} s after SIGTERM"
    )


# -- 6. Redis unreachable at boot -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_unreachable_redis_fails_the_boot_naming_the_masked_url(backend: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    app = AppProcess(
        [str(SCRIPT), backend, str(tmp_path / "rows.sqlite3"), str(tmp_path / "started.log")],
        replica_env(url, lease=30.0),
    )
    with app:
        began = time.monotonic()
        status = app.wait(10.0 + 5.0)
        took = time.monotonic() - began
        output = app.stdout + app.stderr
    assert status == 1, app.dump()
    assert "s3cret" not in output, app.dump()
    assert f"127.0.0.1:{port}" in output, app.dump()
    failures = [e for e in app.events if e.get("level") in ("error", "critical")]
    assert failures, app.dump()
    text = " ".join(str(v) for e in failures for v in e.values())
    assert f"127.0.0.1:{port}" in text and "s3cret" not in text
    assert "REDIS_URL" in text and "check" in text, text
    print(f"\n[unreachable/{backend}] exit 1 after {took:.1f} s: {failures[0].get('event')}")
