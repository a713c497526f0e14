"""Flows of no-op tasks per second, nacelle_py's engines against TaskFlow's, in one run.

Two flows, built the same way in both libraries: a linear flow of 10 no-op
tasks and an unordered flow of 100. Every row below runs those flows again
and again; the figure is flows/s, the median of ``--repeat`` batches after a
warm-up batch, every row taking its turn in each round (so that the shared
machine's busy spells fall on all of them). A batch runs as many flows as fit
in about ``--seconds`` (sized from one timed run before the rounds), with a
``gc.collect()`` before it.

Built once, outside the timing: the task objects and the flow objects
(TaskFlow's ``linear_flow.Flow(...).add(...)`` / ``unordered_flow``;
nacelle_py's ``flows.linear(...)`` / ``flows.unordered(...)``), and the
shared thread pool of one TaskFlow row. Inside the timing, per flow, what a
user calls to run a flow once:

- TaskFlow (its ``serial`` and ``parallel`` engines): ``engines.load(flow,
  engine=...)`` then ``.run()``: an in-memory storage backend, logbook and
  flow detail for the run, the compilation of the flow, its run. The tasks
  are plain ``def execute(self): pass``. The serial engine runs them in the
  calling thread. The parallel engine is timed twice: with its default
  executor (a ``futurist.ThreadPoolExecutor`` it creates for the run and
  shuts down at the end; the shutdown waits for the pool's idle threads,
  which poll every second, so a run takes about a second whatever the flow),
  and with ``executor=`` one ``futurist.ThreadPoolExecutor`` shared by every
  run (what a user running many flows would do; the ratios use this row).
- nacelle_py: ``await flows.run(flow, engine=...)``: the run's checks and
  state (``flows.load``), then the run, on the ``--backend`` loop. Tasks
  ``async def execute(self): pass`` (run on the loop: how tasks are written
  for an async framework, and the rows the goal is checked on), and plain
  ``def`` (each call handed to a worker thread and back, so that a blocking
  task never blocks the loop; TaskFlow's serial engine calls its tasks in
  the calling thread instead). The reference row "floor" is what those
  thread hops alone cost: ``await anyio.to_thread.run_sync(noop)`` 10 (100)
  times in a row; the ``def`` rows are set against it.

Goal (the issue): nacelle_py >= 10x TaskFlow's serial engine on both flows,
on the serial and the parallel engine. The ratio of every nacelle_py row to
TaskFlow's serial engine and to its parallel engine (shared pool) is
printed; the goal line checks the ``async def`` rows, and a second line
sets the ``def`` rows against the thread-hop floor.

The SQLite store's cost: nacelle_py's serial engine with async tasks, with
``persistence=flows.SQLiteStore(file)`` (a file in a temporary directory,
WAL, ``synchronous=NORMAL``: the default) against the same row without
(both alternating in the rounds above). Its extra time per flow divided by the
moves the store records per flow (counted once by a listener, untimed: each
task moves to RUNNING then SUCCESS, the flow too) is the cost per transition;
the run's first row (``begin``, the store as JSON) is inside that figure.

Before the rounds, every row runs each flow once untimed and checks that the
flow and every task ended SUCCESS. TaskFlow is thread-based: its rows do not
depend on ``--backend`` (they block the loop while they run, nothing else is
on it).

    python bench/flows.py [--backend asyncio|trio] [--repeat 5] [--seconds 0.2]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import anyio
import anyio.to_thread
import structlog

from nacelle_py.base import flows

SHAPES = {"linear": 10, "unordered": 100}


# -- the tasks and the flows ---------------------------------------------------------------


class AsyncNoOp(flows.Task):
    async def execute(self) -> None:
        pass


class SyncNoOp(flows.Task):
    def execute(self) -> None:  # type: ignore[override]  # a plain def runs on a worker thread
        pass


def nacelle_flow(shape: str, task: type[flows.Task]) -> flows.Flow:
    pattern = flows.linear if shape == "linear" else flows.unordered
    return pattern(shape, *[task(name=f"t{i}") for i in range(SHAPES[shape])])


def taskflow_flow(shape: str) -> Any:
    from taskflow import task  # type: ignore[import-untyped]
    from taskflow.patterns import linear_flow, unordered_flow  # type: ignore[import-untyped]

    class NoOp(task.Task):  # type: ignore[misc]
        def execute(self) -> None:
            pass

    pattern = linear_flow if shape == "linear" else unordered_flow
    return pattern.Flow(shape).add(*[NoOp(name=f"t{i}") for i in range(SHAPES[shape])])


def noop() -> None:
    pass


# -- one flow run per system (what is timed), and its check ---------------------------------

Run = Callable[[], Awaitable[Any]]


def taskflow_run(flow: Any, engine: str, executor: Any = None) -> Run:
    from taskflow import engines

    options = {} if executor is None else {"executor": executor}

    async def run() -> Any:
        loaded = engines.load(flow, engine=engine, **options)
        loaded.run()
        return loaded

    return run


def taskflow_check(loaded: Any, count: int) -> None:
    from taskflow import states

    assert loaded.storage.get_flow_state() == states.SUCCESS, loaded.storage.get_flow_state()
    tasks = loaded.storage.get_atoms_states([f"t{i}" for i in range(count)])
    assert all(state == states.SUCCESS for state, _ in tasks.values()), tasks


def nacelle_run(flow: flows.Flow, engine: str, persistence: flows.Persistence | None = None) -> Run:
    async def run() -> Any:
        return await flows.run(flow, engine=engine, persistence=persistence)

    return run


async def nacelle_check(flow: flows.Flow, engine: str, persistence: flows.Persistence | None) -> int:
    """Run ``flow`` once, check every atom and the flow ended SUCCESS; the moves it made (what a store records)."""
    moves: list[flows.Transition] = []
    loaded = flows.load(flow, engine=engine, persistence=persistence, listeners=[moves.append])
    await loaded.run()
    assert loaded.state is flows.SUCCESS, loaded.state
    assert all(state is flows.SUCCESS for state in loaded.atom_states.values()), loaded.atom_states
    assert len(loaded.atom_states) == SHAPES[flow.name]
    return len(moves)


def floor_run(count: int) -> Run:
    async def run() -> None:
        for _ in range(count):
            await anyio.to_thread.run_sync(noop)

    return run


# -- the rows ------------------------------------------------------------------------------

TF_SERIAL = "TaskFlow serial"
TF_PARALLEL = "TaskFlow parallel, shared pool"
TF_DEFAULT = "TaskFlow parallel, own pool per run"
SQLITE = "nacelle_py serial, async, SQLiteStore"
BARE = "nacelle_py serial, async def"


def rows(shape: str, pool: Any, store: flows.SQLiteStore) -> dict[str, Run]:
    """The rows in the order they take turns: what is compared runs side by side (the table sorts them)."""
    tf = taskflow_flow(shape)
    async_flow = nacelle_flow(shape, AsyncNoOp)
    sync_flow = nacelle_flow(shape, SyncNoOp)
    return {
        TF_SERIAL: taskflow_run(tf, "serial"),
        BARE: nacelle_run(async_flow, "serial"),
        SQLITE: nacelle_run(async_flow, "serial", store),
        "nacelle_py parallel, async def": nacelle_run(async_flow, "parallel"),
        TF_PARALLEL: taskflow_run(tf, "parallel", pool),
        # The thread hops' cost moves with the machine's load: the floor runs between its two rows.
        "nacelle_py serial, def (threads)": nacelle_run(sync_flow, "serial"),
        f"floor: {SHAPES[shape]} x to_thread.run_sync": floor_run(SHAPES[shape]),
        "nacelle_py parallel, def (threads)": nacelle_run(sync_flow, "parallel"),
        TF_DEFAULT: taskflow_run(tf, "parallel"),
    }


def shown(name: str) -> tuple[int, int]:
    """The table's order: TaskFlow, nacelle_py async, def, the store, the floor."""
    groups = ("TaskFlow", "async def", "def (threads)", "SQLiteStore", "floor")
    group = next(i for i, word in enumerate(groups) if word in name)
    return group, 0 if "serial" in name else 1


async def check(shape: str, runs: dict[str, Run], store: flows.SQLiteStore) -> int:
    """Every row once, untimed, checked; the moves the store records per flow."""
    moves = 0
    for name, run in runs.items():
        if name.startswith("TaskFlow"):
            taskflow_check(await run(), SHAPES[shape])
        elif name == SQLITE:
            moves = await nacelle_check(nacelle_flow(shape, AsyncNoOp), "serial", store)
        elif name.startswith("nacelle_py"):
            await run()  # flows.run raises unless the flow succeeded; the check below looks at each atom
    for task in (AsyncNoOp, SyncNoOp):
        for engine in ("serial", "parallel"):
            await nacelle_check(nacelle_flow(shape, task), engine, None)
    return moves


async def timed(run: Run, flows_per_batch: int) -> float:
    """Seconds for ``flows_per_batch`` runs."""
    gc.collect()
    started = time.perf_counter()
    for _ in range(flows_per_batch):
        await run()
    return time.perf_counter() - started


async def main(repeat: int, seconds: float) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    import futurist

    pool = futurist.ThreadPoolExecutor()  # TaskFlow's default executor class, made once
    folder = tempfile.TemporaryDirectory(prefix="bench-flows-")
    store = flows.SQLiteStore(os.path.join(folder.name, "flows.db"))
    try:
        cases = {shape: rows(shape, pool, store) for shape in SHAPES}
        moves = {shape: await check(shape, runs, store) for shape, runs in cases.items()}
        sizes: dict[tuple[str, str], int] = {}
        for shape, runs in cases.items():
            for name, run in runs.items():
                one = await timed(run, 1)
                sizes[shape, name] = max(1, min(100_000, round(seconds / one)))
        rates: dict[str, dict[str, list[float]]] = {shape: {name: [] for name in runs} for shape, runs in cases.items()}
        for round_ in range(repeat + 1):  # round 0 warms up
            for shape, runs in cases.items():
                for name, run in runs.items():
                    n = sizes[shape, name]
                    elapsed = await timed(run, n)
                    if round_:
                        rates[shape][name].append(n / elapsed)
    finally:
        store.close()
        folder.cleanup()
        pool.shutdown(wait=True)
    medians = {shape: {name: statistics.median(v) for name, v in by_row.items()} for shape, by_row in rates.items()}
    return medians, moves


def report(medians: dict[str, dict[str, float]], moves: dict[str, int]) -> None:
    goal_missed: list[str] = []
    for shape, rate in medians.items():
        serial, parallel = rate[TF_SERIAL], rate[TF_PARALLEL]
        print(f"{shape} flow of {SHAPES[shape]} no-op tasks:")
        print(f"  {'':<42} {'flows/s':>10} {'/TF serial':>11} {'/TF parallel':>13}")
        for name, value in sorted(rate.items(), key=lambda item: shown(item[0])):
            line = f"  {name:<42} {value:>10,.1f}"
            if not name.startswith("TaskFlow"):
                line += f" {value / serial:>10.1f}x {value / parallel:>12.1f}x"
                if value / serial < 10 and name.startswith("nacelle_py") and "async def" in name and name != SQLITE:
                    goal_missed.append(f"{shape}, {name.removeprefix('nacelle_py ')} ({value / serial:.1f}x)")
            print(line)
    print("goal: nacelle_py's serial and parallel engines (async def tasks) >= 10x TaskFlow's serial engine: ", end="")
    print("met" if not goal_missed else "not met for " + "; ".join(goal_missed))
    hops = []
    for shape, rate in medians.items():
        floor = next(value for name, value in rate.items() if name.startswith("floor"))
        for name, value in rate.items():
            if name.startswith("nacelle_py") and "def (threads)" in name:
                hops.append(f"{shape} {name.removeprefix('nacelle_py ').split(',')[0]} {value / floor:.2f}x")
    print("plain def tasks against the thread-hop floor (1.0x: nothing but the hops): " + ", ".join(hops))
    print("SQLite store (nacelle_py serial, async def tasks, WAL, synchronous=NORMAL):")
    for shape, rate in medians.items():
        per_flow = 1 / rate[SQLITE] - 1 / rate[BARE]
        print(
            f"  {shape}: {moves[shape]} moves per flow; {rate[BARE]:,.0f} flows/s without, "
            f"{rate[SQLITE]:,.0f} with: +{per_flow * 1e6 / moves[shape]:.1f} us per transition"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.2, help="the length of one timed batch")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(
        f"backend: {args.backend}, TaskFlow {version('taskflow')}, repetitions: {args.repeat} "
        f"after a warm-up (median), batches of ~{args.seconds:g} s"
    )
    medians, moves = anyio.run(main, args.repeat, args.seconds, backend=args.backend)
    report(medians, moves)
