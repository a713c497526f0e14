"""Pipeline engine equivalence: every engine delivers the same messages, per edge, in the same order.

Each shape is built afresh for every engine in ``ENGINES`` and run to completion.
Every non-root stage records what it received (flattened for batch stages), keyed by
its name: with a tree, a stage's name identifies its input edge (parent -> child).
The expected content of every edge is computed independently in the test; edges into
a ``workers=N`` stage (processed concurrently) and out of an ``ordered=False`` stage
are compared as multisets, every other edge as an exact sequence.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacelle_py.base import Message, Pipeline, Stage

pytestmark = pytest.mark.anyio

ENGINES = ["serial", "parallel", "worker-based"]
"""Every engine under test: add a new engine here and every shape runs on it too."""

_REDIS: dict[str, str] = {}  # the worker-based engine's server, for make_pipeline


@pytest.fixture(autouse=True)
def _worker_based_redis(redis_url: str) -> Iterator[None]:
    """The worker-based engine runs against the session's real Redis (emptied for each test)."""
    _REDIS["url"] = redis_url
    yield
    _REDIS.clear()


def make_pipeline(roots: list[Stage], engine: str | None = None, **options: Any) -> Pipeline:
    """A pipeline on ``engine``; on the worker-based one, with a namespace of its own on the test's Redis."""
    if engine == "worker-based":
        options.setdefault("redis_url", _REDIS["url"])
        options.setdefault("namespace", f"test:{uuid.uuid4().hex[:12]}")
    return Pipeline(roots, engine=engine, **options)


RUN_LIMIT = 10.0


# -- recording --------------------------------------------------------------------------------


class Recorder:
    """What each stage received, keyed by stage name (thread-safe: plain stages run in threads).

    With ``ids``, every recording stage is made with ``with_id=True``: it records the
    bodies as usual, and each message's id besides (``ids_of``).
    """

    def __init__(self, ids: bool = False) -> None:
        self.lock = threading.Lock()
        self.edges: dict[str, list[Any]] = {}
        self.problems: list[str] = []
        self.ids = ids
        self.ids_of: dict[str, list[tuple[str, Any]]] = {}

    def unwrap(self, name: str, arg: Any) -> Any:
        """The body (or bodies) of what a ``with_id`` stage received; its ids are noted."""
        if not self.ids:
            return arg
        msgs = arg if isinstance(arg, list) else [arg]
        with self.lock:
            for msg in msgs:
                if not isinstance(msg, Message):
                    self.problems.append(f"{name}: not a Message: {msg!r}")
                    continue
                self.ids_of.setdefault(name, []).append((msg.id, msg.body))
        return [msg.body for msg in msgs] if isinstance(arg, list) else getattr(arg, "body", arg)

    def add(self, name: str, msg: Any) -> None:
        with self.lock:
            self.edges.setdefault(name, []).append(msg)

    def extend(self, name: str, msgs: Any, limit: int | None) -> None:
        with self.lock:
            if not isinstance(msgs, list):
                self.problems.append(f"{name}: batch is not a list: {msgs!r}")
                msgs = list(msgs)
            if not msgs:
                self.problems.append(f"{name}: empty batch")
            if limit is not None and len(msgs) > limit:
                self.problems.append(f"{name}: batch of {len(msgs)} > {limit}")
            self.edges.setdefault(name, []).extend(msgs)

    def snapshot(self) -> dict[str, list[Any]]:
        with self.lock:
            return {k: list(v) for k, v in self.edges.items()}


@dataclass
class Shape:
    roots: list[Stage]
    expected: dict[str, list[Any]]
    """Stage name -> the messages its input edge carries, in order."""
    unordered: frozenset[str] = field(default_factory=frozenset)
    """Edges compared as multisets."""


Out = Callable[[Any], Iterable[Any]]


def same(msg: Any) -> list[Any]:
    return [msg]


def async_root(values: Callable[[], Iterable[Any]], *, many: bool = False) -> Callable[..., Any]:
    async def root(emit: Any) -> None:
        if many:
            await emit.many(values())
        else:
            for v in values():
                await emit(v)

    return root


def plain_root(values: Callable[[], Iterable[Any]], *, many: bool = False) -> Callable[..., Any]:
    def root(emit: Any) -> None:
        if many:
            emit.many(values())
        else:
            for v in values():
                emit(v)

    return root


def stage(
    rec: Recorder,
    name: str,
    children: list[Stage] | None = None,
    *,
    out: Out = same,
    plain: bool = False,
    many: bool = False,
    delay: Callable[[Any], float] | None = None,
    **options: Any,
) -> Stage:
    """A recording inner stage (children given) or leaf, async or plain, single or batch.

    ``out(msg)`` is what an inner stage emits for one message, with ``emit`` one at a time
    or with one ``emit.many(generator)`` per message (``many``). ``delay(msg)`` is slept
    before emitting (``anyio.sleep`` or ``time.sleep``).
    """
    batch = options.get("batch", False)
    limit = None if batch is True or batch is False else int(batch)
    kids = children or []

    def take(arg: Any) -> list[Any]:
        arg = rec.unwrap(name, arg)
        if batch is False:
            rec.add(name, arg)
            return [arg]
        rec.extend(name, arg, limit)
        return list(arg)

    if plain:

        def plain_inner(arg: Any, emit: Any) -> None:
            for m in take(arg):
                if delay is not None:
                    time.sleep(delay(m))
                if many:
                    emit.many(x for x in out(m))
                else:
                    for x in out(m):
                        emit(x)

        def plain_leaf(arg: Any) -> None:
            for m in take(arg):
                if delay is not None:
                    time.sleep(delay(m))

        fn: Callable[..., Any] = plain_inner if kids else plain_leaf
    else:

        async def async_inner(arg: Any, emit: Any) -> None:
            for m in take(arg):
                if delay is not None:
                    await anyio.sleep(delay(m))
                if many:
                    await emit.many(x for x in out(m))
                else:
                    for x in out(m):
                        await emit(x)

        async def async_leaf(arg: Any) -> None:
            for m in take(arg):
                if delay is not None:
                    await anyio.sleep(delay(m))

        fn = async_inner if kids else async_leaf
    return Stage(name, fn, kids, with_id=rec.ids, **options)


def jitter(seed: int, most: float) -> Callable[[Any], float]:
    """Small random delays (0 half of the time: a bare checkpoint)."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def delay(_: Any) -> float:
        with lock:
            r = rng.random()
        return 0.0 if r < 0.5 else r * most

    return delay


# -- shapes -----------------------------------------------------------------------------------


def chain2(rec: Recorder) -> Shape:
    roots = [Stage("root", async_root(lambda: range(20)), [stage(rec, "leaf")])]
    return Shape(roots, {"leaf": list(range(20))})


def chain4(rec: Recorder) -> Shape:
    c = stage(rec, "c")
    b = stage(rec, "b", [c], out=lambda x: [x + 1])
    a = stage(rec, "a", [b], out=lambda x: [x * x])
    roots = [Stage("root", async_root(lambda: range(30)), [a])]
    squares = [i * i for i in range(30)]
    return Shape(roots, {"a": list(range(30)), "b": squares, "c": [s + 1 for s in squares]})


def fan_out(rec: Recorder) -> Shape:
    leaves = [stage(rec, f"l{i}", plain=(i == 2)) for i in range(4)]
    roots = [Stage("root", async_root(lambda: range(25)), leaves)]
    return Shape(roots, {f"l{i}": list(range(25)) for i in range(4)})


def two_root_tree(rec: Recorder) -> Shape:
    i2 = stage(rec, "i2", [stage(rec, "l2"), stage(rec, "l3", plain=True)], out=lambda x: [x + 100])
    i1 = stage(rec, "i1", [stage(rec, "l1"), i2], out=lambda x: [x * 2])
    r1 = Stage("r1", async_root(lambda: range(12)), [i1, stage(rec, "l4")])
    j2 = stage(rec, "j2", [stage(rec, "m1"), stage(rec, "m2")], out=lambda s: [s + "!"], plain=True)
    j1 = stage(rec, "j1", [j2], out=lambda s: [s.upper()])
    r2 = Stage("r2", plain_root(lambda: (f"s{i}" for i in range(8))), [j1])
    r3 = Stage("r3", async_root(lambda: range(5)))  # no children: emissions counted and discarded
    doubled = [2 * x for x in range(12)]
    strings = [f"s{i}" for i in range(8)]
    return Shape(
        [r1, r2, r3],
        {
            "i1": list(range(12)),
            "l1": doubled,
            "i2": doubled,
            "l2": [x + 100 for x in doubled],
            "l3": [x + 100 for x in doubled],
            "l4": list(range(12)),
            "j1": strings,
            "j2": [s.upper() for s in strings],
            "m1": [s.upper() + "!" for s in strings],
            "m2": [s.upper() + "!" for s in strings],
        },
    )


def filter_and_multiply(rec: Recorder) -> Shape:
    # Lists, not tuples: what a message is must survive JSON (the worker-based engine's edges).
    triple = stage(rec, "triple", [stage(rec, "tleaf")], out=lambda x: [[x, 0], [x, 1], [x, 2]])
    evens = stage(rec, "evens", [triple, stage(rec, "eleaf", plain=True)], out=lambda x: [x] if x % 2 == 0 else [])
    nothing = stage(rec, "nothing", [stage(rec, "never")], out=lambda x: [], plain=True)
    roots = [Stage("root", async_root(lambda: range(40)), [evens, nothing])]
    ev = [x for x in range(40) if x % 2 == 0]
    return Shape(
        roots,
        {
            "evens": list(range(40)),
            "triple": ev,
            "tleaf": [[x, k] for x in ev for k in range(3)],
            "eleaf": ev,
            "nothing": list(range(40)),
            "never": [],
        },
    )


def emit_many(rec: Recorder) -> Shape:
    async def root(emit: Any) -> None:
        await emit.many(list(range(10)))
        await emit.many(x for x in range(10, 20))
        await emit.many([])
        await emit(20)

    def root2(emit: Any) -> None:
        emit.many(["a", "b"])
        emit.many(c for c in "cde")
        emit.many(iter(()))

    b = stage(rec, "b", [stage(rec, "leaf")], out=lambda y: [y * 10, y * 10 + 1], plain=True, many=True)
    a = stage(rec, "a", [b], out=lambda x: [x, -x], many=True)
    c = stage(rec, "c", [stage(rec, "leaf2", plain=True)], out=lambda s: [s, s * 2], many=True)
    ints = list(range(21))
    signed = [v for x in ints for v in (x, -x)]
    letters = list("abcde")
    return Shape(
        [Stage("root", root, [a]), Stage("root2", root2, [c])],
        {
            "a": ints,
            "b": signed,
            "leaf": [v for y in signed for v in (y * 10, y * 10 + 1)],
            "c": letters,
            "leaf2": [v for s in letters for v in (s, s * 2)],
        },
    )


def batches(rec: Recorder) -> Shape:
    leaf_b = stage(rec, "leaf_b", batch=True)
    b3 = stage(rec, "b3", [leaf_b], out=lambda x: [x + 1], batch=3, plain=True)
    bt = stage(rec, "bt", [b3], out=lambda x: [x * 2], batch=True, many=True)
    b3leaf = stage(rec, "b3leaf", batch=3, plain=True)
    b2 = stage(rec, "b2", [stage(rec, "after_b2")], out=lambda x: [x] if x % 3 else [], batch=2)
    roots = [Stage("root", async_root(lambda: range(23)), [bt, b3leaf, b2])]
    doubled = [2 * x for x in range(23)]
    return Shape(
        roots,
        {
            "bt": list(range(23)),
            "b3": doubled,
            "leaf_b": [x + 1 for x in doubled],
            "b3leaf": list(range(23)),
            "b2": list(range(23)),
            "after_b2": [x for x in range(23) if x % 3],
        },
    )


def workers_ordered(rec: Recorder) -> Shape:
    w = stage(rec, "w", [stage(rec, "wleaf")], out=lambda x: [x * x], workers=4, delay=jitter(1, 0.002))
    wp = stage(rec, "wp", [stage(rec, "wpleaf")], out=lambda x: [x + 1], workers=4, plain=True, delay=jitter(2, 0.001))
    wl = stage(rec, "wl", workers=4, delay=jitter(3, 0.001))
    roots = [Stage("root", async_root(lambda: range(40)), [w, wp, wl])]
    return Shape(
        roots,
        {
            "w": list(range(40)),
            "wleaf": [x * x for x in range(40)],
            "wp": list(range(40)),
            "wpleaf": [x + 1 for x in range(40)],
            "wl": list(range(40)),
        },
        unordered=frozenset({"w", "wp", "wl"}),  # processed 4 at a time: arrival order is not defined
    )


def workers_unordered(rec: Recorder) -> Shape:
    u = stage(
        rec,
        "u",
        [stage(rec, "uleaf"), stage(rec, "uw", workers=3, ordered=False)],
        out=lambda x: [x * x],
        workers=4,
        ordered=False,
        delay=jitter(4, 0.002),
    )
    up = stage(
        rec,
        "up",
        [stage(rec, "upleaf", plain=True)],
        out=lambda x: [x, x + 1000],
        workers=4,
        ordered=False,
        plain=True,
        delay=jitter(5, 0.001),
    )
    roots = [Stage("root", plain_root(lambda: range(40)), [u, up])]
    return Shape(
        roots,
        {
            "u": list(range(40)),
            "uleaf": [x * x for x in range(40)],
            "uw": [x * x for x in range(40)],
            "up": list(range(40)),
            "upleaf": [v for x in range(40) for v in (x, x + 1000)],
        },
        unordered=frozenset({"u", "uleaf", "uw", "up", "upleaf"}),
    )


def plain_mix(rec: Recorder) -> Shape:
    a3 = stage(rec, "a3", [stage(rec, "pleaf", plain=True)], out=lambda x: [x * 3])
    p1 = stage(rec, "p1", [a3], out=lambda x: [x + 1], plain=True)
    r1 = Stage("proot", plain_root(lambda: range(15)), [p1, stage(rec, "aleaf")])
    p2 = stage(rec, "p2", [stage(rec, "pleaf2", plain=True)], out=lambda x: [-x], plain=True)
    r2 = Stage("aroot", async_root(lambda: range(15)), [p2])
    return Shape(
        [r1, r2],
        {
            "p1": list(range(15)),
            "a3": [x + 1 for x in range(15)],
            "pleaf": [(x + 1) * 3 for x in range(15)],
            "aleaf": list(range(15)),
            "p2": list(range(15)),
            "pleaf2": [-x for x in range(15)],
        },
    )


def small_buffers(rec: Recorder) -> Shape:
    d = stage(rec, "d", plain=True, buffer=2)
    c = stage(rec, "c", [d], out=lambda x: [x * 2], buffer=1, delay=jitter(6, 0.001))
    b = stage(rec, "b", buffer=2, delay=lambda _: 0.0)
    a = stage(rec, "a", [b, c], buffer=1)
    f = stage(rec, "f", buffer=1)
    e = stage(rec, "e", [f], workers=4, buffer=1, delay=jitter(7, 0.001))
    g = stage(rec, "g", [stage(rec, "gleaf", buffer=1)], out=lambda x: [x, x], buffer=2, batch=2)
    roots = [Stage("root", async_root(lambda: range(50)), [a, e, g])]
    return Shape(
        roots,
        {
            "a": list(range(50)),
            "b": list(range(50)),
            "c": list(range(50)),
            "d": [2 * x for x in range(50)],
            "e": list(range(50)),
            "f": list(range(50)),
            "g": list(range(50)),
            "gleaf": [v for x in range(50) for v in (x, x)],
        },
        unordered=frozenset({"e"}),
    )


def batch_workers(rec: Recorder) -> Shape:
    bw = stage(
        rec,
        "bw",
        [stage(rec, "bwleaf", buffer=2)],
        out=lambda x: [x * 2],
        batch=3,
        workers=3,
        buffer=4,
        delay=jitter(8, 0.001),
    )
    bp = stage(rec, "bp", [stage(rec, "bpleaf")], out=lambda x: [x, -x], batch=True, workers=2, plain=True, many=True)
    bu = stage(rec, "bu", [stage(rec, "buleaf")], batch=2, workers=4, ordered=False, delay=jitter(9, 0.001))
    roots = [Stage("root", async_root(lambda: range(31)), [bw, bp, bu])]
    return Shape(
        roots,
        {
            "bw": list(range(31)),
            "bwleaf": [2 * x for x in range(31)],
            "bp": list(range(31)),
            "bpleaf": [v for x in range(31) for v in (x, -x)],
            "bu": list(range(31)),
            "buleaf": list(range(31)),
        },
        unordered=frozenset({"bw", "bp", "bu", "buleaf"}),
    )


SHAPES: dict[str, Callable[[Recorder], Shape]] = {
    "chain2": chain2,
    "chain4": chain4,
    "fan_out": fan_out,
    "two_root_tree": two_root_tree,
    "filter_and_multiply": filter_and_multiply,
    "emit_many": emit_many,
    "batches": batches,
    "workers_ordered": workers_ordered,
    "workers_unordered": workers_unordered,
    "plain_mix": plain_mix,
    "small_buffers": small_buffers,
    "batch_workers": batch_workers,
}


# -- running and comparing ----------------------------------------------------------------------


def key(msg: Any) -> str:
    return repr(msg)


def normalised(edges: dict[str, list[Any]], unordered: frozenset[str]) -> dict[str, list[Any]]:
    return {name: sorted(msgs, key=key) if name in unordered else msgs for name, msgs in edges.items()}


def children_of(roots: list[Stage]) -> Iterator[tuple[Stage, Stage]]:
    todo = list(roots)
    while todo:
        parent = todo.pop()
        for child in parent.children:
            yield parent, child
            todo.append(child)


async def run_shape(
    build: Callable[[Recorder], Shape], engine: str, ids: bool = False
) -> tuple[dict[str, list[Any]], dict[str, list[tuple[str, Any]]]]:
    """Run a fresh instance of the shape on ``engine``; check it against its expectation.

    Returns what each edge carried (normalised) and, with ``ids``, each edge's (id, body) pairs, sorted.
    """
    rec = Recorder(ids)
    shape = build(rec)
    pipeline = make_pipeline(shape.roots, engine)
    with anyio.fail_after(RUN_LIMIT):
        await pipeline.run()
    assert pipeline.engine == engine
    assert rec.problems == [], (engine, rec.problems)
    got = rec.snapshot()
    edges = {name: got.get(name, []) for name in shape.expected}
    assert set(got) <= set(shape.expected), (engine, set(got) - set(shape.expected))
    want = normalised(shape.expected, shape.unordered)
    have = normalised(edges, shape.unordered)
    for name in shape.expected:
        assert have[name] == want[name], (engine, name)
    stats = pipeline.stats()
    for parent, child in children_of(shape.roots):
        s = stats[child.name]
        assert s.messages_in == len(shape.expected[child.name]) == stats[parent.name].messages_out, (
            engine,
            parent.name,
            child.name,
            s,
            stats[parent.name],
        )
        assert s.queue_depth == 0 and s.errors == 0 and s.dropped == 0, (engine, s)
    pairs = {name: sorted(rec.ids_of.get(name, []), key=key) for name in shape.expected} if ids else {}
    for name, seen in pairs.items():
        assert len({i for i, _ in seen}) == len(seen) == len(shape.expected[name]), (engine, name, "ids not unique")
    return have, pairs


def batch_free(roots: list[Stage]) -> set[str]:
    """Stages with no batch stage above them: their messages' ids do not depend on how batches formed."""
    free: set[str] = set()
    todo = [(root, True) for root in roots]
    while todo:
        stage, clean = todo.pop()
        for child in stage.children:
            if clean:
                free.add(child.name)
            todo.append((child, clean and child.batch is False))
    return free


@pytest.mark.parametrize("build", list(SHAPES.values()), ids=list(SHAPES))
async def test_every_engine_delivers_the_same_per_edge_sequences(build: Callable[[Recorder], Shape]) -> None:
    results = {engine: (await run_shape(build, engine))[0] for engine in ENGINES}
    first, *others = ENGINES
    for engine in others:
        assert results[engine] == results[first], (first, engine)


@pytest.mark.parametrize("build", list(SHAPES.values()), ids=list(SHAPES))
async def test_every_engine_gives_every_message_the_same_id(build: Callable[[Recorder], Shape]) -> None:
    # Every stage made with_id=True: the same messages arrive, each with an id unique on its edge,
    # and (where no batch stage decided how messages were grouped) the same id on every engine.
    runs = {engine: await run_shape(build, engine, ids=True) for engine in ENGINES}
    plain = {engine: (await run_shape(build, engine))[0] for engine in ENGINES}
    stable = batch_free(build(Recorder()).roots)
    first, *others = ENGINES
    for engine in ENGINES:
        assert runs[engine][0] == plain[engine], engine  # ids change nothing about what is delivered
    for engine in others:
        for name in stable:
            assert runs[engine][1][name] == runs[first][1][name], (first, engine, name)


# -- property: random trees ---------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    name: str
    behaviour: str  # "pass", "filter" or "duplicate" (ignored for a leaf)
    buffer: int
    plain: bool
    children: tuple[Node, ...]
    workers: int = 1  # ordered: only the edge into the stage loses its order


@dataclass(frozen=True)
class Root:
    name: str
    count: int
    plain: bool
    children: tuple[Node, ...]


def behave(behaviour: str, x: int) -> list[int]:
    if behaviour == "pass":
        return [x]
    if behaviour == "filter":
        return [x] if x % 3 != 2 else []
    return [2 * x, 2 * x + 1]  # duplicate, distinguishably


@st.composite
def nodes(draw: st.DrawFn, name: str, depth: int) -> Node:
    fan_out = draw(st.integers(0, 3)) if depth < 3 else 0
    return Node(
        name=name,
        behaviour=draw(st.sampled_from(["pass", "filter", "duplicate"])),
        buffer=draw(st.integers(1, 8)),
        plain=draw(st.booleans()),
        children=tuple(draw(nodes(f"{name}.{i}", depth + 1)) for i in range(fan_out)),
        workers=draw(st.sampled_from([1, 1, 3])),
    )


@st.composite
def forests(draw: st.DrawFn) -> tuple[Root, ...]:
    roots = []
    for r in range(draw(st.integers(1, 2))):
        name = f"r{r}"
        fan_out = draw(st.integers(0, 3))
        roots.append(
            Root(
                name=name,
                count=draw(st.integers(0, 12)),
                plain=draw(st.booleans()),
                children=tuple(draw(nodes(f"{name}.{i}", 1)) for i in range(fan_out)),
            )
        )
    return tuple(roots)


def expected_edges(roots: tuple[Root, ...]) -> dict[str, list[int]]:
    """What each stage receives, computed without any engine."""
    edges: dict[str, list[int]] = {}

    def visit(node: Node, received: list[int]) -> None:
        edges[node.name] = received
        out = [y for x in received for y in behave(node.behaviour, x)]
        for child in node.children:
            visit(child, out)

    for root in roots:
        for child in root.children:
            visit(child, list(range(root.count)))
    return edges


def workers_of(roots: tuple[Root, ...]) -> dict[str, int]:
    found: dict[str, int] = {}

    def visit(node: Node) -> None:
        found[node.name] = node.workers
        for child in node.children:
            visit(child)

    for root in roots:
        for child in root.children:
            visit(child)
    return found


def build_forest(roots: tuple[Root, ...], rec: Recorder) -> list[Stage]:
    def make(node: Node) -> Stage:
        def out(x: int) -> list[int]:
            return behave(node.behaviour, x)

        return stage(
            rec,
            node.name,
            [make(c) for c in node.children],
            out=out,
            plain=node.plain,
            buffer=node.buffer,
            workers=node.workers,
        )

    def build_root(root: Root) -> Stage:
        def values() -> Iterable[int]:
            return range(root.count)

        fn = plain_root(values) if root.plain else async_root(values)
        return Stage(root.name, fn, [make(c) for c in root.children])

    return [build_root(root) for root in roots]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(forest=forests())
async def test_random_trees_run_identically_on_every_engine(forest: tuple[Root, ...]) -> None:
    pooled = frozenset(name for name, workers in workers_of(forest).items() if workers > 1)
    want = normalised(expected_edges(forest), pooled)
    results: dict[str, dict[str, list[Any]]] = {}
    for engine in ENGINES:
        rec = Recorder()
        pipeline = make_pipeline(build_forest(forest, rec), engine)
        with anyio.fail_after(RUN_LIMIT):
            await pipeline.run()
        got = rec.snapshot()
        assert set(got) <= set(want)
        results[engine] = normalised({name: got.get(name, []) for name in want}, pooled)
        assert results[engine] == want, engine
    first, *others = ENGINES
    for engine in others:
        assert results[engine] == results[first]


def test_the_comparison_and_the_oracle_can_tell_a_difference() -> None:
    # The harness itself: a reordered ordered edge, or a lost message on an unordered one, differs.
    assert normalised({"a": [2, 1]}, frozenset()) != normalised({"a": [1, 2]}, frozenset())
    assert normalised({"a": [2, 1]}, frozenset({"a"})) == normalised({"a": [1, 2]}, frozenset({"a"}))
    assert normalised({"a": [1, 1]}, frozenset({"a"})) != normalised({"a": [1]}, frozenset({"a"}))
    leaf = Node("r.0.0", "pass", 1, False, ())
    tree = (Root("r", 4, False, (Node("r.0", "duplicate", 1, False, (leaf,)),)),)
    assert expected_edges(tree) == {"r.0": [0, 1, 2, 3], "r.0.0": [0, 1, 2, 3, 4, 5, 6, 7]}
    tree = (Root("r", 6, True, (Node("r.0", "filter", 1, False, (leaf,)),)),)
    assert expected_edges(tree)["r.0.0"] == [0, 1, 3, 4]
