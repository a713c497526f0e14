"""The worker-based engine's own behaviour (the shared suites run it too): JSON on the wire, placement,
settings and their errors, leases, reclaim, dead letters, Redis going away, stats.

Everything runs against a real ``redis-server``; "replicas" here are several
``Pipeline`` objects in this process sharing a namespace, each running some
stages (``tests/base/test_pipeline_redis_crash.py`` does it with processes).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from _redis import RedisFactory, command, free_port
from _support import Boom, counting_root, wait_until
from pydantic import BaseModel
from structlog.testing import capture_logs

from nacelle_py import RegistrationError
from nacelle_py.base import Message, Pipeline, PipelineError, Stage
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio

LIMIT = 20.0


def redis(url: str, *args: str | int) -> Any:
    return command(urlsplit(url).port or 6379, *args)


def namespace() -> str:
    return f"wb:{uuid.uuid4().hex[:10]}"


def worker_based(roots: list[Stage], url: str, ns: str, **options: Any) -> Pipeline:
    return Pipeline(roots, engine="worker-based", redis_url=url, namespace=ns, **options)


async def run(p: Pipeline, limit: float = LIMIT) -> None:
    with anyio.fail_after(limit):
        await p.run()


# -- JSON on the wire -------------------------------------------------------------------------------


class Point(BaseModel):
    x: int
    y: int


async def test_messages_cross_as_json_models_arriving_as_their_fields(redis_url: str) -> None:
    got: list[Any] = []

    async def root(emit: Any) -> None:
        await emit.many([1, "two", [3, 4], {"five": 5}, None, True, 2.5, Point(x=1, y=2)])

    async def leaf(msg: Any) -> None:
        got.append(msg)

    await run(worker_based([Stage("root", root, [Stage("leaf", leaf)])], redis_url, namespace()))
    assert got == [1, "two", [3, 4], {"five": 5}, None, True, 2.5, {"x": 1, "y": 2}]


async def test_a_message_that_is_not_json_fails_at_emit_naming_the_stage(redis_url: str) -> None:
    class Opaque:
        pass

    async def root(emit: Any) -> None:
        await emit(1)

    async def inner(msg: int, emit: Any) -> None:
        await emit(Opaque())

    async def leaf(msg: Any) -> None:
        pass

    p = worker_based([Stage("root", root, [Stage("maker", inner, [Stage("leaf", leaf)])])], redis_url, namespace())
    with pytest.raises(PipelineError) as caught:
        await run(p)
    assert caught.value.stage == "maker" and caught.value.index == 0
    assert isinstance(caught.value.error, TypeError)
    assert "stage 'maker' emitted a message that cannot be sent as JSON" in str(caught.value.error)


# -- placement: several replicas of one pipeline ---------------------------------------------------


def tree(
    stored: list[tuple[str, Any]],
    count: int,
    square_delay: Callable[[int], float] = lambda n: 0.0,
    fail: Callable[[int], bool] = lambda n: False,
) -> list[Stage]:
    async def square(n: int, emit: Any) -> None:
        if fail(n):
            raise Boom(f"no square for {n}")
        await anyio.sleep(square_delay(n))
        await emit(n * n)

    async def store(msg: Message[int]) -> None:
        stored.append((msg.id, msg.body))

    return [
        Stage(
            "numbers",
            counting_root(count),
            [Stage("square", square, [Stage("store", store, with_id=True)], workers=4, buffer=16)],
        )
    ]


async def test_stages_placed_on_separate_replicas_run_the_same_tree(redis_url: str) -> None:
    stored: list[tuple[str, Any]] = []
    ns = namespace()
    roots = tree(stored, 300)
    replicas = [
        worker_based(roots, redis_url, ns, stages=stages) for stages in (["numbers"], ["square"], ["square"], ["store"])
    ]
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            for p in replicas:
                tg.start_soon(p.run)
    assert sorted(stored) == sorted((f"numbers:{n}.0", n * n) for n in range(300))
    ins = [p.stats()["square"].messages_in for p in replicas[1:3]]
    assert sum(ins) == 300  # the two square replicas shared the work, each message once
    assert replicas[0].stats()["square"].messages_in == 0  # a stage not run here counts nothing here
    assert replicas[0].stats()["numbers"].messages_out == 300


async def test_two_namespaces_on_one_redis_never_see_each_others_messages(redis_url: str) -> None:
    first: list[tuple[str, Any]] = []
    second: list[tuple[str, Any]] = []
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker_based(tree(first, 50), redis_url, namespace()).run)
            tg.start_soon(worker_based(tree(second, 70), redis_url, namespace()).run)
    assert len(first) == 50 and len(second) == 70


async def test_a_slow_message_past_the_lease_runs_once_its_lease_renewed(redis_url: str) -> None:
    stored: list[tuple[str, Any]] = []
    runs: list[int] = []
    lease = 0.6

    def delay(n: int) -> float:
        runs.append(n)
        return 3 * lease if n == 0 else 0.0

    ns = namespace()
    roots = tree(stored, 20, square_delay=delay)
    holder = worker_based(roots, redis_url, ns, stages=["numbers", "square", "store"], lease=lease)
    other = worker_based(roots, redis_url, ns, stages=["square"], lease=lease)  # would reclaim a lapsed lease
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.run)
            await wait_until(lambda: 0 in runs)
            tg.start_soon(other.run)
    assert runs.count(0) == 1
    assert sorted(stored) == sorted((f"numbers:{n}.0", n * n) for n in range(20))


async def test_a_stopped_replica_gives_back_what_it_had_not_started_at_once(redis_url: str) -> None:
    stored: list[tuple[str, Any]] = []
    ns = namespace()
    lease = 30.0  # far longer than the test: nothing here may wait for a lease

    def roots() -> list[Stage]:
        return tree(stored, 200, square_delay=lambda n: 0.01)

    producer = worker_based(roots(), redis_url, ns, stages=["numbers", "store"], lease=lease)
    first = worker_based(roots(), redis_url, ns, stages=["square"], lease=lease)
    second = worker_based(roots(), redis_url, ns, stages=["square"], lease=lease)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer.run)
            tg.start_soon(first.run)
            await wait_until(lambda: first.stats()["square"].messages_in >= 20)
            started_before = first.stats()["square"].messages_in
            await first.stop()
            assert not first.running and first.dropped == 0
            done_by_first = first.stats()["square"].messages_in
            assert done_by_first <= started_before + 4  # it finished what was in flight (4 workers), no more
            assert done_by_first < 200
            tg.start_soon(second.run)  # takes over at once: what the first held went back into the edge
    assert sorted(stored) == sorted((f"numbers:{n}.0", n * n) for n in range(200))  # each once: no crash
    assert second.stats()["square"].messages_in == 200 - done_by_first


async def test_an_end_added_twice_still_ends_every_replica_once(redis_url: str) -> None:
    # A flush re-sent after a lost reply can add the end twice; each copy may reach another replica.
    stored: list[tuple[str, Any]] = []
    ns = namespace()
    roots = tree(stored, 12)  # fewer than square's buffer (16): the root finishes with nobody reading
    await run(worker_based(roots, redis_url, ns, stages=["numbers"]))
    redis(redis_url, "XADD", f"{ns}:edge:square", "*", "m", "E")
    replicas = [worker_based(roots, redis_url, ns, stages=["square"]) for _ in range(2)]
    store = worker_based(roots, redis_url, ns, stages=["store"])
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            for p in (*replicas, store):
                tg.start_soon(p.run)
    assert sorted(stored) == sorted((f"numbers:{n}.0", n * n) for n in range(12))
    assert int(redis(redis_url, "XLEN", f"{ns}:edge:square")) == 0
    assert int(redis(redis_url, "XLEN", f"{ns}:edge:store")) == 0  # one end passed on, and consumed


async def test_a_failing_message_stays_pending_then_is_retried_then_dead_lettered(redis_url: str) -> None:
    stored: list[tuple[str, Any]] = []
    ns = namespace()
    lease = 30.0  # nothing here waits for a lease
    roots = tree(stored, 10, fail=lambda n: n == 4)
    await run(worker_based(roots, redis_url, ns, stages=["numbers"]))  # the root's replica: 10 messages, the end
    p = worker_based(roots, redis_url, ns, stages=["square", "store"], lease=lease, max_deliveries=2)
    with pytest.raises(PipelineError, match="stage 'square' failed on message"):
        await run(p)
    # Not acknowledged, and not left pending for a lease either: handed back into the edge at once.
    assert int(redis(redis_url, "XPENDING", f"{ns}:edge:square", "square")[0]) == 0
    assert int(redis(redis_url, "XLEN", f"{ns}:edge:square")) >= 1
    assert 4 not in [int(i.split(":")[1].split(".")[0]) for i, _ in stored]

    # A later run (a restarted replica): delivered a second time, it fails again.
    with pytest.raises(PipelineError):
        await run(p)
    # The third delivery passes max_deliveries=2: dead-lettered (the others were delivered as often,
    # but only the one the stage raised for counts), and the run completes.
    with capture_logs() as logs:
        await run(p)
    assert ("numbers:4.0", 16) not in stored
    assert sorted(set(stored)) == sorted((f"numbers:{n}.0", n * n) for n in range(10) if n != 4)
    letters = redis(redis_url, "XRANGE", f"{ns}:dead:square", "-", "+")
    assert len(letters) == 1
    letter = json.loads(letters[0][1][1])
    assert letter["stage"] == "square" and letter["deliveries"] == 3
    assert letter["messages"] == [["numbers:4", 4]]
    assert "PIPELINE_MAX_DELIVERIES" in letter["error"]
    assert p.stats()["square"].dead_lettered == 1
    assert any(e["event"] == "pipeline message dead-lettered" and e["stage"] == "square" for e in logs)
    assert int(redis(redis_url, "XPENDING", f"{ns}:edge:square", "square")[0]) == 0


async def test_a_restarted_redis_loses_nothing(redis_factory: RedisFactory) -> None:
    server = redis_factory(appendonly=True)
    stored: list[tuple[str, Any]] = []
    ns = namespace()
    p = worker_based(tree(stored, 400, square_delay=lambda n: 0.005), server.url, ns, lease=2.0)
    with capture_logs() as logs, anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(p.run)
            await wait_until(lambda: len(stored) >= 50, limit=LIMIT)
            server.stop()
            await anyio.sleep(0.5)
            server.start()
    assert set(stored) == {(f"numbers:{n}.0", n * n) for n in range(400)}  # duplicates allowed, no loss
    assert any(e["event"] == "redis unreachable; retrying with backoff" for e in logs)
    assert any(e["event"] == "redis reachable again" for e in logs)


# -- stats -------------------------------------------------------------------------------------------


async def test_stats_show_what_waits_in_redis_for_a_stage(redis_url: str) -> None:
    release = anyio.Event()

    async def held(msg: int) -> None:
        await release.wait()

    p = worker_based([Stage("root", counting_root(40), [Stage("held", held, buffer=8)])], redis_url, namespace())
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(p.run)
            await wait_until(lambda: p.stats()["held"].pending >= 1, limit=5)
            s = p.stats()["held"]
            assert s.pending >= 1 and s.lag >= 0 and s.reclaimed == 0 and s.dead_lettered == 0
            release.set()
    s = p.stats()["held"]
    assert s.messages_in == 40 and s.queue_depth == 0


# -- settings and their errors ------------------------------------------------------------------------


def test_bad_code_options_are_registration_errors_naming_them() -> None:
    roots = [Stage("numbers", counting_root(1), [Stage("store", lambda m: None)])]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"stages": ["nope"]}, r"stages= names the stages this replica runs; got unknown stage\(s\) \['nope'\]"),
        ({"stages": []}, "got an empty list"),
        ({"stages": "store"}, "stages must be a list of stage names"),
        ({"redis_url": "http://:pw@h:1"}, "redis_url 'http://:\\*\\*\\*@h:1' must start with redis://"),
        ({"namespace": "has space"}, "namespace must be a non-empty prefix without spaces"),
        ({"lease": 0}, "lease must be a positive number"),
        ({"max_deliveries": 0}, "max_deliveries must be a positive"),
    ]
    for options, message in cases:
        with pytest.raises(RegistrationError, match=message):
            Pipeline(roots, engine="worker-based", **options)
    with pytest.raises(RegistrationError, match=r"stages apply to the worker-based engine only"):
        Pipeline(roots, engine="parallel", stages=["store"])


async def test_placement_that_runs_no_stage_of_the_pipeline_is_a_registration_error(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_ENGINE", "worker-based")
    monkeypatch.setenv("PIPELINE_STAGES", "other,stages")
    monkeypatch.setenv("REDIS_URL", redis_url)
    p = Pipeline([Stage("numbers", counting_root(1), [Stage("store", lambda m: None)])])
    with pytest.raises(RegistrationError, match=r"name no stage of this pipeline \(other, stages\).*numbers, store"):
        await run(p)


async def test_worker_based_settings_on_another_engine_are_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One app's settings serve all its pipelines; a pipeline coded for another engine runs as coded.
    monkeypatch.setenv("PIPELINE_STAGES", "store")
    monkeypatch.setenv("PIPELINE_LEASE", "5")
    got: list[int] = []

    async def store(msg: int) -> None:
        got.append(msg)

    p = Pipeline([Stage("numbers", counting_root(3), [Stage("store", store)])], engine="parallel")
    with capture_logs() as logs:
        await run(p)
    assert got == [0, 1, 2]  # every stage ran here
    warnings = [e for e in logs if e["event"].startswith("worker-based settings ignored")]
    assert warnings and warnings[0]["settings"] == ["PIPELINE_STAGES", "PIPELINE_LEASE"]


async def test_under_an_app_the_settings_place_the_stages_and_name_the_namespace(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored: list[tuple[str, Any]] = []
    monkeypatch.setenv("PIPELINE_ENGINE", "worker-based")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("PIPELINE_LEASE", "5")
    app = test_app("shop")
    p = Pipeline(tree(stored, 30))
    app.register(p, name="orders", priority=1)
    assert await app.serve() == 0  # a finite pipeline ends the app
    assert len(set(stored)) == 30
    assert redis(redis_url, "EXISTS", "nacelle:shop:orders:edge:square") == 1  # the default namespace


async def test_bad_settings_fail_the_boot_naming_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_STAGES", "a,,b")
    monkeypatch.setenv("PIPELINE_LEASE", "-1")
    monkeypatch.setenv("PIPELINE_MAX_DELIVERIES", "0")
    monkeypatch.setenv("PIPELINE_NAMESPACE", " ")
    app = test_app("shop")
    app.register(Pipeline(tree([], 1)), name="orders", priority=1)
    with capture_logs() as logs:
        assert await app.serve() == 1
    text = " ".join(str(e.get("event")) for e in logs)
    for variable in ("PIPELINE_STAGES", "PIPELINE_LEASE", "PIPELINE_MAX_DELIVERIES", "PIPELINE_NAMESPACE"):
        assert variable in text, (variable, text)


async def test_unreachable_redis_fails_within_the_bound_naming_the_masked_url() -> None:
    port = free_port()  # nothing listens there
    p = worker_based(tree([], 1), f"redis://:s3cret@127.0.0.1:{port}/0", namespace())
    started = anyio.current_time()
    with pytest.raises(Exception) as caught:
        await run(p, limit=15)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "s3cret" not in message and "REDIS_URL" in message
    assert anyio.current_time() - started < 12


def test_help_lists_the_worker_based_settings() -> None:
    app = test_app("shop")
    app.register(Pipeline(tree([], 1)), name="orders", priority=1)
    text = app.describe()
    for variable in ("PIPELINE_STAGES", "PIPELINE_NAMESPACE", "PIPELINE_LEASE", "PIPELINE_MAX_DELIVERIES", "REDIS_URL"):
        assert variable in text, variable
