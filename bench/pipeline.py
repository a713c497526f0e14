"""Pipeline throughput against hand-written anyio memory-stream pipelines, in one run.

Every measurement runs on the asyncio backend in this process, the pipeline
and its baseline alternating (after a warm-up round) so that machine noise
falls on both; each figure is the median of the repetitions.

The stages are the same user functions on both sides: a root that loops
``for i in range(n)`` and hands each int on, ``async def`` inner stages and
an ``async def count(msg)`` leaf. The baselines are what one would write by
hand without the framework: one task per stage, connected by anyio memory
object streams (buffer 1024, the pipeline's default edge), sending with the
``send_nowait`` fast path (``await send()`` only when the buffer is full),
receiving with ``receive_nowait`` (``await receive()`` only when empty), and
calling the same stage functions.

1. 2 stages, per-item ``await emit(i)``: root -> count, ``--items`` ints
   (1,000,000). Goals: >= 2,000,000 messages/s, and >= 0.8x the baseline.
2. 2 stages with ``await emit.many(chunk)`` (chunks of 1,000) into a leaf
   declared ``batch=True`` (it receives lists and counts them). Goal:
   >= 10,000,000 items/s. Also printed: the same ``emit.many`` into a
   per-message leaf.
3. 4-stage chain (root -> inc -> inc -> count) and a fan-out of one root to
   4 leaves, per item, each with its hand-written baseline (for the fan-out,
   the baseline sends each int into 4 streams).
4. For reference: the serial engine on the 2-stage pipeline.
5. The worker-based engine on a ``redis-server`` this script starts (no
   persistence, a free port on 127.0.0.1), in this process: the 2-stage
   pipeline (``count`` leaf) with per-item ``await emit(i)`` and with
   ``emit.many`` (chunks of 1,000), ``--redis-items`` (100,000) each, against
   a hand-written coredis producer/consumer on the same Redis: a producer
   task sending ``XADD`` per item (JSON, pipelined 500 at a time) and a
   consumer task reading ``XREADGROUP`` batches of up to 1,000, calling the
   same ``count`` and acknowledging each batch with one ``XACK``. Goals:
   >= 0.8x that loop, and >= 100,000 items/s with ``emit.many``.
   ``--no-redis`` skips them.

    python bench/pipeline.py [--repeat 5] [--items 1000000] [--redis-items 100000] [--no-redis]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from _redis_server import RedisServer
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from nacelle_py.base import Pipeline, Stage

BUFFER = 1024
CHUNK = 1000


class Counter:
    """What the leaves count, checked after every run."""

    def __init__(self) -> None:
        self.n = 0

    async def count(self, msg: Any) -> None:
        self.n += 1

    async def count_batch(self, msgs: list[Any]) -> None:
        self.n += len(msgs)


def numbers(n: int) -> Callable[[Any], Awaitable[None]]:
    async def root(emit: Any) -> None:
        for i in range(n):
            await emit(i)

    return root


def chunks(n: int) -> Callable[[Any], Awaitable[None]]:
    async def root(emit: Any) -> None:
        many = emit.many
        for start in range(0, n, CHUNK):
            await many(range(start, min(start + CHUNK, n)))

    return root


async def inc(msg: int, emit: Any) -> None:
    await emit(msg + 1)


# -- the pipelines -------------------------------------------------------------------------


async def run_pipeline(roots: list[Stage], engine: str = "parallel") -> None:
    await Pipeline(roots, engine=engine).run()


def two_stage(n: int, c: Counter) -> list[Stage]:
    return [Stage("numbers", numbers(n), children=[Stage("count", c.count)])]


def two_stage_many(n: int, c: Counter) -> list[Stage]:
    return [Stage("numbers", chunks(n), children=[Stage("count", c.count_batch, batch=True)])]


def two_stage_many_per_item(n: int, c: Counter) -> list[Stage]:
    return [Stage("numbers", chunks(n), children=[Stage("count", c.count)])]


def chain(n: int, c: Counter) -> list[Stage]:
    leaf = Stage("count", c.count)
    return [Stage("numbers", numbers(n), children=[Stage("inc1", inc, [Stage("inc2", inc, [leaf])])])]


def fan_out(n: int, c: Counter) -> list[Stage]:
    return [Stage("numbers", numbers(n), children=[Stage(f"count{i}", c.count) for i in range(4)])]


# -- the hand-written baselines ------------------------------------------------------------


async def _send(stream: ObjectSendStream[Any], item: Any) -> None:
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


async def _consume(stream: ObjectReceiveStream[Any], handle: Callable[[Any], Awaitable[None]]) -> None:
    async with stream:
        while True:
            try:
                msg = stream.receive_nowait()
            except anyio.WouldBlock:
                try:
                    msg = await stream.receive()
                except anyio.EndOfStream:
                    return
            except anyio.EndOfStream:
                return
            await handle(msg)


async def baseline(n: int, c: Counter, inner: int = 0, fan: int = 1) -> None:
    """``inner`` inc stages in a chain, then ``fan`` count leaves, over memory streams."""
    async with anyio.create_task_group() as tg:
        sends: list[ObjectSendStream[Any]] = []
        for _ in range(fan):
            send, receive = anyio.create_memory_object_stream[Any](BUFFER)
            tg.start_soon(_consume, receive, c.count)
            sends.append(send)
        for _ in range(inner):
            send, receive = anyio.create_memory_object_stream[Any](BUFFER)
            downstream = sends[0]

            async def relay(msg: int, downstream: ObjectSendStream[Any] = downstream) -> None:
                await inc(msg, lambda item: _send(downstream, item))

            async def stage(receive: ObjectReceiveStream[Any], downstream: ObjectSendStream[Any], relay: Any) -> None:
                async with downstream:
                    await _consume(receive, relay)

            tg.start_soon(stage, receive, downstream, relay)
            sends = [send]

        async def emit(item: int) -> None:
            for send in sends:
                try:
                    send.send_nowait(item)
                except anyio.WouldBlock:
                    await send.send(item)

        await numbers(n)(emit)
        for send in sends:
            send.close()


# -- the worker-based engine and its hand-written coredis baseline -------------------------


class OnRedis:
    """The worker-based rows: a namespace (or stream) of their own per run, on one server."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.runs = 0

    def fresh(self) -> str:
        self.runs += 1
        return f"bench:{self.runs}"

    async def pipeline(self, roots: list[Stage]) -> None:
        await Pipeline(roots, engine="worker-based", redis_url=self.server.url, namespace=self.fresh()).run()

    async def by_hand(self, n: int, c: Counter) -> None:
        """XADD per item (pipelined), XREADGROUP batches, one XACK per batch: what one writes by hand."""
        import json

        import coredis

        stream, group = self.fresh(), "count"
        client = coredis.Redis.from_url(self.server.url, decode_responses=False)
        async with client:
            await client.xgroup_create(stream, group, identifier="0", mkstream=True)

            async def produce() -> None:
                for start in range(0, n, 500):
                    async with client.pipeline(transaction=False) as pipe:
                        for i in range(start, min(start + 500, n)):
                            pipe.xadd(stream, {"m": json.dumps(i)})

            async def consume() -> None:
                seen = 0
                while seen < n:
                    reply = await client.xreadgroup(group, "c1", streams={stream: ">"}, count=1000, block=100)
                    if not reply:
                        continue
                    entries = next(iter(reply.values()))
                    for entry in entries:
                        await c.count(json.loads(entry.field_values[b"m"]))
                    await client.xack(stream, group, [entry.identifier for entry in entries])
                    seen += len(entries)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await produce()


# -- the runs ------------------------------------------------------------------------------


def _redis_cases(on: OnRedis, n: int) -> dict[str, tuple[Callable[[Counter], Awaitable[None]], int]]:
    return {
        "worker-based 2-stage": (lambda c: on.pipeline(two_stage(n, c)), n),
        "worker-based 2-stage emit.many": (lambda c: on.pipeline(two_stage_many_per_item(n, c)), n),
        "coredis by hand": (lambda c: on.by_hand(n, c), n),
    }


def _cases(n: int) -> dict[str, tuple[Callable[[Counter], Awaitable[None]], int]]:
    """name -> (run with a fresh counter, messages counted per run)."""
    return {
        "2-stage": (lambda c: run_pipeline(two_stage(n, c)), n),
        "2-stage baseline": (lambda c: baseline(n, c), n),
        "2-stage emit.many, batch leaf": (lambda c: run_pipeline(two_stage_many(n, c)), n),
        "2-stage emit.many, per-item leaf": (lambda c: run_pipeline(two_stage_many_per_item(n, c)), n),
        "4-stage chain": (lambda c: run_pipeline(chain(n, c)), n),
        "4-stage chain baseline": (lambda c: baseline(n, c, inner=2), n),
        "fan-out 1 -> 4": (lambda c: run_pipeline(fan_out(n, c)), 4 * n),
        "fan-out 1 -> 4 baseline": (lambda c: baseline(n, c, fan=4), 4 * n),
        "2-stage, serial engine": (lambda c: run_pipeline(two_stage(n, c), "serial"), n),
    }


async def main(repeat: int, n: int, on: OnRedis | None, redis_n: int) -> None:
    cases = _cases(n)
    if on is not None:
        cases.update(_redis_cases(on, redis_n))
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(repeat + 1):
        for name, (run, expected) in cases.items():
            counter = Counter()
            started = time.perf_counter()
            await run(counter)
            elapsed = time.perf_counter() - started
            assert counter.n == expected, (name, counter.n, expected)
            if round_:  # round 0 warms up
                rates[name].append(expected / elapsed)
    median = {name: statistics.median(values) for name, values in rates.items()}
    width = max(map(len, median)) + 1
    for name, rate in median.items():
        unit = "items/s" if "many" in name else "messages/s"
        print(f"{name + ':':<{width}} {rate / 1e6:6.2f} M {unit}")
    print(f"goal per item >= 2.00 M messages/s: {median['2-stage'] / 1e6:.2f} M")
    print(f"goal emit.many >= 10.00 M items/s: {median['2-stage emit.many, batch leaf'] / 1e6:.2f} M")
    print(f"ratio 4-stage chain pipeline/baseline: {median['4-stage chain'] / median['4-stage chain baseline']:.2f}x")
    print(f"ratio fan-out pipeline/baseline: {median['fan-out 1 -> 4'] / median['fan-out 1 -> 4 baseline']:.2f}x")
    print(f"ratio 2-stage pipeline/baseline: {median['2-stage'] / median['2-stage baseline']:.2f}x (goal >= 0.8x)")
    if on is not None:
        by_hand = median["coredis by hand"]
        many = median["worker-based 2-stage emit.many"]
        print(f"goal worker-based emit.many >= 100,000 items/s: {many:,.0f}")
        print(
            f"ratio worker-based 2-stage per item/coredis by hand: {median['worker-based 2-stage'] / by_hand:.2f}x "
            "(goal >= 0.8x)"
        )
        print(f"ratio worker-based 2-stage emit.many/coredis by hand: {many / by_hand:.2f}x (goal >= 0.8x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--redis-items", type=int, default=100_000)
    parser.add_argument("--no-redis", action="store_true", help="skip the worker-based rows (no redis-server)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"backend: asyncio, {args.items:,} items, repetitions: {args.repeat} after a warm-up (median)")
    server = None if args.no_redis else RedisServer()
    try:
        if server is not None:
            print(
                f"worker-based rows: redis-server {server.version} on 127.0.0.1:{server.port}, "
                f"{args.redis_items:,} items"
            )
        anyio.run(main, args.repeat, args.items, None if server is None else OnRedis(server), args.redis_items)
    finally:
        if server is not None:
            server.stop()
