"""Named tasks on Redis, end to end: nacelle_py against streaq and arq, on one Redis, in one run.

The script starts its own ``redis-server`` on a free 127.0.0.1 port (no RDB,
no AOF, its own temporary directory) and stops it at the end. Every system
gets the same Redis, the same no-op task and the same concurrency
(``--concurrency``, 32 by default), in rounds that alternate the systems (a
warm-up round with a tenth of the tasks first); every figure is the median of
the ``--repeat`` rounds. streaq and arq run in the first ``--peer-rounds``
(1 by default) of them only, to keep a run near 2 minutes: at 20,000 tasks
each of them takes 30-40 s a round here (raise it for their medians).
Before each system's turn the database is emptied (``FLUSHALL``).

One turn of one system:

1. Spawn the consumer process(es): this script again, in its hidden
   ``--consumer`` mode. Each imports its library, builds its worker and
   registers the task, prints ``ready`` and waits for SIGUSR1 (go); it has
   not touched the queue.
2. Enqueue ``--tasks`` (20,000) no-op tasks from this process (the producer,
   already connected), timed from the call to its return: the enqueue figure.
   nacelle: ``enqueue_many`` on a producer-only ``Dispatcher(consume=False)``
   (one Lua call per 2,000 entries); streaq: ``Worker.enqueue_many`` of
   ``noop.enqueue()`` tasks (one pipeline); arq: ``await pool.enqueue_job``
   in a loop (arq has no batch call).
3. Signal the consumers to go and time until Redis says every task has an
   outcome (polled every 2 ms on a plain socket): nacelle, the stream empty
   (XLEN) and nothing pending in the group (each entry is acknowledged and
   deleted in the same script that stores its result); streaq, its stream
   empty and nothing pending (it XACKs and XDELs in the transaction that
   stores the result); arq, its queue (a sorted set) empty (the ZREM is in
   the MULTI that stores the result). The window includes each consumer
   connecting and creating its group (milliseconds; the nacelle consumer
   imports coredis before it says ready, as streaq does at import, since the
   Dispatcher would import it at first use, inside the window). Then the
   consumers are told to stop (SIGUSR2); each reports the tasks it ran and
   its CPU time, and the first and last task's stored results are checked.

What each system does per task, with the defaults kept (results stored by all):

- nacelle_py (``Dispatcher(min_workers=C, max_workers=C, backend="redis")``,
  the default ``keep_result=3600``): an entry in a stream read by
  XREADGROUP in batches sized to the free workers; leases renewed in the
  background; outcomes settled in batches (XACK + XDEL + SET of the JSON
  result with a TTL, one Lua call per batch).
- streaq 7 (``Worker(concurrency=C)``, task defaults: results kept 5 min
  (``ttl``), ``max_tries=3``): the pickled task in its own key plus a stream
  entry; per task a pipeline (GET data, INCR tries, lease script) and then a
  transaction (XACK, XDEL, PUBLISH of the result, SET result, index updates,
  dependency script).
- arq 0.28 (``Worker(max_jobs=C, poll_delay=--arq-poll-delay)``; results
  kept 1 h, ``max_tries=5``): job ids in a sorted set polled every
  ``poll_delay``: its default 0.5 s gives about 330 tasks/s here, 0.01-0.1 s
  about three times that, so the bench uses 0.01 s; per job a WATCH/MULTI
  to take the in-progress key, a transaction to read the job and count the
  try, and one to store the result and remove the job.

Two nacelle rows: one consumer process, and two (each with ``C`` workers)
sharing the stream through the consumer group. The machine this was written
for has 2 cores, shared by Redis, the consumers and this process (idle while
consumers run, apart from the polling): the script prints the CPU each part
used per 1,000 tasks (each consumer's ``process_time`` from go to stop,
Redis's ``INFO cpu``), from which the 1 -> 2 process scaling follows, and
the cores that everything else kept busy meanwhile (``/proc/stat``): on a
shared machine that is the noise, and a turn with much of it is slow.

Also, in this process (no Redis): the memory backend's named tasks against
``dispatch(callable)`` on one ``Dispatcher(min_workers=16, max_workers=16,
max_buffered=N)``, ``--memory-tasks`` (100,000) tasks each way, alternating:
``enqueue_many`` of a task taking a pydantic model, then ``join()`` (the
headline), and then ``result(id)`` of every id too; against dispatching the
same work as a callable (``async def job(email=email): await send(email)``,
one per task, then ``join()``), ``--memory-pairs`` (3) times per round, the
median ratio named/dispatch (goal <= 1.5x). A
bare ``dispatch(noop)`` (no argument to carry) is printed for reference.

``--profile FILE`` adds one more nacelle one-consumer turn with cProfile
running in the consumer from ``go`` to ``stop`` and prints its top
functions; ``--py-spy FILE`` does the same with py-spy sampling the
consumer from outside (``pip install py-spy``; far less overhead). The
figures above are measured without either. ``--systems nacelle`` skips
the peers (for quick iterations).

    python bench/redis_dispatcher.py [--repeat 3] [--peer-rounds 1] [--tasks 20000] [--concurrency 32]
        [--memory-tasks 100000] [--memory-pairs 3] [--systems nacelle,streaq,arq] [--profile FILE] [--py-spy FILE] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio
import structlog
from _redis_server import RedisServer, Resp
from pydantic import BaseModel

POLL = 0.002  # seconds between looks at Redis while consumers drain the queue
NACELLE_STREAM = "bench:nacelle"
STREAQ_QUEUE = "bench"
ARQ_QUEUE = "bench:arq"
SYSTEMS = ("nacelle", "streaq", "arq")


# -- what "every task has an outcome" means in Redis, per system -------------------------


def remaining(system: str, conn: Resp) -> int:
    """Tasks without a stored outcome yet: entries left in the queue plus entries pending."""
    if system == "arq":
        return int(conn.command("ZCARD", ARQ_QUEUE))
    stream, group = (
        (NACELLE_STREAM, "nacelle") if system == "nacelle" else (f"streaq:{STREAQ_QUEUE}:queues:normal", "workers")
    )
    length, pending = conn.commands(("XLEN", stream), ("XPENDING", stream, group))
    if isinstance(pending, RuntimeError):  # NOGROUP: no consumer has created the group yet
        if not str(pending).startswith("NOGROUP"):
            raise pending
        return int(length)
    return int(length) + int(pending[0])


def result_key(system: str, task_id: str) -> str:
    if system == "nacelle":
        return f"{NACELLE_STREAM}:result:{task_id}"
    if system == "streaq":
        return f"streaq:{STREAQ_QUEUE}:task:results:{task_id}"
    return f"arq:result:{task_id}"


# -- producers (this process) --------------------------------------------------------------


async def enqueue_nacelle(url: str, n: int) -> tuple[float, list[str]]:
    from nacelle_py.base import Dispatcher

    jobs = Dispatcher(backend="redis", redis_url=url, stream=NACELLE_STREAM, consume=False)

    @jobs.task("noop")
    async def noop() -> None:
        pass

    async with jobs:
        started = time.perf_counter()
        ids = await jobs.enqueue_many("noop", [None] * n)
        elapsed = time.perf_counter() - started
    return elapsed, ids


async def enqueue_streaq(url: str, n: int) -> tuple[float, list[str]]:
    from streaq import Worker

    worker = Worker(redis_url=url, queue_name=STREAQ_QUEUE, handle_signals=False)

    @worker.task(name="noop")
    async def noop() -> None:
        pass

    async with worker:
        started = time.perf_counter()
        tasks = [noop.enqueue() for _ in range(n)]
        await worker.enqueue_many(tasks)
        elapsed = time.perf_counter() - started
    return elapsed, [task.id for task in tasks]


async def enqueue_arq(url: str, n: int) -> tuple[float, list[str]]:
    from arq.connections import RedisSettings, create_pool

    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=ARQ_QUEUE)
    try:
        enqueue = pool.enqueue_job
        ids = []
        started = time.perf_counter()
        for _ in range(n):
            job = await enqueue("noop")
            assert job is not None  # None only for a job id that exists already
            ids.append(job.job_id)
        elapsed = time.perf_counter() - started
    finally:
        await pool.aclose()
    return elapsed, ids


PRODUCERS: dict[str, Callable[[str, int], Any]] = {
    "nacelle": enqueue_nacelle,
    "streaq": enqueue_streaq,
    "arq": enqueue_arq,
}


# -- consumers (child processes) -----------------------------------------------------------


GO, STOP = signal.SIGUSR1, signal.SIGUSR2  # the parent's signals to a consumer (no thread waits for them)


def say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class Gate:
    """A consumer's signals: ``ready`` on stdout, then SIGUSR1 (go) and SIGUSR2 (stop) from the parent.

    The CPU clock (and the profiler, if any) runs from go to stop.
    """

    def __init__(self, signals: Any, profile: str | None, py_spy: str | None) -> None:
        self.signals = signals
        self.cpu = 0.0
        self.profiler: Any = None
        self.py_spy = py_spy
        self.sampler: subprocess.Popen[bytes] | None = None
        if profile:
            import cProfile

            self.profiler = cProfile.Profile()

    async def _wait(self, expected: signal.Signals) -> None:
        async for received in self.signals:
            if received == expected:
                return

    async def go(self) -> None:
        say("ready")
        await self._wait(GO)
        if self.py_spy:
            # py-spy samples this process from outside (no overhead in it) from go to stop.
            spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
            self.sampler = subprocess.Popen(
                [spy, "record", "--pid", str(os.getpid()), "--format", "raw", "--rate", "250", "-o", self.py_spy],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await anyio.sleep(0.2)  # let it attach
        self.cpu = time.process_time()
        if self.profiler is not None:
            self.profiler.enable()

    async def stop(self) -> None:
        await self._wait(STOP)
        self.cpu = time.process_time() - self.cpu
        if self.profiler is not None:
            self.profiler.disable()
        if self.sampler is not None:
            self.sampler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            await anyio.to_thread.run_sync(self.sampler.wait)


async def consume_nacelle(url: str, concurrency: int, gate: Gate, options: argparse.Namespace) -> int:
    from nacelle_py.base import Dispatcher

    jobs = Dispatcher(
        min_workers=concurrency, max_workers=concurrency, backend="redis", redis_url=url, stream=NACELLE_STREAM
    )

    @jobs.task("noop")
    async def noop() -> None:
        pass

    # The Dispatcher imports its Redis backend (and coredis, ~0.3 s) at first use, inside the
    # timed window; a deployment pays that at boot, and the peers pay theirs at import: pay it here.
    import coredis  # noqa: F401

    await gate.go()
    async with jobs:
        await gate.stop()
        stats = jobs.stats()
    return stats.completed


async def consume_streaq(url: str, concurrency: int, gate: Gate, options: argparse.Namespace) -> int:
    from streaq import Worker

    worker = Worker(redis_url=url, queue_name=STREAQ_QUEUE, concurrency=concurrency, handle_signals=False)

    @worker.task(name="noop")
    async def noop() -> None:
        pass

    await gate.go()
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run_async)
        await gate.stop()
        tg.cancel_scope.cancel()
    return worker.counters["completed"]


async def consume_arq(url: str, concurrency: int, gate: Gate, options: argparse.Namespace) -> int:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    async def noop(ctx: dict[str, Any]) -> None:
        pass

    worker = Worker(
        functions=[func(noop, name="noop")],
        queue_name=ARQ_QUEUE,
        redis_settings=RedisSettings.from_dsn(url),
        max_jobs=concurrency,
        poll_delay=options.arq_poll_delay,
        handle_signals=False,
    )
    await gate.go()
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.main)
        await gate.stop()
        tg.cancel_scope.cancel()
    await worker.close()
    return worker.jobs_complete


CONSUMERS = {"nacelle": consume_nacelle, "streaq": consume_streaq, "arq": consume_arq}


def consumer_main(options: argparse.Namespace) -> None:
    """The hidden ``--consumer`` mode: ready, go, consume until stop, report as JSON."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)
    gate: Gate | None = None

    async def run() -> int:
        nonlocal gate
        with anyio.open_signal_receiver(GO, STOP) as signals:
            gate = Gate(signals, options.profile, options.py_spy)
            return await CONSUMERS[options.consumer](options.url, options.concurrency, gate, options)

    completed = anyio.run(run, backend="asyncio")
    assert gate is not None
    if gate.profiler is not None:
        gate.profiler.dump_stats(options.profile)
    say("report " + json.dumps({"completed": completed, "cpu": gate.cpu}))


# -- one turn of one system ----------------------------------------------------------------


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy so far, all cores (from /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(f) for f in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Turn:
    """The figures of one system's turn (times in seconds, CPU in CPU seconds)."""

    def __init__(
        self,
        enqueue: float,
        drain: float,
        consumer_cpu: float,
        redis_cpu: float,
        busy: float,
        completed: list[int],
        stop: float,
    ) -> None:
        self.enqueue = enqueue
        self.drain = drain
        self.consumer_cpu = consumer_cpu
        self.redis_cpu = redis_cpu
        self.other_cpu = max(0.0, busy - consumer_cpu - redis_cpu)  # this process's polling, and the rest
        self.completed = completed
        self.stop = stop


class Odd(list[str]):
    """Anything unexpected seen during the run (printed at the end)."""


def spawn(
    system: str,
    server: RedisServer,
    options: argparse.Namespace,
    profile: str | None,
    py_spy: str | None,
    logs: list[Path],
) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--consumer",
        system,
        "--url",
        server.url,
        "--concurrency",
        str(options.concurrency),
        "--arq-poll-delay",
        str(options.arq_poll_delay),
    ]
    if profile:
        argv += ["--profile", profile]
    if py_spy:
        argv += ["--py-spy", py_spy]
    log = Path(server.dir) / f"consumer-{len(logs)}.log"
    logs.append(log)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    return proc


def expect(proc: subprocess.Popen[str], log: Path, prefix: str, odd: Odd, who: str) -> str:
    """The consumer's next line starting with ``prefix`` (without it); other lines (logs) are noted."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            sys.exit(f"a consumer exited (status {proc.returncode}):\n{log.read_text()[-3000:]}")
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
        odd.append(f"{who} consumer stdout: {line.strip()[:800]}")


def turn(
    system: str,
    processes: int,
    n: int,
    server: RedisServer,
    options: argparse.Namespace,
    odd: Odd,
    profile: str | None = None,
    py_spy: str | None = None,
) -> Turn:
    conn = server.conn
    conn.command("FLUSHALL")
    logs: list[Path] = []
    procs = [spawn(system, server, options, profile, py_spy, logs) for _ in range(processes)]
    try:
        for proc, log in zip(procs, logs):
            expect(proc, log, "ready", odd, f"{system} x{processes}")
        enqueue, ids = anyio.run(PRODUCERS[system], server.url, n, backend="asyncio")
        if remaining(system, conn) != n:
            odd.append(f"{system}: {remaining(system, conn)} tasks queued after enqueueing {n}")
        limit = max(60.0, n / 50)
        cpu_before, busy_before = server.cpu(), machine_busy()
        started = time.perf_counter()
        for proc in procs:
            proc.send_signal(GO)
        while remaining(system, conn):
            if time.perf_counter() - started > limit:
                odd.append(
                    f"{system} x{processes}: not drained after {limit:g} s "
                    f"({remaining(system, conn)} of {n} left): stuck consumer?"
                )
                break
            time.sleep(POLL)
        drain = time.perf_counter() - started
        busy = machine_busy() - busy_before
        redis_cpu = server.cpu() - cpu_before
        stop_at = time.perf_counter()
        reports = []
        for proc in procs:
            proc.send_signal(STOP)
        for proc, log in zip(procs, logs):
            reports.append(json.loads(expect(proc, log, "report ", odd, f"{system} x{processes}")))
            proc.wait(30)
        stop = time.perf_counter() - stop_at
        for key in (result_key(system, ids[0]), result_key(system, ids[-1])):
            if not conn.command("EXISTS", key):
                odd.append(f"{system}: no stored result at {key} after the drain")
        completed = [r["completed"] for r in reports]
        if sum(completed) != n:
            odd.append(f"{system} x{processes}: consumers report {completed} tasks run, {n} enqueued")
        for log in logs:
            text = log.read_text().strip()
            if text:
                odd.append(f"{system} x{processes} consumer stderr: {text[:800]}")
        return Turn(enqueue, drain, sum(r["cpu"] for r in reports), redis_cpu, busy, completed, stop)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                odd.append(f"{system} x{processes}: a consumer had to be killed")


# -- the memory backend: named tasks against dispatch(callable) ------------------------------


class Email(BaseModel):
    """The memory case's payload (module level: the task's annotations are read at registration)."""

    to: str
    subject: str


async def send(email: Email) -> None:
    pass


async def memory_round(n: int, named_first: bool) -> tuple[float, float, float, float]:
    """Seconds for ``n`` tasks each way: (named to their outcomes, named plus reading every result,
    dispatch of a callable doing the same work, dispatch of a bare no-op)."""
    from nacelle_py.base import Dispatcher

    async def noop() -> None:
        pass

    email = Email(to="a@b.c", subject="hi")
    async with Dispatcher(min_workers=16, max_workers=16, max_buffered=n) as jobs:
        jobs.task("send")(send)

        async def named() -> tuple[float, float]:
            started = time.perf_counter()
            ids = await jobs.enqueue_many("send", [email] * n)
            await jobs.join()
            joined = time.perf_counter() - started
            result = jobs.result
            for task_id in ids:
                await result(task_id)
            return joined, time.perf_counter() - started

        async def dispatched() -> float:
            # The same work through the callable API: the task with its argument bound.
            dispatch = jobs.dispatch
            started = time.perf_counter()
            for _ in range(n):

                async def job(email: Email = email) -> None:
                    await send(email)

                dispatch(job)
            await jobs.join()
            return time.perf_counter() - started

        async def bare() -> float:
            dispatch = jobs.dispatch
            started = time.perf_counter()
            for _ in range(n):
                dispatch(noop)
            await jobs.join()
            return time.perf_counter() - started

        if named_first:
            joined, with_results = await named()
            same, no_op = await dispatched(), await bare()
        else:
            same, no_op = await dispatched(), await bare()
            joined, with_results = await named()
        stats = jobs.stats()
    assert stats.completed == 3 * n, stats
    return joined, with_results, same, no_op


# -- the run -----------------------------------------------------------------------------------


ROWS = (("nacelle", 1), ("nacelle", 2), ("streaq", 1), ("arq", 1))


def installed(package: str) -> str:
    """The version of a peer, or "not installed" (``--systems nacelle`` needs none)."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def rate(per_second: float) -> str:
    return f"{per_second:10,.0f} tasks/s"


def main(options: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server = RedisServer()
    odd = Odd()
    n = options.tasks
    systems = options.systems.split(",")
    if not set(systems) <= set(SYSTEMS) or "nacelle" not in systems:
        sys.exit(f"--systems: a comma-separated list of {', '.join(SYSTEMS)}, nacelle included")
    all_rows = tuple(row for row in ROWS if row[0] in systems)
    turns: dict[tuple[str, int], list[Turn]] = {row: [] for row in all_rows}
    memory: list[tuple[float, float, float, float]] = []
    import nacelle_py

    print(
        f"nacelle_py from {os.path.dirname(nacelle_py.__file__)}, streaq {installed('streaq')}, "
        f"arq {installed('arq')}, Python {sys.version.split()[0]}"
    )
    print(
        f"redis-server {server.version} on 127.0.0.1:{server.port}, {os.cpu_count()} CPUs, "
        f"{n:,} no-op tasks, concurrency {options.concurrency} per consumer process, "
        f"{options.repeat} rounds after a warm-up (median)",
        flush=True,
    )
    try:
        for round_ in range(options.repeat + 1):
            warm = round_ == 0
            count = max(n // 10, 100) if warm else n
            rows = all_rows if round_ % 2 else all_rows[::-1]  # alternate the order: noise falls on every system
            if not warm and round_ > options.peer_rounds:
                rows = tuple(row for row in rows if row[0] == "nacelle")
            for system, processes in rows:
                result = turn(system, processes, count, server, options, odd)
                if not warm:
                    turns[system, processes].append(result)
                if options.verbose:
                    print(
                        f"  round {round_} {system} x{processes}: enqueue {count / result.enqueue:,.0f}/s, "
                        f"drain {count / result.drain:,.0f}/s, cores busy: consumers "
                        f"{result.consumer_cpu / result.drain:.2f}, redis {result.redis_cpu / result.drain:.2f}, "
                        f"other {result.other_cpu / result.drain:.2f}; stop {result.stop:.2f} s, per process "
                        f"{result.completed}",
                        flush=True,
                    )
            for pair in range(options.memory_pairs):  # a pair takes a second: several per round steady the median
                named_first = (round_ + pair) % 2 == 0
                memory_result = anyio.run(memory_round, options.memory_tasks, named_first, backend="asyncio")
                if not warm:
                    memory.append(memory_result)
        profiled = []
        if options.profile:
            profiled.append(("cProfile", turn("nacelle", 1, n, server, options, odd, profile=options.profile)))
        if options.py_spy:
            profiled.append(("py-spy", turn("nacelle", 1, n, server, options, odd, py_spy=options.py_spy)))
    finally:
        server.stop()

    def med(row: tuple[str, int], value: Callable[[Turn], float]) -> float:
        return statistics.median(value(t) for t in turns[row])

    consume = {row: med(row, lambda t: n / t.drain) for row in all_rows}
    enqueue = {
        system: statistics.median(n / t.enqueue for row in all_rows if row[0] == system for t in turns[row])
        for system in systems
    }
    lines = []
    peers = min(options.peer_rounds, options.repeat)
    rounds = {system: options.repeat if system == "nacelle" else peers for system in SYSTEMS}

    def note(system: str) -> str:
        return "" if rounds[system] == options.repeat else f" ({rounds[system]} round{'s' if peers > 1 else ''})"

    for system, processes in all_rows:
        label = f"{system}, {processes} consumer process{'es' if processes > 1 else ''}, consume (end to end)"
        lines.append((label + note(system), rate(consume[system, processes])))
    arq_enqueue = "enqueue_job in a loop"
    for system, how in (("nacelle", "enqueue_many"), ("streaq", "enqueue_many"), ("arq", arq_enqueue)):
        if system in systems:
            lines.append((f"{system}, one producer, {how}{note(system)}", rate(enqueue[system])))
    joined_time = statistics.median(m[0] for m in memory)
    named_time = statistics.median(m[1] for m in memory)
    dispatch_time = statistics.median(m[2] for m in memory)
    bare_time = statistics.median(m[3] for m in memory)
    m = options.memory_tasks
    lines.append((f"memory backend, {m:,} named tasks, enqueue_many + join", rate(m / joined_time)))
    lines.append((f"memory backend, {m:,} named tasks, enqueue_many + join + result() each", rate(m / named_time)))
    lines.append((f"memory backend, {m:,} dispatch(the same work as a callable) + join", rate(m / dispatch_time)))
    lines.append((f"memory backend, {m:,} dispatch(noop) + join", rate(m / bare_time)))
    width = max(len(label) for label, _ in lines) + 1
    for label, figure in lines:
        print(f"{label + ':':<{width}} {figure}")
    cores = os.cpu_count() or 1
    print(
        f"CPU while draining: ms per 1,000 tasks for the consumers and redis-server, and cores busy "
        f"(of {cores}) with them and with everything else (this process's polling, other users):"
    )
    for row in all_rows:
        consumer_ms = med(row, lambda t: t.consumer_cpu) / n * 1e6  # CPU s per task -> ms per 1,000 tasks
        redis_ms = med(row, lambda t: t.redis_cpu) / n * 1e6  # CPU s per task -> ms per 1,000 tasks
        ours = med(row, lambda t: (t.consumer_cpu + t.redis_cpu) / t.drain)
        other = med(row, lambda t: t.other_cpu / t.drain)
        stop = med(row, lambda t: t.stop)
        print(
            f"  {row[0]} x{row[1]}: consumers {consumer_ms:7.1f} ms, redis {redis_ms:6.1f} ms; cores busy "
            f"{ours:.2f} + {other:.2f} other; consumers took {stop:.2f} s to stop"
        )
    for how, profiled_turn in profiled:
        print(f"profiled turn (nacelle x1, under {how}): {n / profiled_turn.drain:,.0f} tasks/s")
    if options.profile:
        print_profile(options.profile)
    if options.py_spy:
        print_samples(options.py_spy)
    busy = [t for row in all_rows for t in turns[row] if t.other_cpu > 0.5 * t.drain]
    if busy:
        odd.append(
            f"in {len(busy)} of {sum(len(v) for v in turns.values())} turns other processes kept more than "
            "half a core busy while the consumers drained: those turns' figures are low (--verbose lists them)"
        )
    for remark in odd:
        print(f"note: {remark}")
    one, two = consume["nacelle", 1], consume["nacelle", 2]

    def times(mine: float, theirs: tuple[Any, ...] | str, table: dict[Any, float]) -> str:
        return f"{mine / table[theirs]:.1f}x" if theirs in table else "n/a"

    print(f"goal nacelle one consumer process >= 20,000 tasks/s: {one:,.0f}")
    print(f"goal nacelle enqueue_many >= 30,000 tasks/s: {enqueue['nacelle']:,.0f}")
    print(f"ratio nacelle enqueue_many/streaq enqueue_many: {times(enqueue['nacelle'], 'streaq', enqueue)}")
    print(f"ratio nacelle (1 process)/streaq consume: {times(one, ('streaq', 1), consume)} (goal >= 10x)")
    print(f"ratio nacelle (1 process)/arq consume: {times(one, ('arq', 1), consume)} (goal >= 25x)")
    # Two processes can only help while a core is idle: the CPU one task costs (consumer plus
    # Redis, measured in the two-process turns) bounds the rate both cores can sustain.
    per_task = med(("nacelle", 2), lambda t: (t.consumer_cpu + t.redis_cpu) / n)
    print(
        f"ratio nacelle 2 processes/1 process: {two / one:.2f}x ({cores} cores shared by the consumers, "
        f"redis-server and everything else: at {per_task * 1e6:.0f} µs of CPU per task they allow at most "
        f"{cores / per_task:,.0f} tasks/s with both cores free)"
    )
    print(
        f"memory: named tasks take {joined_time / dispatch_time:.2f}x the time of dispatch(callable) of the "
        f"same work (goal <= 1.5x); {named_time / dispatch_time:.2f}x reading every result too; "
        f"{joined_time / bare_time:.2f}x a bare dispatch(noop)"
    )


def print_profile(path: str, top: int = 25) -> None:
    import io
    import pstats

    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(path, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(top)
        body = out.getvalue()
        start = body.find("   ncalls")
        print(f"profile of the nacelle consumer (one process), top {top} by {key}:")
        print(body[start:].rstrip())


def print_samples(path: str, top: int = 30, who: str = "the nacelle consumer (one process)") -> None:
    """The functions py-spy saw most often: on top of the stack (self) and anywhere in it (total)."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            anywhere[frame] = anywhere.get(frame, 0) + samples
    for title, table in (("self", own), ("total", anywhere)):
        print(f"py-spy samples of {who}, top {top} by {title} ({total} samples):")
        for frame, samples in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {100 * samples / total:5.1f}%  {frame}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds after one warm-up round (median)")
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per system per round")
    parser.add_argument("--concurrency", type=int, default=32, help="tasks at once per consumer process")
    parser.add_argument("--memory-tasks", type=int, default=100_000, help="tasks each way, memory backend")
    parser.add_argument("--memory-pairs", type=int, default=3, help="memory rounds (each way once) per round")
    parser.add_argument(
        "--peer-rounds",
        type=int,
        default=1,
        help="measured rounds that include streaq and arq (they take ~1 min a round)",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="which systems to run (nacelle always)")
    parser.add_argument("--arq-poll-delay", type=float, default=0.01, help="arq's poll_delay (its default: 0.5)")
    parser.add_argument("--profile", metavar="FILE", help="one more nacelle turn under cProfile, saved to FILE")
    parser.add_argument("--py-spy", metavar="FILE", help="one more nacelle turn sampled by py-spy, saved to FILE")
    parser.add_argument("--verbose", action="store_true", help="print every turn's figures as it ends")
    parser.add_argument("--consumer", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consumer:
        consumer_main(args)
    else:
        main(args)
