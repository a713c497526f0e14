"""Boot to healthy and unwind 1,000 no-op processes in 10 priorities, against bare anyio.

The baseline starts the same 1,000 tasks with anyio alone, 100 per step, waits
until each step's tasks have started, then cancels them all. nacelle_py does the
same work plus injection, the health wait, stop by descending priority and
finalize. Both run in this process, alternately, on the same backend; the
figure is the median of the repetitions and the ratio is nacelle / bare
(goal: <= 2x). Lifecycle logging is turned down to warnings (``LOG_LEVEL``): a
second figure with info logging to a discarded stream shows what the log lines
cost.

    python bench/boot.py [--backend asyncio|trio] [--repeat 15]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

import anyio

from nacelle_py import App, Process

PROCESSES = 1000
PRIORITIES = 10


class NoOp(Process):
    async def run(self) -> None:
        await anyio.sleep_forever()


async def bare() -> None:
    per_step = PROCESSES // PRIORITIES
    async with anyio.create_task_group() as tg:
        for _ in range(PRIORITIES):
            started = 0
            all_started = anyio.Event()

            async def task() -> None:
                nonlocal started
                started += 1
                if started == per_step:
                    all_started.set()
                await anyio.sleep_forever()

            for _ in range(per_step):
                tg.start_soon(task)
            await all_started.wait()
        tg.cancel_scope.cancel()


def build(log_level: str) -> App:
    """The app under test; building and registering are not part of the timed boot."""
    os.environ["BENCH_LOG_LEVEL"] = log_level
    app = App("bench", handle_signals=False, log_stream=io.StringIO())
    for i in range(PROCESSES):
        app.register(NoOp(), name=f"noop-{i}", priority=i % PRIORITIES)
    app.on_ready(app.shutdown)
    return app


async def serve(app: App) -> None:
    status = await app.serve()
    assert status == 0, app.errors


async def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    await fn(*args)
    return time.perf_counter() - started


async def main(repeat: int) -> None:
    figures: dict[str, list[float]] = {"bare": [], "nacelle": [], "nacelle+info": []}
    for _ in range(2):  # warm-up: imports, code paths, allocator
        await bare()
        await serve(build("warning"))
    for _ in range(repeat):
        figures["bare"].append(await timed(bare))
        figures["nacelle"].append(await timed(serve, build("warning")))
        figures["nacelle+info"].append(await timed(serve, build("info")))
    median = {k: statistics.median(v) for k, v in figures.items()}
    print(f"bare anyio, start + cancel {PROCESSES} tasks in {PRIORITIES} steps: {median['bare'] * 1000:8.2f} ms")
    print(f"nacelle_py boot to healthy + unwind (LOG_LEVEL=warning):  {median['nacelle'] * 1000:8.2f} ms")
    print(f"nacelle_py boot to healthy + unwind (LOG_LEVEL=info):     {median['nacelle+info'] * 1000:8.2f} ms")
    print(f"ratio nacelle/bare (info logging): {median['nacelle+info'] / median['bare']:.2f}x")
    print(f"ratio nacelle/bare: {median['nacelle'] / median['bare']:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(f"backend: {args.backend}, repetitions: {args.repeat} (median)")
    anyio.run(main, args.repeat, backend=args.backend)
