"""Dispatcher throughput and latency against hand-written pools.

Four measurements, each run in this process on the asyncio backend, with
the dispatcher and its baseline alternating (a warm-up round first) so that
machine noise falls on both; every figure is the median of the repetitions.

1. Async no-op tasks (``async def noop(): pass``), ``--tasks`` of them
   (200,000 by default). The dispatcher runs a fixed 16 workers
   (``min_workers=max_workers=16``, ``max_buffered`` = the task count); the
   baseline is 16 worker tasks over an ``asyncio.Queue``
   (``put_nowait`` everything, each worker does ``await q.get(); await task();
   q.task_done()``, then ``await q.join()``). Both pools are started before
   the clock starts; the timed region covers dispatching every task through
   the last outcome (``Dispatcher.join()`` / ``Queue.join()``). Goal:
   dispatcher/baseline >= 1.0x, although the dispatcher adds per-task
   timeouts, outcome counting, latency sampling and autoscaling.
2. A bounded buffer: a producer that ``await submit()``s the same ``--tasks``
   into ``max_buffered=1024`` (16 workers), so it waits for room over and
   over, against 16 workers over ``asyncio.Queue(1024)`` fed with
   ``await q.put()``. Goal: >= 1.0x.
3. Plain-function no-op tasks, ``--sync-tasks`` of them (50,000 by default),
   through the dispatcher (which runs them on its own pool of
   ``max_threads=16`` threads) against ``ThreadPoolExecutor(16).submit``
   (then the result of every future). Both pools are fresh each time, so both
   start their threads inside the timed region. Goal: >= 1.0x.
4. Dispatch-to-start latency, p50 and p99, from ``stats().latency_p50`` /
   ``latency_p99`` (the dispatcher samples one task in 16 and keeps the most
   recent 4,096 samples). Under load: after the async run of measurement 1,
   where every task is dispatched in one burst before any starts, so the
   figure is queueing latency (the samples kept are those of the last ~65,000
   tasks, the ones that waited longest). Under light load: 2,000 tasks
   dispatched one at a time with ``await anyio.sleep(0)`` between them.

The dispatcher logs its status changes through structlog's default logger
when used standalone; the bench turns that logger down to warnings.

    python bench/dispatcher.py [--repeat 5] [--tasks 200000] [--sync-tasks 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
import structlog

from nacelle_py.base import Dispatcher

WORKERS = 16
LIGHT_TASKS = 2000
BOUNDED = 1024
THROUGHPUT = ("async", "async baseline", "bounded", "bounded baseline", "sync", "sync baseline")


async def noop() -> None:
    pass


def noop_sync() -> None:
    pass


# -- async tasks -----------------------------------------------------------------------


async def dispatcher_async(tasks: int) -> tuple[float, float | None, float | None]:
    """Seconds from the first dispatch to the last outcome, and the p50 / p99 latency after it."""
    async with Dispatcher(max_buffered=tasks, min_workers=WORKERS, max_workers=WORKERS) as d:
        dispatch = d.dispatch
        started = time.perf_counter()
        for _ in range(tasks):
            dispatch(noop)
        await d.join()
        elapsed = time.perf_counter() - started
        stats = d.stats()
    assert stats.completed == tasks and stats.accepted == tasks, stats
    return elapsed, stats.latency_p50, stats.latency_p99


async def queue_baseline(tasks: int, maxsize: int, *, wait_for_room: bool) -> float:
    """Seconds for 16 hand-written workers over an ``asyncio.Queue(maxsize)`` to run every task.

    The producer uses ``put_nowait`` (unbounded) or ``await put()`` (waiting for room).
    """
    queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(maxsize)
    done = 0

    async def worker() -> None:
        nonlocal done
        get, task_done = queue.get, queue.task_done
        while True:
            task = await get()
            await task()
            done += 1
            task_done()

    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    await asyncio.sleep(0)  # let the workers start, as the dispatcher's have
    started = time.perf_counter()
    if wait_for_room:
        put = queue.put
        for _ in range(tasks):
            await put(noop)
    else:
        put_nowait = queue.put_nowait
        for _ in range(tasks):
            put_nowait(noop)
    await queue.join()
    elapsed = time.perf_counter() - started
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert done == tasks
    return elapsed


# -- a bounded buffer: the producer waits for room ---------------------------------------


async def dispatcher_bounded(tasks: int) -> float:
    """Seconds for a producer that ``await submit()``s every task into a buffer of BOUNDED."""
    async with Dispatcher(max_buffered=BOUNDED, min_workers=WORKERS, max_workers=WORKERS) as d:
        submit = d.submit
        started = time.perf_counter()
        for _ in range(tasks):
            await submit(noop)
        await d.join()
        elapsed = time.perf_counter() - started
        stats = d.stats()
    assert stats.completed == tasks and stats.rejected == 0, stats
    return elapsed


# -- plain functions on threads --------------------------------------------------------


async def dispatcher_sync(tasks: int) -> float:
    async with Dispatcher(max_buffered=tasks, min_workers=WORKERS, max_workers=WORKERS, max_threads=WORKERS) as d:
        dispatch = d.dispatch
        started = time.perf_counter()
        for _ in range(tasks):
            dispatch(noop_sync)
        await d.join()
        elapsed = time.perf_counter() - started
        stats = d.stats()
    assert stats.completed == tasks, stats
    return elapsed


async def baseline_sync(tasks: int) -> float:
    with ThreadPoolExecutor(WORKERS) as executor:
        submit = executor.submit
        started = time.perf_counter()
        futures = [submit(noop_sync) for _ in range(tasks)]
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
    return elapsed


# -- latency under light load ----------------------------------------------------------


async def dispatcher_light() -> tuple[float | None, float | None]:
    async with Dispatcher(max_buffered=LIGHT_TASKS, min_workers=WORKERS, max_workers=WORKERS) as d:
        for _ in range(LIGHT_TASKS):
            d.dispatch(noop)
            await anyio.sleep(0)
        await d.join()
        stats = d.stats()
    assert stats.completed == LIGHT_TASKS, stats
    return stats.latency_p50, stats.latency_p99


def us(seconds: float | None) -> str:
    return "       n/a" if seconds is None else f"{seconds * 1e6:10.1f} µs"


def rate(per_second: float) -> str:
    return f"{per_second:10,.0f} tasks/s"


async def main(repeat: int, tasks: int, sync_tasks: int) -> None:
    figures: dict[str, list[float]] = {name: [] for name in (*THROUGHPUT, "p50", "p99", "light p50", "light p99")}
    for round_ in range(repeat + 1):  # round 0 is the warm-up: imports, code paths, allocator
        async_time, p50, p99 = await dispatcher_async(tasks)
        async_base = await queue_baseline(tasks, 0, wait_for_room=False)
        bounded_time = await dispatcher_bounded(tasks)
        bounded_base = await queue_baseline(tasks, BOUNDED, wait_for_room=True)
        sync_time = await dispatcher_sync(sync_tasks)
        sync_base = await baseline_sync(sync_tasks)
        light_p50, light_p99 = await dispatcher_light()
        if round_ == 0:
            continue
        figures["async"].append(tasks / async_time)
        figures["async baseline"].append(tasks / async_base)
        figures["bounded"].append(tasks / bounded_time)
        figures["bounded baseline"].append(tasks / bounded_base)
        figures["sync"].append(sync_tasks / sync_time)
        figures["sync baseline"].append(sync_tasks / sync_base)
        for name, value in (("p50", p50), ("p99", p99), ("light p50", light_p50), ("light p99", light_p99)):
            if value is not None:
                figures[name].append(value)
    median = {k: statistics.median(v) for k, v in figures.items() if k in THROUGHPUT}
    latency = {k: statistics.median(v) if v else None for k, v in figures.items() if k not in THROUGHPUT}
    lines = [
        (f"dispatcher, {tasks:,} async no-op tasks, {WORKERS} workers", rate(median["async"])),
        (f"asyncio.Queue + {WORKERS} workers, {tasks:,} async no-op tasks", rate(median["async baseline"])),
        (f"dispatcher, {tasks:,} awaited submit()s into max_buffered={BOUNDED}", rate(median["bounded"])),
        (f"asyncio.Queue({BOUNDED}) + await put(), {tasks:,} tasks", rate(median["bounded baseline"])),
        (f"dispatcher, {sync_tasks:,} plain no-op functions, {WORKERS} threads", rate(median["sync"])),
        (f"ThreadPoolExecutor({WORKERS}).submit, {sync_tasks:,} no-op functions", rate(median["sync baseline"])),
        (f"dispatch-to-start p50, {tasks:,} dispatched in a burst (queueing)", us(latency["p50"])),
        (f"dispatch-to-start p99, {tasks:,} dispatched in a burst (queueing)", us(latency["p99"])),
        (f"dispatch-to-start p50, {LIGHT_TASKS:,} dispatched one per loop turn", us(latency["light p50"])),
        (f"dispatch-to-start p99, {LIGHT_TASKS:,} dispatched one per loop turn", us(latency["light p99"])),
    ]
    width = max(len(label) for label, _ in lines) + 1
    for label, figure in lines:
        print(f"{label + ':':<{width}} {figure}")
    sync_ratio = median["sync"] / median["sync baseline"]
    async_ratio = median["async"] / median["async baseline"]
    print(f"ratio dispatcher/ThreadPoolExecutor (sync): {sync_ratio:.2f}x (goal >= 1.0x)")
    bounded_ratio = median["bounded"] / median["bounded baseline"]
    print(f"ratio dispatcher/asyncio.Queue (async): {async_ratio:.2f}x (goal >= 1.0x)")
    print(
        f"ratio dispatcher/asyncio.Queue({BOUNDED}) (bounded, await submit vs await put): "
        f"{bounded_ratio:.2f}x (goal >= 1.0x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions after one warm-up round (median)")
    parser.add_argument("--tasks", type=int, default=200_000, help="async no-op tasks per run")
    parser.add_argument("--sync-tasks", type=int, default=50_000, help="plain no-op functions per run")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"backend: asyncio, repetitions: {args.repeat} after a warm-up (median)")
    anyio.run(main, args.repeat, args.tasks, args.sync_tasks, backend="asyncio")
