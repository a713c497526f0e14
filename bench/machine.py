"""Machine spawn rate and pub/sub fan-out against bare anyio, in one run.

On the asyncio backend, in one process, each case and its baseline
alternate (after a warm-up round) so that machine noise falls on both; each
figure is the median of the repetitions.

1. Spawn: ``--routines`` (50,000) short routines (``async def noop(): pass``)
   started with ``await m.go(noop)`` inside ``async with Machine()``, timed
   until the block has waited for every one of them; the baseline starts
   the same function with ``tg.start_soon`` in a bare anyio task group.
   Goal: >= 0.5x the baseline. Also printed: ``try_go`` and ``go`` with a
   limit of 64 routines at once (backpressure on every spawn past 64).
2. Fan-out: ``--messages`` (100,000) ints published to a channel with 10
   subscribers, each counting in a plain handler; timed until every
   subscriber has counted every message (10 deliveries per message). The
   baseline: 10 anyio memory object streams (buffer 1024, the subscriptions'
   default), ``send_nowait`` into each (``await send()`` only when full),
   10 consumer tasks receiving with ``receive_nowait`` (``await receive()``
   only when empty). Goal: >= 1,000,000 deliveries/s. ``publish`` takes the
   nowait path (append, wake a sleeping subscriber) unless a buffer is full.
   Also printed: the same with async handlers.

    python bench/machine.py [--repeat 5] [--routines 50000] [--messages 100000]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio
import structlog
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from nacelle_py.base import Machine

SUBSCRIBERS = 10
BUFFER = 1024


async def noop() -> None:
    pass


async def spawn_machine(n: int) -> int:
    async with Machine() as m:
        go = m.go
        for _ in range(n):
            await go(noop)
    return m.stats().total


async def spawn_try_go(n: int) -> int:
    async with Machine() as m:
        try_go = m.try_go
        for _ in range(n):
            try_go(noop)
    return m.stats().total


async def spawn_throttled(n: int) -> int:
    async with Machine(max_routines=64) as m:
        go = m.go
        for _ in range(n):
            await go(noop)
    return m.stats().total


async def spawn_bare(n: int) -> int:
    async with anyio.create_task_group() as tg:
        start = tg.start_soon
        for _ in range(n):
            start(noop)
    return n


class Counts:
    def __init__(self) -> None:
        self.n = 0

    def count(self, msg: object) -> None:
        self.n += 1

    async def count_async(self, msg: object) -> None:
        self.n += 1


async def fan_out_machine(n: int, mode: str = "publish") -> int:
    counts = [Counts() for _ in range(SUBSCRIBERS)]
    async with Machine() as m:
        for c in counts:
            m.subscribe("bench.numbers", c.count_async if mode == "async handlers" else c.count)
        publish = m.publish
        for i in range(n):
            await publish("bench.numbers", i)
    return sum(c.n for c in counts)


async def fan_out_bare(n: int) -> int:
    counts = [Counts() for _ in range(SUBSCRIBERS)]

    async def consume(receive: ObjectReceiveStream[int], c: Counts) -> None:
        count = c.count
        async with receive:
            while True:
                try:
                    msg = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        msg = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                count(msg)

    async with anyio.create_task_group() as tg:
        sends: list[ObjectSendStream[int]] = []
        for c in counts:
            send, receive = anyio.create_memory_object_stream[int](BUFFER)
            sends.append(send)
            tg.start_soon(consume, receive, c)
        for i in range(n):
            for send in sends:
                try:
                    send.send_nowait(i)
                except anyio.WouldBlock:
                    await send.send(i)
        for send in sends:
            await send.aclose()
    return sum(c.n for c in counts)


def _cases(routines: int, messages: int) -> dict[str, tuple[Callable[[], Awaitable[int]], int]]:
    deliveries = messages * SUBSCRIBERS
    return {
        "spawn, go()": (lambda: spawn_machine(routines), routines),
        "spawn, bare task group": (lambda: spawn_bare(routines), routines),
        "spawn, try_go()": (lambda: spawn_try_go(routines), routines),
        "spawn, go() with max_routines=64": (lambda: spawn_throttled(routines), routines),
        "fan-out to 10, publish()": (lambda: fan_out_machine(messages), deliveries),
        "fan-out to 10, bare memory streams": (lambda: fan_out_bare(messages), deliveries),
        "fan-out to 10, async handlers": (lambda: fan_out_machine(messages, "async handlers"), deliveries),
    }


async def main(repeat: int, routines: int, messages: int) -> None:
    cases = _cases(routines, messages)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(repeat + 1):
        for name, (run, expected) in cases.items():
            started = time.perf_counter()
            got = await run()
            elapsed = time.perf_counter() - started
            assert got == expected, (name, got, expected)
            if round_:  # round 0 warms up
                rates[name].append(expected / elapsed)
    median = {name: statistics.median(values) for name, values in rates.items()}
    width = max(map(len, median)) + 1
    for name, rate in median.items():
        unit = "routines/s" if name.startswith("spawn") else "deliveries/s"
        print(f"{name + ':':<{width}} {rate / 1e6:6.3f} M {unit}")
    fan = median["fan-out to 10, publish()"]
    print(f"goal fan-out to 10 >= 1.00 M deliveries/s: {fan / 1e6:.2f} M")
    print(f"ratio fan-out publish()/bare memory streams: {fan / median['fan-out to 10, bare memory streams']:.2f}x")
    spawn = median["spawn, go()"] / median["spawn, bare task group"]
    print(f"ratio spawn go()/bare task group: {spawn:.2f}x (goal >= 0.5x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--routines", type=int, default=50_000)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(
        f"backend: asyncio, {args.routines:,} routines, {args.messages:,} messages to {SUBSCRIBERS} subscribers, "
        f"repetitions: {args.repeat} after a warm-up (median)"
    )
    anyio.run(main, args.repeat, args.routines, args.messages)
