"""The floor of bench/boot.py's goal: bare anyio against the least a supervisor keeps per process.

``bench/boot.py`` sets nacelle_py against bare anyio. This script asks how
close any pure-Python supervisor can get: ``minimal()`` keeps per process only
what docs/lifecycle.md and the ops endpoint promise about a component, with
nothing else (no settings, injection, health keys, logging, error records or
restart decisions): a record whose state moves through the lifecycle, the handle
of its run, its start time and run/stop durations, a countdown per priority
group to wait for its runs to begin and to end, and a stop by descending
priority. Against bench/boot.py's own ``bare()`` (imported), alternating with
it in one process, each the median of the repetitions.

    python bench/boot_floor.py [--backend asyncio|trio] [--repeat 15]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import anyio
from boot import PRIORITIES as P
from boot import PROCESSES as N
from boot import bare  # the baseline itself, not a copy


class Entry:
    __slots__ = ("name", "state", "timings", "handle")

    def __init__(self, name):
        self.name = name
        self.state = "registered"
        self.timings = {}
        self.handle = None

    def move(self, to):
        self.state = to


class Handle:
    __slots__ = ("entry", "ended", "countdown")

    def __init__(self, entry):
        self.entry = entry
        self.ended = False
        self.countdown = None


class Countdown:
    __slots__ = ("count", "event")

    def __init__(self, n):
        self.count = n
        self.event = anyio.Event()

    def done(self):
        self.count -= 1
        if self.count == 0:
            self.event.set()


async def run_one(h, starting):
    e = h.entry
    t = time.perf_counter()
    try:
        e.move("running")
        e.timings["started_at"] = time.time()
        starting.done()
        await anyio.sleep_forever()
    finally:
        e.move("stopped")
        e.timings["run_ms"] = round((time.perf_counter() - t) * 1000, 3)
        h.ended = True
        h.countdown.done()


async def minimal():
    entries = [Entry(f"p{i}") for i in range(N)]
    groups = [[e for j, e in enumerate(entries) if j % P == p] for p in range(P)]
    scopes = []
    async with anyio.create_task_group() as tg:
        for g in groups:
            for e in g:
                e.move("initializing")
                e.move("initialized")
            starting = Countdown(len(g))
            scope = anyio.CancelScope()
            hs = [Handle(e) for e in g]
            for h in hs:
                h.entry.handle = h

            async def host(scope=scope, hs=hs, starting=starting):
                with scope:
                    async with anyio.create_task_group() as inner:
                        for h in hs:
                            inner.start_soon(run_one, h, starting)

            tg.start_soon(host)
            await starting.event.wait()
            scopes.append((scope, hs))
        for scope, hs in reversed(scopes):
            cd = Countdown(len(hs))
            for h in hs:
                h.countdown = cd
                h.entry.move("stopping")
            t = time.perf_counter()
            scope.cancel()
            await cd.event.wait()
            for h in hs:
                h.entry.timings["stop_ms"] = round((time.perf_counter() - t) * 1000, 3)
        for e in reversed(entries):
            e.move("finalized")


async def main(repeat: int) -> None:
    r: dict[str, list[float]] = {"bare": [], "minimal": []}
    for _ in range(repeat + 2):  # two warm-up rounds
        for k, f in (("bare", bare), ("minimal", minimal)):
            gc.collect()
            t = time.perf_counter()
            await f()
            r[k].append(time.perf_counter() - t)
    b = statistics.median(r["bare"][2:])
    m = statistics.median(r["minimal"][2:])
    print(f"{N} no-op processes in {P} priorities, boot + unwind, median of {repeat}:")
    print(f"  bare anyio                                   {b * 1000:7.2f} ms")
    print(f"  minimal pure-Python supervisor (the floor)   {m * 1000:7.2f} ms")
    print(f"  floor/bare {m / b:.2f}x (bench/boot.py's goal for nacelle_py: <= 1.2x at warning level)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--repeat", type=int, default=15)
    options = parser.parse_args()
    print(f"backend: {options.backend}")
    anyio.run(main, options.repeat, backend=options.backend)
