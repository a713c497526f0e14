"""Pipeline behaviour, standalone: run, stats, errors, stop and drain, backpressure, workers, checks, engine setting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from _support import Boom, counting_root, wait_until

from nacelle_py import RegistrationError
from nacelle_py.base import Pipeline, PipelineError, Stage, StageStats

pytestmark = pytest.mark.anyio

from test_pipeline_engines import ENGINES, _worker_based_redis, make_pipeline  # noqa: F401 (a fixture)

CONCURRENT_ENGINES = [e for e in ENGINES if e != "serial"]
"""Engines that can run a stage's workers at once (serial is one task, depth-first)."""

LIMIT = 10.0


async def run(p: Pipeline, limit: float = LIMIT) -> None:
    with anyio.fail_after(limit):
        await p.run()


def endless_root(plain: bool, abort: threading.Event, emitted: list[int] | None = None) -> Callable[..., Any]:
    """Emits 0, 1, 2, ... until stopped (a plain one also ends when the test is over)."""
    if plain:

        def plain_root(emit: Any) -> None:
            i = 0
            while not abort.is_set():
                emit(i)
                if emitted is not None:
                    emitted.append(i)
                i += 1

        return plain_root

    async def async_root(emit: Any) -> None:
        i = 0
        while True:
            await emit(i)
            if emitted is not None:
                emitted.append(i)
            i += 1

    return async_root


# -- run and stats ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_standalone_run_returns_none_after_delivering_everything(engine: str) -> None:
    got: list[int] = []

    async def leaf(msg: int) -> None:
        got.append(msg)

    p = make_pipeline([Stage("numbers", counting_root(50), [Stage("sink", leaf)])], engine)
    assert p.engine == engine
    with anyio.fail_after(LIMIT):
        result = await p.run()  # type: ignore[func-returns-value]
    assert result is None
    assert got == list(range(50))
    assert p.engine == engine
    assert p.dropped == 0


async def test_default_engine_is_parallel() -> None:
    async def leaf(msg: int) -> None:
        pass

    p = Pipeline([Stage("numbers", counting_root(3), [Stage("sink", leaf)])])
    await run(p)
    assert p.engine == "parallel"


@pytest.mark.parametrize("engine", ENGINES)
async def test_stats_after_a_completed_run_are_consistent(engine: str) -> None:
    async def evens_twice(msg: int, emit: Any) -> None:
        if msg % 2 == 0:
            await emit(msg)
            await emit(msg)

    def plain_leaf(msg: int) -> None:
        time.sleep(0.0005)

    async def leaf(msg: int) -> None:
        await anyio.sleep(0)

    roots = [
        Stage(
            "numbers",
            counting_root(20),
            [
                Stage("evens", evens_twice, [Stage("sink", leaf), Stage("batched", lambda msgs: None, batch=3)]),
                Stage("slow", plain_leaf),
            ],
        ),
        Stage("orphan", counting_root(7)),  # no children: counted and discarded
    ]
    p = make_pipeline(roots, engine)
    await run(p)
    stats = p.stats()
    assert set(stats) == {"numbers", "evens", "sink", "batched", "slow", "orphan"}
    for name, s in stats.items():
        assert isinstance(s, StageStats) and s.name == name
        assert s.queue_depth == 0 and s.errors == 0 and s.dropped == 0, s
        assert isinstance(s.busy, float) and s.busy >= 0, s
    assert StageStats._fields == (
        "name",
        "messages_in",
        "messages_out",
        "errors",
        "queue_depth",
        "busy",
        "dropped",
        "lag",
        "pending",
        "reclaimed",
        "dead_lettered",
    )
    assert stats["numbers"].messages_out == 20
    assert stats["orphan"].messages_out == 7
    assert stats["evens"].messages_in == stats["slow"].messages_in == 20
    assert stats["evens"].messages_out == 20  # 10 evens, each twice
    assert stats["sink"].messages_in == stats["batched"].messages_in == 20
    assert stats["sink"].messages_out == stats["slow"].messages_out == stats["batched"].messages_out == 0
    assert stats["slow"].busy > 0  # 20 x 0.5 ms of sleeping counts as busy


@pytest.mark.parametrize("engine", ENGINES)
async def test_stats_before_a_run_are_zero(engine: str) -> None:
    p = make_pipeline([Stage("numbers", counting_root(3), [Stage("sink", lambda m: None)])], engine)
    stats = p.stats()
    assert set(stats) == {"numbers", "sink"}
    assert all(
        (s.messages_in, s.messages_out, s.errors, s.queue_depth, s.dropped) == (0, 0, 0, 0, 0) for s in stats.values()
    )


# -- errors -------------------------------------------------------------------------------------

FAIL_AT = 13


def failing_pipeline(
    where: str, kind: str, engine: str, abort: threading.Event, raised: list[BaseException], batches: list[list[int]]
) -> tuple[Pipeline, str]:
    """A pipeline with an endless root (unless the root is what fails) and one stage that raises.

    ``where``: root, inner or leaf; ``kind``: async, plain or batch. Messages are 0, 1, 2, ...
    on every edge, so a message's value is its index on its stage's input.
    """

    def fail(msg: Any) -> None:
        exc = Boom(f"bad message {msg!r}")
        raised.append(exc)
        raise exc

    def should_fail(arg: Any) -> bool:
        if kind == "batch":
            batches.append(list(arg))
            return FAIL_AT in arg
        return bool(arg == FAIL_AT)

    async def a_pass(msg: Any, emit: Any) -> None:
        if kind == "batch":
            await emit.many(msg)
        else:
            await emit(msg)

    async def a_leaf(msg: Any) -> None:
        await anyio.sleep(0)

    name = {"root": "producer", "inner": "transformer", "leaf": "consumer"}[where]
    if where == "root":

        async def a_root(emit: Any) -> None:
            for i in range(5):
                await emit(i)
            fail("root")

        def p_root(emit: Any) -> None:
            for i in range(5):
                emit(i)
            fail("root")

        root = p_root if kind == "plain" else a_root
        return make_pipeline([Stage(name, root, [Stage("sink", a_leaf)])], engine), name

    batch: bool | int = 3 if kind == "batch" else False
    if kind == "plain":

        def p_inner(msg: Any, emit: Any) -> None:
            if should_fail(msg):
                fail(msg)
            emit(msg)

        def p_leaf(msg: Any) -> None:
            if should_fail(msg):
                fail(msg)

        inner_fn: Callable[..., Any] = p_inner
        leaf_fn: Callable[..., Any] = p_leaf
    else:

        async def f_inner(msg: Any, emit: Any) -> None:
            if should_fail(msg):
                fail(msg)
            await a_pass(msg, emit)

        async def f_leaf(msg: Any) -> None:
            if should_fail(msg):
                fail(msg)

        inner_fn, leaf_fn = f_inner, f_leaf
    root_fn = endless_root(kind == "plain", abort)
    if where == "inner":
        tree = Stage("producer", root_fn, [Stage(name, inner_fn, [Stage("sink", a_leaf)], batch=batch)])
    else:
        tree = Stage(
            "producer",
            root_fn,
            [Stage("middle", a_pass if kind != "batch" else _one_by_one, [Stage(name, leaf_fn, batch=batch)])],
        )
    return make_pipeline([tree], engine), name


async def _one_by_one(msg: Any, emit: Any) -> None:
    await emit(msg)


ERROR_CASES = [
    (w, k) for w in ("root", "inner", "leaf") for k in ("async", "plain", "batch") if (w, k) != ("root", "batch")
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("where", "kind"), ERROR_CASES, ids=[f"{w}-{k}" for w, k in ERROR_CASES])
async def test_a_stage_error_stops_the_pipeline_and_names_stage_and_index(
    where: str, kind: str, engine: str, abort: threading.Event
) -> None:
    raised: list[BaseException] = []
    batches: list[list[int]] = []
    p, name = failing_pipeline(where, kind, engine, abort, raised, batches)
    with pytest.raises(PipelineError) as info:
        await run(p)  # an endless root: the error must stop it
    err = info.value
    assert len(raised) == 1
    assert err.stage == name
    assert err.error is raised[0] and isinstance(err.error, Boom)
    assert err.__cause__ is err.error
    assert name in str(err)
    if where == "root":
        assert err.index is None
    elif kind == "batch":
        (failed,) = [b for b in batches if FAIL_AT in b]
        assert err.index in failed, (err.index, failed)  # a message of the batch that raised
        assert str(err.index) in str(err)
    else:
        assert err.index == FAIL_AT
        assert str(FAIL_AT) in str(err)
    assert p.stats()[name].errors == 1


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("plain", [False, True], ids=["async", "plain"])
async def test_an_error_in_a_workers_stage_names_its_index(engine: str, plain: bool, abort: threading.Event) -> None:
    async def a_work(msg: int, emit: Any) -> None:
        await anyio.sleep(0)
        if msg == 9:
            raise Boom("nine")
        await emit(msg)

    def p_work(msg: int, emit: Any) -> None:
        if msg == 9:
            raise Boom("nine")
        emit(msg)

    async def leaf(msg: int) -> None:
        pass

    pool = Stage("pool", p_work if plain else a_work, [Stage("sink", leaf)], workers=4)
    p = make_pipeline([Stage("producer", endless_root(False, abort), [pool])], engine)
    with pytest.raises(PipelineError) as info:
        await run(p)
    assert (info.value.stage, info.value.index, str(info.value.error)) == ("pool", 9, "nine")
    assert p.stats()["pool"].errors == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_an_error_in_one_branch_stops_the_other_branches(engine: str, abort: threading.Event) -> None:
    other: list[int] = []

    async def healthy(msg: int) -> None:
        other.append(msg)
        await anyio.sleep(0)

    async def broken(msg: int) -> None:
        if msg == 3:
            raise Boom("three")

    roots = [
        Stage("producer", endless_root(False, abort), [Stage("ok", healthy), Stage("broken", broken)]),
        Stage("second", endless_root(True, abort), [Stage("ok2", lambda m: None)]),
    ]
    p = make_pipeline(roots, engine)
    with pytest.raises(PipelineError) as info:
        await run(p)
    assert (info.value.stage, info.value.index) == ("broken", 3)


# -- stop and drain -----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("plain", [False, True], ids=["async_root", "plain_root"])
async def test_stop_ends_an_endless_root_and_drains(engine: str, plain: bool, abort: threading.Event) -> None:
    received: list[int] = []
    emitted: list[int] = []
    enough = anyio.Event()

    async def double(msg: int, emit: Any) -> None:
        await emit(msg * 2)

    async def leaf(msg: int) -> None:
        received.append(msg)
        if len(received) == 20:
            enough.set()
        await anyio.sleep(0)

    p = make_pipeline(
        [
            Stage(
                "source",
                endless_root(plain, abort, emitted),
                [Stage("double", double, [Stage("sink", leaf)], buffer=4)],
            )
        ],
        engine,
    )
    outcome: list[str] = []

    async def runner() -> None:
        await p.run()
        outcome.append("returned")

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner)
            await enough.wait()
            await p.stop()
    assert outcome == ["returned"]
    assert p.dropped == 0
    # Drained: every message the root emitted reached the leaf, in order, nothing twice.
    assert len(received) >= 20
    assert received == [2 * i for i in range(len(received))]
    assert len(received) >= len(emitted)
    stats = p.stats()
    assert stats["source"].messages_out == stats["double"].messages_in == stats["sink"].messages_in == len(received)
    assert all(s.queue_depth == 0 and s.dropped == 0 for s in stats.values()), stats


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("plain", [False, True], ids=["async_root", "plain_root"])
async def test_stop_drains_what_the_root_already_emitted(engine: str, plain: bool) -> None:
    # The root emits ten messages into a slow leaf (buffer 1) and returns; stop() comes while they
    # are still on their way. Whatever emit() accepted must still arrive: the drain fits easily.
    received: list[int] = []
    emitted: list[int] = []
    first = anyio.Event()
    all_out = threading.Event()

    def p_root(emit: Any) -> None:
        try:
            for i in range(10):
                emit(i)
                emitted.append(i)
        finally:
            all_out.set()

    async def a_root(emit: Any) -> None:
        try:
            for i in range(10):
                await emit(i)
                emitted.append(i)
        finally:
            all_out.set()

    async def slow(msg: int) -> None:
        received.append(msg)
        first.set()
        await anyio.sleep(0.005)

    p = make_pipeline([Stage("source", p_root if plain else a_root, [Stage("slow", slow, buffer=1)])], engine)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(p.run)
            await first.wait()
            if plain:
                await wait_until(all_out.is_set)  # every emit() returned: ten messages in flight
            await p.stop()
    assert p.dropped == 0
    assert received == list(range(len(received)))
    assert len(received) >= len(emitted), (received, emitted)
    if plain:
        assert emitted == received == list(range(10))


@pytest.mark.parametrize("engine", ENGINES)
async def test_stop_before_run_and_after_run_is_a_no_op(engine: str) -> None:
    got: list[int] = []

    async def leaf(msg: int) -> None:
        got.append(msg)

    p = make_pipeline([Stage("numbers", counting_root(10), [Stage("sink", leaf)])], engine)
    with anyio.fail_after(LIMIT):
        await p.stop()
        await p.run()
        assert got == list(range(10))  # the earlier stop() did not cut this run short
        await p.stop()
    assert p.dropped == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_stop_cuts_off_a_stuck_leaf_after_the_shutdown_timeout(engine: str) -> None:
    started = anyio.Event()
    timeout = 0.3

    async def stuck(msg: int) -> None:
        started.set()
        await anyio.sleep_forever()

    async def root(emit: Any) -> None:
        i = 0
        while True:
            await emit(i)
            i += 1

    p = make_pipeline([Stage("source", root, [Stage("stuck", stuck, buffer=8)])], engine, shutdown_timeout=timeout)
    outcome: list[str] = []

    async def runner() -> None:
        await p.run()
        outcome.append("returned")

    with anyio.fail_after(timeout + 5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner)
            await started.wait()
            stopping = anyio.current_time()
            await p.stop()
        elapsed = anyio.current_time() - stopping
    assert outcome == ["returned"]
    assert elapsed >= timeout * 0.5  # it did give the drain a chance
    assert p.dropped > 0
    stats = p.stats()
    # The leaf finished none of them: every message the root emitted was cut off, each counted once.
    assert p.dropped == stats["source"].messages_out, (p.dropped, stats)
    assert sum(s.dropped for s in stats.values()) == p.dropped, stats


# -- backpressure -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("plain", [False, True], ids=["async_root", "plain_root"])
@pytest.mark.parametrize("depth", [1, 2])
async def test_a_slow_leaf_holds_the_root_back(engine: str, plain: bool, depth: int) -> None:
    n = 60
    buffer = 2
    lock = threading.Lock()
    counts = {"emitted": 0, "consumed": 0, "ahead": 0}

    def emitted() -> None:
        with lock:
            counts["emitted"] += 1
            counts["ahead"] = max(counts["ahead"], counts["emitted"] - counts["consumed"])

    async def a_root(emit: Any) -> None:
        for i in range(n):
            await emit(i)
            emitted()

    def p_root(emit: Any) -> None:
        for i in range(n):
            emit(i)
            emitted()

    async def slow(msg: int) -> None:
        with lock:
            counts["consumed"] += 1
        await anyio.sleep(0.001)

    async def middle(msg: int, emit: Any) -> None:
        await emit(msg)

    leaf = Stage("slow", slow, buffer=buffer)
    child = leaf if depth == 1 else Stage("middle", middle, [leaf], buffer=buffer)
    p = make_pipeline([Stage("source", p_root if plain else a_root, [child])], engine)
    await run(p)
    assert counts["emitted"] == counts["consumed"] == n
    # Waiting on each edge (buffer) plus one being handled by each stage, plus slack for a hand-over.
    bound = depth * (buffer + 1) + 2
    assert counts["ahead"] <= bound, counts


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("buffer", [1, 2, 8])
async def test_the_buffer_bounds_the_messages_waiting_on_an_edge(engine: str, buffer: int) -> None:
    release = anyio.Event()
    started = anyio.Event()
    emitted: list[int] = []

    async def root(emit: Any) -> None:
        for i in range(50):
            await emit(i)
            emitted.append(i)

    async def held(msg: int) -> None:
        started.set()
        await release.wait()

    p = make_pipeline([Stage("source", root, [Stage("held", held, buffer=buffer)])], engine)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(p.run)
            await started.wait()
            if engine in CONCURRENT_ENGINES:
                await wait_until(lambda: p.stats()["held"].queue_depth >= buffer)  # the edge fills up
            deepest = 0
            for _ in range(200):  # give the root every chance to overrun the bound
                await anyio.sleep(0)
                deepest = max(deepest, p.stats()["held"].queue_depth)
            await anyio.sleep(0.02)
            deepest = max(deepest, p.stats()["held"].queue_depth)
            ahead = len(emitted)
            release.set()
    assert deepest <= buffer, (deepest, buffer)
    assert ahead <= buffer + 1, (ahead, buffer)  # waiting, plus the one the leaf holds
    assert emitted == list(range(50))


# -- workers and order --------------------------------------------------------------------------


@pytest.mark.parametrize("engine", CONCURRENT_ENGINES)
@pytest.mark.parametrize("role", ["inner", "leaf"])
async def test_workers_4_runs_four_messages_at_once(engine: str, role: str) -> None:
    active = 0
    peak = 0
    full = anyio.Event()

    async def enter() -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 4:
            full.set()
        await full.wait()  # the first four wait for each other: only reachable with 4 at once
        await anyio.sleep(0)
        active -= 1

    async def inner(msg: int, emit: Any) -> None:
        await enter()
        await emit(msg)

    async def leaf(msg: int) -> None:
        await enter()

    pool = (
        Stage("pool", inner, [Stage("sink", lambda m: None)], workers=4)
        if role == "inner"
        else Stage("pool", leaf, workers=4)
    )
    p = make_pipeline([Stage("source", counting_root(20), [pool])], engine)
    await run(p)
    assert peak == 4
    assert p.stats()["pool"].messages_in == 20


@pytest.mark.parametrize("engine", CONCURRENT_ENGINES)
async def test_plain_workers_4_run_in_four_threads_at_once(engine: str) -> None:
    lock = threading.Lock()
    barrier = threading.Barrier(4, timeout=5)
    state = {"active": 0, "peak": 0, "calls": 0}
    threads: set[int] = set()

    def work(msg: int) -> None:
        with lock:
            state["calls"] += 1
            first_four = state["calls"] <= 4
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
            threads.add(threading.get_ident())
        if first_four:
            barrier.wait()  # BrokenBarrierError unless four calls run at once
        with lock:
            state["active"] -= 1

    p = make_pipeline([Stage("source", counting_root(12), [Stage("pool", work, workers=4)])], engine)
    await run(p)
    assert state["peak"] == 4 and state["calls"] == 12
    assert len(threads) >= 4


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("plain", [False, True], ids=["async", "plain"])
async def test_ordered_workers_keep_the_input_order(engine: str, plain: bool) -> None:
    n = 40
    got: list[int] = []

    def delay(msg: int) -> float:
        return (3 - msg % 4) * 0.002  # in each group of four, later messages finish first

    async def a_work(msg: int, emit: Any) -> None:
        await anyio.sleep(delay(msg))
        await emit(msg)

    def p_work(msg: int, emit: Any) -> None:
        time.sleep(delay(msg))
        emit(msg)

    async def leaf(msg: int) -> None:
        got.append(msg)

    pool = Stage("pool", p_work if plain else a_work, [Stage("sink", leaf)], workers=4, ordered=True)
    p = make_pipeline([Stage("source", counting_root(n), [pool])], engine)
    await run(p)
    assert got == list(range(n))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("plain", [False, True], ids=["async", "plain"])
async def test_unordered_workers_deliver_every_message_exactly_once(engine: str, plain: bool) -> None:
    n = 40
    got: list[int] = []

    def delay(msg: int) -> float:
        return (3 - msg % 4) * 0.002

    async def a_work(msg: int, emit: Any) -> None:
        await anyio.sleep(delay(msg))
        await emit(msg)

    def p_work(msg: int, emit: Any) -> None:
        time.sleep(delay(msg))
        emit(msg)

    async def leaf(msg: int) -> None:
        got.append(msg)

    pool = Stage("pool", p_work if plain else a_work, [Stage("sink", leaf)], workers=4, ordered=False)
    p = make_pipeline([Stage("source", counting_root(n), [pool])], engine)
    await run(p)
    assert sorted(got) == list(range(n))
    assert len(got) == n


# -- construction errors ------------------------------------------------------------------------


async def _root(emit: Any) -> None:
    pass


async def _inner(msg: Any, emit: Any) -> None:
    pass


async def _leaf(msg: Any) -> None:
    pass


def _build_bad(case: str) -> None:
    """Build the pipeline of a construction-error case (raises, as the test expects)."""
    if case == "duplicate name":
        Pipeline([Stage("rootA", _root, [Stage("twin", _leaf), Stage("twin", _leaf)])])
    elif case == "duplicate name across roots":
        Pipeline([Stage("twin", _root), Stage("twin", _root)])
    elif case == "same stage object twice":
        shared = Stage("shared_leaf", _leaf)
        Pipeline([Stage("rootA", _root, [shared, shared])])
    elif case == "same stage object in two roots":
        shared = Stage("shared_leaf", _leaf)
        Pipeline([Stage("rootA", _root, [shared]), Stage("rootB", _root, [shared])])
    elif case == "cycle":
        loop_b = Stage("loop_b", _inner)
        loop_a = Stage("loop_a", _inner, [loop_b])
        loop_b.children.append(loop_a)
        Pipeline([Stage("rootA", _root, [loop_a])])
    elif case == "root takes a message":
        Pipeline([Stage("msg_root", _inner, [Stage("leafA", _leaf)])])
    elif case == "leaf requires emit":
        Pipeline([Stage("rootA", _root, [Stage("emitting_leaf", _inner)])])
    elif case == "plain leaf requires emit":
        Pipeline([Stage("rootA", _root, [Stage("emitting_leaf", lambda msg, emit: None)])])
    elif case == "inner takes no emit":
        Pipeline([Stage("rootA", _root, [Stage("mute_inner", _leaf, [Stage("leafA", _leaf)])])])
    elif case == "batch on a root":
        Pipeline([Stage("batch_root", _root, [Stage("leafA", _leaf)], batch=True)])
    elif case == "batch size on a root":
        Pipeline([Stage("batch_root", _root, [Stage("leafA", _leaf)], batch=3)])
    elif case == "workers on a root":
        Pipeline([Stage("pool_root", _root, [Stage("leafA", _leaf)], workers=2)])
    else:
        raise AssertionError(case)


CONSTRUCTION = {
    "duplicate name": "twin",
    "duplicate name across roots": "twin",
    "same stage object twice": "shared_leaf",
    "same stage object in two roots": "shared_leaf",
    "cycle": "loop_",
    "root takes a message": "msg_root",
    "leaf requires emit": "emitting_leaf",
    "plain leaf requires emit": "emitting_leaf",
    "inner takes no emit": "mute_inner",
    "batch on a root": "batch_root",
    "batch size on a root": "batch_root",
    "workers on a root": "pool_root",
}


@pytest.mark.parametrize("case", list(CONSTRUCTION))
def test_a_wiring_mistake_is_a_registration_error_naming_the_stage(case: str) -> None:
    with pytest.raises(RegistrationError) as info:
        _build_bad(case)
    assert CONSTRUCTION[case] in str(info.value)


BAD_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("workers", {"workers": 0}),
    ("workers", {"workers": -1}),
    ("workers", {"workers": 1.5}),
    ("workers", {"workers": "2"}),
    ("buffer", {"buffer": 0}),
    ("buffer", {"buffer": -3}),
    ("buffer", {"buffer": 2.0}),
    ("buffer", {"buffer": None}),
    ("ordered", {"ordered": "yes"}),
    ("ordered", {"ordered": 1}),
    ("batch", {"batch": -2}),
    ("batch", {"batch": 1.5}),
]


@pytest.mark.parametrize(("option", "kwargs"), BAD_OPTIONS, ids=[f"{o}={k[o]!r}" for o, k in BAD_OPTIONS])
def test_a_bad_option_is_a_registration_error_naming_the_stage(option: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(RegistrationError) as info:
        Pipeline([Stage("rootA", _root, [Stage("optioned", _leaf, **kwargs)])])
    assert "optioned" in str(info.value)
    assert option in str(info.value)


@pytest.mark.parametrize("fn", [None, 42, "leaf"], ids=["None", "int", "str"])
def test_fn_not_callable_is_a_registration_error_naming_the_stage(fn: Any) -> None:
    with pytest.raises(RegistrationError, match="uncallable"):
        Pipeline([Stage("rootA", _root, [Stage("uncallable", fn)])])


@pytest.mark.parametrize("name", ["", None, 3, b"x"], ids=["empty", "None", "int", "bytes"])
def test_a_name_that_is_not_a_non_empty_str_is_a_registration_error(name: Any) -> None:
    with pytest.raises(RegistrationError):
        Pipeline([Stage("rootA", _root, [Stage(name, _leaf)])])


@pytest.mark.parametrize("children", [["not a stage"], [_leaf], "abc"], ids=["str_item", "function_item", "str"])
def test_children_that_are_not_stages_is_a_registration_error_naming_the_stage(children: Any) -> None:
    with pytest.raises(RegistrationError, match="parent_stage"):
        Pipeline([Stage("parent_stage", _root, children)])


def test_an_empty_roots_list_is_a_registration_error() -> None:
    with pytest.raises(RegistrationError):
        Pipeline([])


def test_an_unknown_engine_is_a_registration_error() -> None:
    with pytest.raises(RegistrationError, match="warp"):
        Pipeline([Stage("rootA", _root, [Stage("leafA", _leaf)])], engine="warp")


def test_valid_options_are_accepted() -> None:
    # The counterpart of the error cases: the same stages with good options build.
    leaf = Stage("optioned", _leaf, workers=3, buffer=1, ordered=False, batch=2)
    inner = Stage("inner", _inner, [leaf], batch=True)

    async def optional_emit(msg: Any, emit: Any = None) -> None:
        pass

    lenient = Stage("lenient_leaf", optional_emit)  # a leaf may accept emit, as long as it does not require it
    p = Pipeline([Stage("rootA", _root, [inner, lenient]), Stage("alone", lambda emit: None)], engine="serial")
    assert p.engine == "serial"
    assert set(p.stats()) == {"rootA", "inner", "optioned", "lenient_leaf", "alone"}


# -- the engine setting -------------------------------------------------------------------------


def depth_first_trace(trace: list[tuple[str, int]]) -> list[Stage]:
    async def root(emit: Any) -> None:
        for i in range(5):
            await emit(i)
            trace.append(("emitted", i))

    async def leaf(msg: int) -> None:
        trace.append(("leaf", msg))

    return [Stage("source", root, [Stage("sink", leaf)])]


DEPTH_FIRST = [event for i in range(5) for event in (("leaf", i), ("emitted", i))]


async def test_serial_engine_is_depth_first() -> None:
    # The evidence the env tests rely on: serial handles each message down the tree before emit returns.
    trace: list[tuple[str, int]] = []
    await run(Pipeline(depth_first_trace(trace), engine="serial"))
    assert trace == DEPTH_FIRST


async def test_pipeline_engine_env_overrides_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_ENGINE", "serial")
    trace: list[tuple[str, int]] = []
    p = Pipeline(depth_first_trace(trace), engine="parallel")
    assert p.engine == "parallel"  # before run: the constructor's choice
    await run(p)
    assert p.engine == "serial"
    assert trace == DEPTH_FIRST


async def test_pipeline_engine_env_parallel_runs_workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_ENGINE", "parallel")
    active = 0
    full = anyio.Event()

    async def leaf(msg: int) -> None:
        nonlocal active
        active += 1
        if active == 3:
            full.set()
        await full.wait()  # three at once: impossible on the serial engine
        active -= 1

    p = Pipeline([Stage("source", counting_root(6), [Stage("pool", leaf, workers=3)])], engine="serial")
    await run(p)
    assert p.engine == "parallel"


async def test_pipeline_shutdown_timeout_env_overrides_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_SHUTDOWN_TIMEOUT", "0.2")
    started = anyio.Event()

    async def stuck(msg: int) -> None:
        started.set()
        await anyio.sleep_forever()

    p = Pipeline(
        [Stage("source", endless_root(False, threading.Event()), [Stage("stuck", stuck)])], shutdown_timeout=60
    )
    with anyio.fail_after(8):  # the constructor's 60 s would trip this
        async with anyio.create_task_group() as tg:
            tg.start_soon(p.run)
            await started.wait()
            await p.stop()
    assert p.dropped > 0


async def test_a_bogus_pipeline_engine_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_ENGINE", "bogus")
    ran: list[int] = []

    async def root(emit: Any) -> None:
        ran.append(1)
        await emit(1)

    with pytest.raises(Exception) as info:  # at construction or when run starts; either way, before any stage
        p = Pipeline([Stage("source", root, [Stage("sink", _leaf)])], engine="serial")
        await run(p)
    message = str(info.value)
    assert "PIPELINE_ENGINE" in message and "bogus" in message, message
    assert not isinstance(info.value, PipelineError)
    assert ran == []
