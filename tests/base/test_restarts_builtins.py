"""Built-ins under restarts (issue 13): a restarted built-in behaves as a freshly booted one.

A restart re-uses the component instance: its ``stop()`` (if it still runs), ``finalize()``,
then inject, ``init()``, ``run()`` and the health wait, as at boot. For each built-in a test
makes it fail once the way it can fail in production, lets it restart (tiny backoff), and
checks that it works as at boot, that the restart is on the component's record (the ops
endpoint's ``/debug/components``), that ``stats()`` make sense, and that the app still ends
with status 0 after ``app.shutdown()``. Every test runs on asyncio and trio; every wait is
bounded.

How each one fails:

- Worker: a tick raises (without ``tolerate_errors`` the error ends ``run``).
- Pipeline: a stage raises (``run`` raises ``PipelineError``), on the serial, parallel and
  worker-based (a real Redis) engines; and with ``restart="always"``, a finite pipeline that
  finished is run again.
- HTTPServer: its ASGI app's lifespan startup raises (``run`` fails during boot).
- Dispatcher (memory and Redis backends), HTTPServer: nothing that runs inside them fails a
  running ``run`` (a task's error, a handler's error are theirs alone), so a subclass
  (``Crashing``) crashes the first incarnation: the built-in's ``run`` is cancelled under it,
  as by a failure beside it in the same task group, and the subclass raises.
- Machine: a process with its own sub-machine (``Inject("machine")``) whose ``run`` raises
  while its routines run.

The last test restarts them all at once through a sibling's failure (``one_for_all``): then
the running built-ins are stopped first, and the HTTPServer binds its fixed port again.

What ``stats()`` mean after a restart, per built-in: the Dispatcher's counters and the
Worker's are the component's whole life (the accounting identity of the Dispatcher holds
across the crash; nothing is counted twice), the Pipeline's and the HTTPServer's are the
current run's (as documented), and a restarted component's sub-machine is a new one.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import structlog
from _support import Boom, Served, serving, wait_until
from pydantic import BaseModel

from nacelle_py import App, Inject, Process
from nacelle_py.base import (
    Dispatcher,
    DispatcherStatus,
    HTTPServer,
    Machine,
    Message,
    Pipeline,
    Routine,
    Stage,
    Worker,
)
from nacelle_py.testing import Trace, test_app

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ops_on", "quick_http")]

QUICK = (0.01, 0.02)
"""A backoff that keeps the restarts fast."""
TRANSIENT: dict[str, Any] = {
    "restart": "on_failure",
    "backoff": QUICK,
    "max_restarts": 3,
    "start_timeout": 5,
    "shutdown_timeout": 3,
}
"""The registration of a built-in under test."""
LIMIT = 10.0
"""Seconds any one wait of these tests may take."""


@pytest.fixture
def ops_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ops endpoint on a free port of 127.0.0.1: it shows each component's record."""
    monkeypatch.setenv("OPS_ADDR", "127.0.0.1:0")


@pytest.fixture
def quick_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTPServer stops at once (no drain delay) and picks a free port unless a test sets one."""
    monkeypatch.setenv("HTTP_DRAIN_DELAY", "0")
    monkeypatch.setenv("HTTP_PORT", "0")


# -- components: counted incarnations, a crash on demand ----------------------------------------------


class Counted:
    """Mixin for a built-in: counts its incarnations (``init`` calls), recorded as ``<label>#<n>.init``."""

    def __init__(self, *args: Any, trace: Trace, label: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trace = trace
        self.label = label
        self.inits = 0

    async def init(self) -> None:
        self.inits += 1
        self.trace.add(f"{self.label}#{self.inits}.init")
        await super().init()


class Crashing(Counted):
    """Mixin for a built-in: its first incarnation crashes when the test calls ``crash()``.

    The built-in's own ``run`` is cancelled under it, as by a failure beside it, and ``Boom``
    is raised: the process failed. Later incarnations run the built-in as it is.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._crash = anyio.Event()

    def crash(self) -> None:
        self._crash.set()

    async def run(self) -> None:
        base_run = super().run
        if self.inits > 1:
            await base_run()
            return
        async with anyio.create_task_group() as tg:

            async def base() -> None:
                await base_run()
                tg.cancel_scope.cancel()  # stopped before any crash: a clean return

            tg.start_soon(base)
            await self._crash.wait()
            tg.cancel_scope.cancel()
        if self._crash.is_set():
            self.trace.add(f"{self.label}#1.crash")
            raise Boom(f"{self.label} crashed")


class CrashingDispatcher(Crashing, Dispatcher):
    """A Dispatcher whose first run crashes on demand."""


class CrashingHTTPServer(Crashing, HTTPServer):
    """An HTTPServer whose first run crashes on demand."""


class CountedDispatcher(Counted, Dispatcher):
    """A Dispatcher whose incarnations are counted."""


class CountedHTTPServer(Counted, HTTPServer):
    """An HTTPServer whose incarnations are counted."""


class CountedWorker(Counted, Worker):
    """A Worker whose incarnations are counted."""


class CountedPipeline(Counted, Pipeline):
    """A Pipeline whose incarnations are counted."""


class Ticking(Process):
    """A process with its own sub-machine: each run starts a ticking routine there, subscribes to
    ``orders.*`` (what it receives is kept in ``orders``, by incarnation), then waits for ``stop()``.

    With ``fail_first``, the first run raises ``Boom`` once the test calls ``crash()``,
    while its routine still ticks.
    """

    machine: Machine = Inject("machine")

    def __init__(self, trace: Trace, *, fail_first: bool = False) -> None:
        self.trace = trace
        self.fail_first = fail_first
        self.inits = 0
        self.ticks: dict[int, int] = {}  # per incarnation
        self.machines: list[Machine] = []  # the machine each incarnation was given
        self.routines: list[Routine] = []  # the routine each incarnation started
        self.orders: list[tuple[int, str]] = []  # (incarnation, message) as the subscriptions received them
        self._crash = anyio.Event()
        self._stopped: anyio.Event | None = None

    def crash(self) -> None:
        self._crash.set()

    async def init(self) -> None:
        self.inits += 1
        self.trace.add(f"ticking#{self.inits}.init")
        self._stopped = anyio.Event()  # one incarnation's
        self.ticks[self.inits] = 0

    async def tick(self, routine: Routine) -> None:
        incarnation = self.inits
        while True:
            self.ticks[incarnation] += 1
            await anyio.sleep(0.002)

    async def run(self) -> None:
        incarnation = self.inits
        self.machines.append(self.machine)
        self.routines.append(await self.machine.go(self.tick, id="ticker", tags=("tick",)))
        self.machine.subscribe("orders.*", lambda msg: self.orders.append((incarnation, msg)), buffer=1)
        if self.fail_first and self.inits == 1:
            await self._crash.wait()
            raise Boom("ticking crashed")
        assert self._stopped is not None
        await self._stopped.wait()

    async def stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()


class Once(Process):
    """Fails its first run when the test calls ``crash()``; later runs wait for ``stop()``."""

    def __init__(self) -> None:
        self.runs = 0
        self._crash = anyio.Event()
        self._stopped: anyio.Event | None = None

    def crash(self) -> None:
        self._crash.set()

    async def run(self) -> None:
        self.runs += 1
        self._stopped = anyio.Event()
        if self.runs == 1:
            await self._crash.wait()
            raise Boom("trigger")
        await self._stopped.wait()

    async def stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()


# -- helpers ------------------------------------------------------------------------------------------


@asynccontextmanager
async def served(app: App) -> AsyncIterator[Served]:
    """Serve ``app`` until the block ends (then ``app.shutdown()``), logs captured, bounded."""
    with structlog.testing.capture_logs():
        async with serving(app, limit=4 * LIMIT) as result:
            yield result


async def ops(app: App, path: str) -> httpx.Response:
    """GET ``path`` from the app's ops endpoint."""
    address = app.ops_address
    assert address is not None, "the ops endpoint is not listening"
    async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}", timeout=5.0) as client:
        return await client.get(path)


async def record(app: App, name: str) -> dict[str, Any]:
    """The component's record, as ``/debug/components`` shows it."""
    body = (await ops(app, "/debug/components")).json()
    [found] = [c for c in body["components"] if c["name"] == name]
    return found


async def restarted(app: App, name: str, restarts: int = 1) -> dict[str, Any]:
    """Wait until ``name`` has restarted ``restarts`` times, runs again and the app is ready; its record then.

    Ready after the restart began means the restart is done: its health keys are held
    (unhealthy, "restarting") from the failure until the restarted component is up.
    """
    with anyio.fail_after(LIMIT):
        while True:
            found = await record(app, name)
            if found["restarts"] >= restarts and found["state"] == "running":
                if (await ops(app, "/readyz")).status_code == 200:
                    return await record(app, name)
            await anyio.sleep(0.01)


def assert_restarted_once(found: dict[str, Any], error: str) -> None:
    """The record says: one restart, running again and healthy, the error that caused it kept on it."""
    assert found["restarts"] == 1, found
    assert found["state"] == "running", found
    assert found["last_error"] is not None and error in found["last_error"], found
    assert all(key["healthy"] for key in found["health"]), found


def incarnations(trace: Trace, label: str) -> int:
    """How many times ``label`` was initialised (``<label>#<n>.init`` on the trace)."""
    return sum(1 for e in trace if e.startswith(f"{label}#") and e.endswith(".init"))


def assert_crashed_once(trace: Trace, label: str) -> None:
    """``label``'s first incarnation crashed (``Crashing``), and a second one was initialised after it."""
    assert incarnations(trace, label) == 2 and trace.before(f"{label}#1.crash", f"{label}#2.init"), trace


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refuses(port: int) -> bool:
    """Whether nothing accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- Dispatcher ---------------------------------------------------------------------------------------


class N(BaseModel):
    n: int


def with_double(jobs: Dispatcher) -> Dispatcher:
    """Register the named task ``double`` on ``jobs``."""

    @jobs.task("double")
    async def double(payload: N) -> int:
        return payload.n * 2

    return jobs


async def doubles(jobs: Dispatcher, values: range) -> list[int]:
    """Enqueue ``double`` for each value and read every result back."""
    ids = [await jobs.enqueue("double", N(n=v)) for v in values]
    return [await jobs.result(task_id, timeout=LIMIT) for task_id in ids]


async def dispatched(jobs: Dispatcher, count: int) -> list[int]:
    """Dispatch ``count`` callables and wait until each ran; what they recorded."""
    done: list[int] = []

    def task(i: int) -> Callable[[], Any]:
        async def run() -> None:
            await anyio.sleep(0)
            done.append(i)

        return run

    for i in range(count):
        assert jobs.dispatch(task(i)), "the dispatcher refused a task"
    await wait_until(lambda: len(done) == count, LIMIT)
    return sorted(done)


def assert_accounted(jobs: Dispatcher) -> None:
    """Nothing accepted is lost or counted twice: accepted == every outcome + handed back + queued + running."""
    s = jobs.stats()
    outcomes = s.completed + s.failed + s.timed_out + s.handed_back + s.queued + s.running
    assert s.accepted == outcomes, s


async def test_dispatcher_restarted_after_a_crash_runs_new_tasks() -> None:
    """Memory backend: the crash hands back the task it was running; the restarted pool runs new ones.

    Callables and named tasks alike; the pool is back to ``min_workers``; the counters cover
    both incarnations and add up.
    """
    trace = Trace()
    app = test_app("t")
    jobs = app.register(
        with_double(CrashingDispatcher(min_workers=2, max_workers=4, trace=trace, label="jobs")),
        name="jobs",
        **TRANSIENT,
    )
    stuck = anyio.Event()

    async def hangs() -> None:
        stuck.set()
        await anyio.sleep_forever()

    async with served(app) as result:
        assert await dispatched(jobs, 10) == list(range(10))
        assert await doubles(jobs, range(3)) == [0, 2, 4]
        assert jobs.dispatch(hangs)
        with anyio.fail_after(LIMIT):
            await stuck.wait()
        jobs.crash()
        assert_restarted_once(await restarted(app, "jobs"), "jobs crashed")
        assert jobs.handed_back == [hangs]  # what the crash cut off, as an unwind would
        assert jobs.status == DispatcherStatus.RUNNING and app.health.get("jobs").healthy
        assert jobs.stats().workers == 2  # min_workers: none of the first run's workers is left

        assert await dispatched(jobs, 10) == list(range(10))
        assert await doubles(jobs, range(3, 6)) == [6, 8, 10]
        await jobs.join()
        s = jobs.stats()
        assert (s.accepted, s.completed, s.failed, s.timed_out, s.handed_back) == (27, 26, 0, 0, 1), s
        assert (s.queued, s.running) == (0, 0) and 2 <= s.workers <= 4, s
        assert_accounted(jobs)
    assert result.status == 0, app.errors
    assert jobs.stats().status == DispatcherStatus.STOPPED
    assert_crashed_once(trace, "jobs")


async def test_dispatcher_on_redis_restarted_after_a_crash_runs_new_tasks(redis_url: str) -> None:
    """Redis backend (a real server): the restarted dispatcher connects afresh and consumes new tasks."""
    trace = Trace()
    app = test_app("t")
    jobs = app.register(
        with_double(
            CrashingDispatcher(
                min_workers=2, max_workers=4, backend="redis", redis_url=redis_url, trace=trace, label="jobs"
            )
        ),
        name="jobs",
        **TRANSIENT,
    )
    async with served(app) as result:
        assert await doubles(jobs, range(5)) == [0, 2, 4, 6, 8]
        jobs.crash()
        assert_restarted_once(await restarted(app, "jobs"), "jobs crashed")
        assert app.health.get("jobs").healthy and app.health.get("jobs.redis").healthy
        assert jobs.stats().workers == 2  # min_workers: none of the first run's workers is left

        assert await doubles(jobs, range(5, 10)) == [10, 12, 14, 16, 18]
        await jobs.join()
        s = jobs.stats()
        assert (s.completed, s.failed, s.handed_back, s.queued, s.running) == (10, 0, 0, 0, 0), s
        assert s.dead_lettered == 0, s
        assert_accounted(jobs)
    assert result.status == 0, app.errors
    assert_crashed_once(trace, "jobs")


class WarmDispatcher(CrashingDispatcher):
    """A Dispatcher that queues a warm-up task in each ``init``, before its run (the task waits for the run)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.accepted: list[bool] = []  # what dispatch answered, per incarnation
        self.warmed: list[int] = []  # the incarnations whose warm-up task ran

    async def init(self) -> None:
        await super().init()
        incarnation = self.inits

        async def warm() -> None:
            self.warmed.append(incarnation)

        self.accepted.append(self.dispatch(warm))


async def test_dispatcher_restarted_takes_tasks_from_its_init_on_as_at_boot() -> None:
    """As at boot, a task dispatched once ``init`` is done and before the run is taken, and runs once the run starts.

    The crash closed the dispatcher (an unwind's run that ended: nothing would run what comes
    next); the ``init`` of the restart opens it again, since a run follows.
    """
    trace = Trace()
    app = test_app("t")
    jobs = app.register(WarmDispatcher(trace=trace, label="jobs"), name="jobs", **TRANSIENT)
    async with served(app) as result:
        await wait_until(lambda: jobs.warmed == [1], LIMIT)
        jobs.crash()
        assert_restarted_once(await restarted(app, "jobs"), "jobs crashed")
        assert jobs.accepted == [True, True]
        await wait_until(lambda: jobs.warmed == [1, 2], LIMIT)
        s = jobs.stats()
        assert (s.accepted, s.rejected, s.completed, s.handed_back) == (2, 0, 2, 0), s
    assert result.status == 0, app.errors
    assert_crashed_once(trace, "jobs")


# -- Pipeline ------------------------------------------------------------------------------------------


class Flow:
    """An endless pipeline (numbers -> square -> store) whose leaf fails once, on demand.

    ``sent`` and ``stored`` count per incarnation what the root emitted and what the leaf
    stored; ``poison()`` makes the leaf raise on its next message (once).
    """

    def __init__(self, trace: Trace, engine: str) -> None:
        self.sent: dict[int, int] = {}
        self.stored: dict[int, list[int]] = {}
        self._poisoned = False
        self.pipeline = CountedPipeline(
            [
                Stage(
                    "numbers",
                    self.numbers,
                    children=[Stage("square", self.square, children=[Stage("store", self.store)])],
                )
            ],
            engine=engine,
            trace=trace,
            label="pipeline",
        )

    def poison(self) -> None:
        self._poisoned = True

    async def numbers(self, emit: Any) -> None:
        incarnation = self.pipeline.inits
        self.sent[incarnation] = 0
        i = 0
        while True:
            await emit(i)
            self.sent[incarnation] += 1
            i += 1
            await anyio.sleep(0.002)

    async def square(self, msg: int, emit: Any) -> None:
        await emit(msg * msg)

    async def store(self, msg: int) -> None:
        if self._poisoned:
            self._poisoned = False
            raise Boom(f"cannot store {msg}")
        self.stored.setdefault(self.pipeline.inits, []).append(msg)


@pytest.mark.parametrize("engine", ["serial", "parallel"])
async def test_pipeline_restarted_after_a_stage_error_runs_again(engine: str) -> None:
    """A stage's error fails the pipeline; restarted, it runs from its roots again with fresh counters."""
    trace = Trace()
    flow = Flow(trace, engine)
    app = test_app("t")
    pipeline = app.register(flow.pipeline, name="pipeline", **TRANSIENT)
    async with served(app) as result:
        await wait_until(lambda: len(flow.stored.get(1, ())) >= 5, LIMIT)
        flow.poison()
        found = await restarted(app, "pipeline")
        assert_restarted_once(found, "stage 'store' failed")
        await wait_until(lambda: len(flow.stored.get(2, ())) >= 5, LIMIT)
        assert flow.stored[2][:5] == [i * i for i in range(5)]  # from the root's first message again

        stored, sent, stats = len(flow.stored[2]), flow.sent[2], pipeline.stats()  # one snapshot: no await
        assert pipeline.running and app.health.get("pipeline").healthy
        assert all(s.errors == 0 and s.dropped == 0 for s in stats.values()), stats
        assert sent <= stats["numbers"].messages_out <= sent + 1, stats  # this run's only
        assert stored <= stats["store"].messages_in <= stats["square"].messages_out, stats
        assert pipeline.dropped == 0
    assert result.status == 0, app.errors
    assert incarnations(trace, "pipeline") == 2, trace


@pytest.mark.parametrize("engine", ["serial", "parallel"])
async def test_pipeline_batch_with_restart_always_runs_again_after_each_finish(engine: str) -> None:
    """restart="always": a finite pipeline that finished is run again from its roots, each run counted afresh.

    The third run's root waits after its batch (until the app stops), so that the app can be
    looked at and shut down before the restart intensity runs out.
    """
    trace = Trace()
    runs: list[list[int]] = []  # what the leaf stored, per run

    async def numbers(emit: Any) -> None:
        runs.append([])
        for i in range(5):
            await emit(i)
        if len(runs) == 3:
            await anyio.sleep_forever()

    async def store(msg: int) -> None:
        runs[-1].append(msg)

    app = test_app("t")
    pipeline = app.register(
        CountedPipeline(
            [Stage("numbers", numbers, children=[Stage("store", store)])], engine=engine, trace=trace, label="batch"
        ),
        name="batch",
        **{**TRANSIENT, "restart": "always"},
    )
    async with served(app) as result:
        found = await restarted(app, "batch", restarts=2)
        assert (found["restarts"], found["last_error"]) == (2, None)  # clean returns: nothing went wrong
        await wait_until(lambda: len(runs) == 3 and len(runs[2]) == 5, LIMIT)
        assert runs == [list(range(5))] * 3
        stats = pipeline.stats()
        assert (stats["numbers"].messages_out, stats["store"].messages_in) == (5, 5), stats  # this run's
        assert all(s.errors == 0 and s.dropped == 0 for s in stats.values()), stats
    assert result.status == 0, app.errors
    assert incarnations(trace, "batch") == 3, trace


async def test_worker_based_pipeline_restarted_after_a_stage_error_delivers_the_message_again(redis_url: str) -> None:
    """Worker-based engine (a real Redis): what the failed run held goes back to the edges; restarted, the
    pipeline delivers it again, the message the stage failed on included (at least once); nothing is lost or
    dead-lettered.

    The root emits its 20 messages in its first run only (a source it has drained), so
    whatever the second run stores came back from Redis.
    """
    trace = Trace()
    stored: dict[str, int] = {}  # by message id: storing twice changes nothing
    failed: list[str] = []

    async def numbers(emit: Any) -> None:
        if pipeline.inits == 1:
            for i in range(20):
                await emit(i)
        await anyio.sleep_forever()  # the source stays open

    async def store(msg: Message[int]) -> None:
        if msg.body == 7 and not failed:
            failed.append(msg.id)
            raise Boom(f"cannot store {msg.id}")
        stored[msg.id] = msg.body

    app = test_app("t")
    pipeline = app.register(
        CountedPipeline(
            [Stage("numbers", numbers, children=[Stage("store", store, with_id=True)])],
            engine="worker-based",
            redis_url=redis_url,
            trace=trace,
            label="pipeline",
        ),
        name="pipeline",
        **TRANSIENT,
    )
    async with served(app) as result:
        assert_restarted_once(await restarted(app, "pipeline"), "stage 'store' failed")
        await wait_until(lambda: len(stored) == 20, LIMIT)
        assert stored == {f"numbers:{i}": i for i in range(20)} and failed == ["numbers:7"]
        assert app.health.get("pipeline").healthy and app.health.get("pipeline.redis").healthy
        stats = pipeline.stats()
        assert (stats["store"].errors, stats["store"].dead_lettered) == (0, 0), stats
    assert result.status == 0, app.errors
    assert incarnations(trace, "pipeline") == 2, trace


# -- Worker --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "plain"])
async def test_worker_restarted_after_a_tick_error_ticks_again(kind: str) -> None:
    """A tick's error ends run (no ``tolerate_errors``); restarted, the worker ticks again and is healthy.

    An ``async def`` tick and a plain one (run on a thread) alike.
    """
    trace = Trace()
    ticks: dict[int, int] = {}
    fail = False

    def count() -> None:
        nonlocal fail
        if fail:
            fail = False
            raise Boom("tick failed")
        ticks[worker.inits] = ticks.get(worker.inits, 0) + 1

    async def tick() -> None:
        count()

    app = test_app("t")
    worker = app.register(
        CountedWorker(count if kind == "plain" else tick, interval=0.002, trace=trace, label="ticker"),
        name="ticker",
        **TRANSIENT,
    )
    async with served(app) as result:
        await wait_until(lambda: ticks.get(1, 0) >= 3, LIMIT)
        fail = True
        assert_restarted_once(await restarted(app, "ticker"), "tick failed")
        await wait_until(lambda: ticks.get(2, 0) >= 3, LIMIT)
        assert app.health.get("ticker").healthy
        s, done = worker.stats(), ticks[1] + ticks[2]
        in_flight = 1 if kind == "plain" else 0  # a plain tick counts itself on its thread, the worker after it
        assert done - in_flight <= s.ticks <= done and s.errors == 0, (s, ticks)  # every tick once; none tolerated
    assert result.status == 0, app.errors
    assert not app.health.get("ticker").healthy  # stopped
    assert incarnations(trace, "ticker") == 2, trace


# -- HTTPServer ----------------------------------------------------------------------------------------


class Site:
    """An ASGI app answering ``hello <path>``, whose lifespan counts its startups and shutdowns.

    Its first ``failing`` startups raise, as when a database it needs is not reachable yet.
    """

    def __init__(self, failing: int = 0) -> None:
        self.failing = failing
        self.startups = 0
        self.shutdowns = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.startups += 1
                    if self.startups <= self.failing:
                        raise Boom("the database is not reachable yet")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.shutdowns += 1
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = f"hello {scope['path']}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def get(server: HTTPServer, path: str) -> httpx.Response:
    """A real request to where ``server`` listens now."""
    address = server.address
    assert address is not None, "the server is not bound"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{address[1]}", timeout=5.0) as client:
        return await client.get(path)


async def answers(server: HTTPServer, path: str) -> None:
    """``server`` answers ``path`` with 200 and counts the request as served."""
    before = server.stats().served
    response = await get(server, path)
    assert (response.status_code, response.text) == (200, f"hello {path}")
    await wait_until(lambda: server.stats().served == before + 1, LIMIT)


@pytest.mark.parametrize("port", ["fixed", "any"])
async def test_http_server_restarted_after_a_crash_binds_and_answers_again(
    port: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crashed server released its socket; restarted, it binds again (the same fixed port) and answers.

    With ``HTTP_PORT=0`` it binds a free port again, and the first incarnation's port is closed.
    ``stats()`` are the current run's.
    """
    if port == "fixed":
        monkeypatch.setenv("HTTP_PORT", str(free_port()))
    trace = Trace()
    site = Site()
    app = test_app("t")
    server = app.register(CrashingHTTPServer(site, trace=trace, label="web"), name="web", **TRANSIENT)
    async with served(app) as result:
        first = server.address
        assert first is not None
        await answers(server, "/one")
        server.crash()
        assert_restarted_once(await restarted(app, "web"), "web crashed")
        second = server.address
        assert second is not None
        if port == "fixed":
            assert second == first
        elif second != first:
            assert refuses(first[1]), "the first incarnation's port is still open"
        assert site.startups == 2  # the lifespan started again before the server counted as up
        assert server.stats().served == 0  # a new run: its own counts
        await answers(server, "/two")
        await answers(server, "/three")
        assert server.stats() == (0, 2, 0)
        assert app.health.get("web").healthy
    assert result.status == 0, app.errors
    assert refuses(second[1])  # stopped: the port is released
    assert_crashed_once(trace, "web")


@pytest.mark.parametrize("port", ["fixed", "any"])
async def test_http_server_whose_lifespan_startup_failed_binds_its_port_again(
    port: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ASGI app's lifespan startup fails (its database is not up yet): run fails during boot.

    Restarted, the server binds its port again (the failed run released it), the startup
    succeeds, boot completes and the server answers.
    """
    if port == "fixed":
        monkeypatch.setenv("HTTP_PORT", str(free_port()))
    trace = Trace()
    site = Site(failing=1)
    app = test_app("t")
    server = app.register(CountedHTTPServer(site, trace=trace, label="web"), name="web", **TRANSIENT)
    async with served(app) as result:
        assert_restarted_once(await restarted(app, "web"), "the database is not reachable yet")
        assert site.startups == 2
        await answers(server, "/up")
        assert server.stats() == (0, 1, 0)
    assert result.status == 0, app.errors
    assert incarnations(trace, "web") == 2, trace


# -- Machine -------------------------------------------------------------------------------------------


async def test_machine_sub_machine_of_a_restarted_process_runs_routines_again() -> None:
    """The failed run's routines are cancelled; the restarted run gets a working sub-machine and its routines tick."""
    trace = Trace()
    app = test_app("t")
    ticking = app.register(Ticking(trace, fail_first=True), name="ticking", **TRANSIENT)
    async with served(app) as result:
        await wait_until(lambda: ticking.ticks[1] >= 3, LIMIT)
        ticking.crash()
        assert_restarted_once(await restarted(app, "ticking"), "ticking crashed")
        await wait_until(lambda: len(ticking.routines) == 2 and ticking.ticks[2] >= 3, LIMIT)

        old, new = ticking.routines
        assert old.state == "cancelled" and old.done
        assert new.state == "running" and new.machine is ticking.machine
        ticks = ticking.ticks[1]
        await anyio.sleep(0.02)
        assert ticking.ticks[1] == ticks  # the first incarnation's routine no longer ticks
        stats = ticking.machine.stats()
        assert (stats.active, stats.total, stats.errors) == (1, 1, 0), stats  # this incarnation's only
        assert [r.id for r in stats.routines] == ["ticker"]
        root: Machine = app.services.get("machine")
        assert [(name, sub.active) for name, sub in root.stats().subs.items()] == [("ticking", 1)]
        for n in range(3):  # buffer=1: a subscription left from the first run would block the second publish
            with anyio.fail_after(LIMIT):
                assert await root.publish("orders.created", f"order {n}") == 1
        await wait_until(lambda: len(ticking.orders) == 3, LIMIT)
        assert ticking.orders == [(2, "order 0"), (2, "order 1"), (2, "order 2")]
    assert result.status == 0, app.errors
    assert ticking.routines[1].state == "cancelled"
    assert incarnations(trace, "ticking") == 2, trace


# -- all of them, with a sibling (one_for_all) ---------------------------------------------------------


async def test_one_for_all_stops_and_boots_every_built_in_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sibling's failure restarts every built-in: the running ones are stopped and finalized, then booted.

    Each works as at boot afterwards; the HTTPServer is back on its fixed port.
    """
    monkeypatch.setenv("HTTP_PORT", str(free_port()))
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all")
    ticking = app.register(Ticking(trace), name="ticking", **TRANSIENT)
    jobs = app.register(
        CountedDispatcher(min_workers=2, trace=trace, label="jobs"), name="jobs", priority=1, **TRANSIENT
    )
    ticks: dict[int, int] = {}

    async def tick() -> None:
        ticks[worker.inits] = ticks.get(worker.inits, 0) + 1

    worker = app.register(
        CountedWorker(tick, interval=0.002, trace=trace, label="ticker"), name="ticker", priority=2, **TRANSIENT
    )
    flow = Flow(trace, "parallel")
    pipeline = app.register(flow.pipeline, name="pipeline", priority=2, **TRANSIENT)
    site = Site()
    server = app.register(CountedHTTPServer(site, trace=trace, label="web"), name="web", priority=3, **TRANSIENT)
    trigger = app.register(Once(), name="trigger", priority=4, **TRANSIENT)

    async with served(app) as result:
        port = server.address
        await answers(server, "/before")
        assert await dispatched(jobs, 5) == list(range(5))
        await wait_until(lambda: ticks.get(1, 0) >= 2 and len(flow.stored.get(1, ())) >= 2, LIMIT)
        trigger.crash()
        await restarted(app, "trigger")
        for name in ("ticking", "jobs", "ticker", "pipeline", "web"):
            found = await record(app, name)
            assert (found["restarts"], found["state"]) == (1, "running"), found

        assert server.address == port
        assert (site.startups, site.shutdowns) == (2, 1)  # stopped gracefully, then started again
        await answers(server, "/after")
        assert server.stats() == (0, 1, 0)
        assert jobs.stats().workers == 2  # min_workers: the stopped run's workers are gone
        assert await dispatched(jobs, 5) == list(range(5))
        s = jobs.stats()
        assert (s.accepted, s.completed, s.handed_back, s.queued, s.running) == (10, 10, 0, 0, 0), s
        await wait_until(lambda: ticks.get(2, 0) >= 2 and len(flow.stored.get(2, ())) >= 2, LIMIT)
        assert flow.stored[2][:2] == [0, 1]
        assert pipeline.stats()["numbers"].messages_out <= flow.sent[2] + 1  # this run's only
        assert worker.stats().ticks == ticks[1] + ticks[2]
        await wait_until(lambda: ticking.ticks[2] >= 2, LIMIT)
        assert [r.state for r in ticking.routines] == ["cancelled", "running"]
    assert result.status == 0, app.errors
    assert (site.startups, site.shutdowns) == (2, 2)
    for label in ("ticking", "jobs", "ticker", "pipeline", "web"):
        assert incarnations(trace, label) == 2, trace
