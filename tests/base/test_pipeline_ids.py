"""Message ids: ``Stage(..., with_id=True)`` receives ``Message`` objects whose ids are stable from the root."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from test_pipeline_engines import ENGINES, _worker_based_redis, make_pipeline  # noqa: F401 (a fixture)

from nacelle_py import RegistrationError
from nacelle_py.base import Message, Pipeline, Stage

pytestmark = pytest.mark.anyio


async def run(roots: list[Stage], engine: str) -> Pipeline:
    pipeline = make_pipeline(roots, engine)
    with anyio.fail_after(10):
        await pipeline.run()
    return pipeline


@pytest.mark.parametrize("engine", ENGINES)
async def test_ids_name_the_root_the_sequence_and_each_hop(engine: str) -> None:
    got: list[tuple[str, Any]] = []

    async def numbers(emit: Any) -> None:
        for i in range(3):
            await emit(i)
        await emit.many([10, 11])
        await emit.many(x for x in (20,))

    async def split(x: int, emit: Any) -> None:
        await emit(x)
        await emit.many([-x, x * 100])

    async def store(msg: Message[int]) -> None:
        got.append((msg.id, msg.body))

    await run([Stage("numbers", numbers, [Stage("split", split, [Stage("store", store, with_id=True)])])], engine)
    inputs = [0, 1, 2, 10, 11, 20]
    assert got == [
        (f"numbers:{n}.{k}", value) for n, x in enumerate(inputs) for k, value in enumerate((x, -x, x * 100))
    ]


@pytest.mark.parametrize("engine", ENGINES)
async def test_an_inner_stage_sees_its_id_and_emits_plain_values(engine: str) -> None:
    seen: list[str] = []
    stored: list[Any] = []

    def root(emit: Any) -> None:  # a plain root on its thread
        emit.many(["a", "b"])

    def tag(msg: Message[str], emit: Any) -> None:  # a plain inner stage with_id
        seen.append(msg.id)
        emit(f"{msg.body}@{msg.id}")

    async def store(body: str) -> None:  # no with_id: the body only
        stored.append(body)

    await run([Stage("r", root, [Stage("tag", tag, [Stage("store", store)], with_id=True)])], engine)
    assert seen == ["r:0", "r:1"]
    assert stored == ["a@r:0", "b@r:1"]


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_batch_stage_gets_messages_and_its_outputs_extend_the_first_id(engine: str) -> None:
    batches: list[list[str]] = []
    out: list[str] = []
    lock = threading.Lock()

    async def root(emit: Any) -> None:
        await emit.many(range(6))

    def total(msgs: list[Message[int]], emit: Any) -> None:
        with lock:
            batches.append([m.id for m in msgs])
        emit(sum(m.body for m in msgs))

    async def leaf(msg: Message[int]) -> None:
        out.append(msg.id)

    await run(
        [Stage("r", root, [Stage("sum", total, [Stage("leaf", leaf, with_id=True)], batch=4, with_id=True)])], engine
    )
    assert [i for batch in batches for i in batch] == [f"r:{n}" for n in range(6)]
    assert all(len(batch) <= 4 for batch in batches)
    assert out == [f"{batch[0]}.0" for batch in batches]


@pytest.mark.parametrize("engine", ENGINES)
async def test_ids_start_again_with_each_run_and_trees_without_with_id_are_untouched(engine: str) -> None:
    ids: list[str] = []
    bodies: list[Any] = []

    async def root(emit: Any) -> None:
        await emit.many([1, 2])

    async def with_ids(msg: Message[int]) -> None:
        ids.append(msg.id)

    async def plain(body: Any) -> None:
        bodies.append(body)

    roots = [Stage("a", root, [Stage("ids", with_ids, with_id=True)]), Stage("b", root, [Stage("plain", plain)])]
    pipeline = make_pipeline(roots, engine)
    for _ in range(2):
        with anyio.fail_after(10):
            await pipeline.run()
    assert ids == ["a:0", "a:1"] * 2
    assert bodies == [1, 2] * 2  # the other tree's messages were never wrapped


@pytest.mark.parametrize("engine", ENGINES)
async def test_workers_keep_each_message_its_id(engine: str) -> None:
    pairs: list[tuple[str, int]] = []

    async def root(emit: Any) -> None:
        for i in range(40):
            await emit(i)

    async def slow(x: int, emit: Any) -> None:
        await anyio.sleep(0.001 * (x % 3))
        await emit(x * 2)

    async def leaf(msg: Message[int]) -> None:
        pairs.append((msg.id, msg.body))

    await run(
        [Stage("r", root, [Stage("w", slow, [Stage("leaf", leaf, with_id=True)], workers=4, ordered=False)])], engine
    )
    assert sorted(pairs) == sorted((f"r:{i}.0", i * 2) for i in range(40))


def test_message_compares_by_id_and_body() -> None:
    assert Message("r:1", 5) == Message("r:1", 5)
    assert Message("r:1", 5) != Message("r:1", 6)
    assert Message("r:1", 5) != Message("r:2", 5)
    assert len({Message("r:1", 5), Message("r:1", 5)}) == 1
    assert repr(Message("r:1", [1])) == "Message('r:1', [1])"
    assert Message("r:1", 5).__eq__(("r:1", 5)) is NotImplemented


def test_with_id_is_checked() -> None:
    async def root(emit: Any) -> None:
        pass

    async def leaf(msg: Any) -> None:
        pass

    with pytest.raises(RegistrationError, match="with_id must be True or False"):
        Stage("leaf", leaf, with_id=1)  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match=r"stage 'r' is a root: roots receive no messages, with_id"):
        Pipeline([Stage("r", root, [Stage("leaf", leaf)], with_id=True)])
