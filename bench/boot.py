"""Boot to healthy and unwind 1,000 no-op processes, against bare anyio and aiomisc's entrypoint.

Three systems do the same job, 1,000 units of work that each start and then
wait forever, are started until every one is up, then all are ended:

- bare anyio: the same 1,000 tasks in one task group, 100 per step (10 steps,
  like the 10 priorities), waiting until each step's tasks have started, then
  one cancel of the whole group.
- aiomisc (asyncio only): 1,000 ``aiomisc.Service`` subclasses whose
  ``start()`` sets ``self.start_event`` and then waits forever, run by
  ``aiomisc.entrypoint(*services, log_config=False, catch_signals=())``.
  Entering the entrypoint starts every service and returns once each has set
  its ``start_event``; leaving it is aiomisc's graceful shutdown (the start
  tasks cancelled, every ``stop()`` awaited). aiomisc has no priorities: it
  starts all 1,000 at once and stops them at once, so it does less ordering
  work than the other two. It logs nothing per service at info or warning
  level, so it has one figure for both.
- nacelle_py: 1,000 processes (``run`` waits forever, no ``stop``) in 10
  priorities; ``serve()`` loads settings, injects, starts each priority
  group's runs, waits until the group is healthy, and once the app is ready
  (``on_ready(app.shutdown)``) stops by descending priority and finalizes.
  Once at ``LOG_LEVEL=warning`` and once at ``LOG_LEVEL=info``, the log
  written to a discarded stream; at info each process writes two lines.

The run bodies are the same everywhere (``anyio.sleep_forever()``). Building
the ``App`` and registering its components, and building the services and the
entrypoint, are outside the timed part; a ``gc.collect()`` before each timed
run keeps one system's garbage from being collected on another's clock.

Two sets of figures, every system alternating with the others in this one
process (two warm-up rounds first), each the median of the repetitions:

1. In the running loop (the goals): each is awaited on the loop of this
   ``anyio.run``: ``bare()``, ``async with entrypoint``, ``await app.serve()``.
   aiomisc's entrypoint adopts the running loop when entered with
   ``async with`` (it then creates no loop and no thread pool), so the three
   are measured the same way. Goals: nacelle <= 1.0x aiomisc and
   <= 1.2x bare at warning level, <= 1.5x bare at info level.
2. On a loop of their own, timed from the outside (cross-check, warning
   level): ``with entrypoint(...)``, aiomisc's usual form, creates its loop
   and its thread pool (two threads), starts, stops and closes them; set
   against ``anyio.run(bare)`` and ``anyio.run(app.serve)``, which create and
   close a loop too. Each runs in a worker thread while this loop waits, as
   one thread cannot run two loops at once.

Without aiomisc installed (it is in the ``bench`` extra), or on trio, the
aiomisc rows are skipped and say so.

    python bench/boot.py [--backend asyncio|trio] [--repeat 15]
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import os
import statistics
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread

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
    os.environ["BENCH_LOG_LEVEL"] = log_level  # read when serve() loads the settings
    app = App("bench", handle_signals=False, log_stream=io.StringIO())
    for i in range(PROCESSES):
        app.register(NoOp(), name=f"noop-{i}", priority=i % PRIORITIES)
    app.on_ready(app.shutdown)
    return app


async def serve(app: App) -> None:
    status = await app.serve()
    assert status == 0, app.errors


# -- aiomisc ------------------------------------------------------------------------


def load_aiomisc(backend: str) -> tuple[ModuleType | None, str]:
    """aiomisc and its version; or None and why its rows are skipped (not installed, or not asyncio)."""
    if backend != "asyncio":
        return None, f"aiomisc: skipped (asyncio only; this run is on {backend})"
    try:
        import aiomisc
    except ImportError:
        return None, "aiomisc: skipped (not installed; pip install aiomisc, or the bench extra)"
    from importlib.metadata import version

    return aiomisc, version("aiomisc")


@functools.cache
def forever_service(aiomisc: ModuleType) -> type:
    """The aiomisc counterpart of ``NoOp`` (defined once aiomisc is imported)."""

    class Forever(aiomisc.Service):  # type: ignore[name-defined,misc]
        async def start(self) -> None:
            self.start_event.set()  # started: the entrypoint stops waiting for this one
            await anyio.sleep_forever()

    return Forever


def aiomisc_entrypoint(aiomisc: ModuleType) -> Any:
    """1,000 services that set ``start_event`` and run forever, in an entrypoint not yet entered."""
    services = [forever_service(aiomisc)() for _ in range(PROCESSES)]
    # No logging set-up (it would replace the root logger's handlers with a buffered one)
    # and no signal handlers, like the app's handle_signals=False.
    return aiomisc.entrypoint(*services, log_config=False, catch_signals=())


async def aiomisc_in_loop(entrypoint: Any) -> None:
    async with entrypoint:  # starts every service; leaving it is the graceful shutdown
        pass


def aiomisc_own_loop(entrypoint: Any) -> None:
    with entrypoint:  # a loop and a thread pool of its own, closed on the way out
        pass


# -- timing -------------------------------------------------------------------------


async def timed(fn: Callable[..., Any], *args: Any) -> float:
    gc.collect()
    started = time.perf_counter()
    await fn(*args)
    return time.perf_counter() - started


async def timed_own_loop(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds for ``fn(*args)`` (which runs a loop of its own) in a worker thread, timed there."""

    def run() -> float:
        started = time.perf_counter()
        fn(*args)
        return time.perf_counter() - started

    gc.collect()
    return await anyio.to_thread.run_sync(run)


async def main(repeat: int, backend: str, aiomisc: ModuleType | None) -> dict[str, float]:
    def own_loop_bare() -> None:
        anyio.run(bare, backend=backend)

    def own_loop_serve(app: App) -> None:
        anyio.run(serve, app, backend=backend)

    figures: dict[str, list[float]] = {}
    for round_ in range(-2, repeat):  # two warm-up rounds: imports, code paths, allocator
        row: dict[str, float] = {}
        row["bare"] = await timed(bare)
        if aiomisc is not None:
            row["aiomisc"] = await timed(aiomisc_in_loop, aiomisc_entrypoint(aiomisc))
        row["nacelle"] = await timed(serve, build("warning"))
        row["nacelle+info"] = await timed(serve, build("info"))
        row["own bare"] = await timed_own_loop(own_loop_bare)
        if aiomisc is not None:
            row["own aiomisc"] = await timed_own_loop(aiomisc_own_loop, aiomisc_entrypoint(aiomisc))
        row["own nacelle"] = await timed_own_loop(own_loop_serve, build("warning"))
        if round_ >= 0:
            for key, seconds in row.items():
                figures.setdefault(key, []).append(seconds)
    return {key: statistics.median(values) for key, values in figures.items()}


def report(median: dict[str, float], skipped: str | None) -> None:
    def line(label: str, key: str) -> None:
        print(f"  {label:<58} {median[key] * 1000:8.2f} ms")

    def ratio(key: str, base: str) -> str:
        return f"{median[key] / median[base]:.2f}x" if base in median else "-"

    print(f"{PROCESSES} no-op processes, boot to healthy + unwind, in the running loop:")
    line(f"bare anyio, start {PRIORITIES} steps of {PROCESSES // PRIORITIES} tasks + cancel", "bare")
    if "aiomisc" in median:
        line("aiomisc, async with entrypoint(1000 services)", "aiomisc")
    else:
        print(f"  {skipped}")
    line("nacelle_py, LOG_LEVEL=warning", "nacelle")
    line("nacelle_py, LOG_LEVEL=info (to a discarded stream)", "nacelle+info")
    print(
        f"  nacelle/bare:    warning {ratio('nacelle', 'bare')} (goal <= 1.2x), "
        f"info {ratio('nacelle+info', 'bare')} (goal <= 1.5x)"
    )
    if "aiomisc" in median:
        print(
            f"  nacelle/aiomisc: warning {ratio('nacelle', 'aiomisc')} (goal <= 1.0x), "
            f"info {ratio('nacelle+info', 'aiomisc')}"
        )
    print("each on a loop of its own, created and closed inside the timing (LOG_LEVEL=warning):")
    line("bare anyio, anyio.run(bare)", "own bare")
    if "own aiomisc" in median:
        line("aiomisc, with entrypoint(...) (its loop and thread pool)", "own aiomisc")
    else:
        print(f"  {skipped}")
    line("nacelle_py, anyio.run(app.serve)", "own nacelle")
    own = f"  nacelle/bare {ratio('own nacelle', 'own bare')}"
    if "own aiomisc" in median:
        own += f", nacelle/aiomisc {ratio('own nacelle', 'own aiomisc')}"
    print(own)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    aiomisc, aiomisc_note = load_aiomisc(args.backend)
    peer = f", aiomisc {aiomisc_note}" if aiomisc is not None else ""
    print(f"backend: {args.backend}, repetitions: {args.repeat} (median){peer}")
    medians = anyio.run(main, args.repeat, args.backend, aiomisc, backend=args.backend)
    report(medians, None if aiomisc is not None else aiomisc_note)
