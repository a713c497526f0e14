"""The no-loss property: every accepted task ends in one outcome or is handed back, exactly once.

Several producers dispatch (or submit) concurrently, tasks fail, sleep and
overrun their timeouts at random, some are plain functions run in threads, and
``quit`` (drain or not) comes at a random moment. The accepted count is taken
from the producers' own return values, not from the dispatcher.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from _support import Boom, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacelle_py.base import Dispatcher, DispatcherError, DispatcherStatus

UNSET: Any = object()
LIMIT = 10.0


@dataclass(frozen=True)
class Spec:
    kind: str  # "async", "execute" (object with async execute()), "sync" (plain function)
    duration: float
    fails: bool
    timeout: Any  # UNSET: the dispatcher's task_timeout


@dataclass(frozen=True)
class Scenario:
    max_buffered: int
    min_workers: int
    extra_workers: int
    task_timeout: float | None
    producers: list[list[Spec]]
    use_submit: list[bool]
    quit_after: float
    mode: str  # "drain", "stop": quit(drain=...); "cancel": the run is cancelled (an unwind);
    # "drain-then-cancel": quit(drain=True) runs out of time, then the run is cancelled (the runner's way)
    run_after: float


def specs(kinds: list[str]) -> st.SearchStrategy[Spec]:
    return st.builds(
        Spec,
        kind=st.sampled_from(kinds),
        duration=st.sampled_from([0.0, 0.0, 0.001, 0.005, 0.02, 0.05]),
        fails=st.booleans(),
        timeout=st.sampled_from([UNSET, UNSET, UNSET, None, 0.01, 0.03]),
    )


def scenarios(kinds: list[str]) -> st.SearchStrategy[Scenario]:
    return st.builds(
        Scenario,
        max_buffered=st.integers(1, 12),
        min_workers=st.integers(1, 3),
        extra_workers=st.integers(0, 3),
        task_timeout=st.sampled_from([None, 0.01, 0.03, 1.0]),
        producers=st.lists(st.lists(specs(kinds), max_size=12), min_size=1, max_size=4),
        use_submit=st.lists(st.booleans(), min_size=4, max_size=4),
        quit_after=st.sampled_from([0.0, 0.001, 0.005, 0.02, 0.06]),
        mode=st.sampled_from(["drain", "stop", "cancel", "drain-then-cancel"]),
        run_after=st.sampled_from([0.0, 0.0, 0.005]),
    )


class Tracker:
    """What the tasks themselves saw (thread-safe: sync tasks run in threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.returned: list[int] = []

    def mark(self, where: list[int], ident: int) -> None:
        with self.lock:
            where.append(ident)


def make_task(spec: Spec, ident: int, tracker: Tracker) -> Any:
    async def run_async() -> None:
        tracker.mark(tracker.started, ident)
        if spec.duration:
            await anyio.sleep(spec.duration)
        if spec.fails:
            raise Boom(ident)
        tracker.mark(tracker.returned, ident)

    def run_sync() -> None:
        tracker.mark(tracker.started, ident)
        if spec.duration:
            time.sleep(spec.duration)
        if spec.fails:
            raise Boom(ident)
        tracker.mark(tracker.returned, ident)

    if spec.kind == "async":
        return run_async
    if spec.kind == "sync":
        return run_sync

    class Execute:
        async def execute(self) -> None:
            await run_async()

    return Execute()


async def scenario_run(sc: Scenario) -> None:
    d = Dispatcher(
        max_buffered=sc.max_buffered,
        min_workers=sc.min_workers,
        max_workers=sc.min_workers + sc.extra_workers,
        task_timeout=sc.task_timeout,
        scale_down_after=0.02,
        max_threads=2,
    )
    tracker = Tracker()
    ids = itertools.count()
    accepted: dict[int, Any] = {}  # id -> task, from the producers' own view
    rejected = 0
    quitting = False
    handed: list[Any] = []

    async def producer(specs: list[Spec], submit: bool) -> None:
        nonlocal rejected
        for spec in specs:
            if quitting:
                return
            ident = next(ids)
            task = make_task(spec, ident, tracker)
            kwargs = {} if spec.timeout is UNSET else {"timeout": spec.timeout}
            if submit:
                # A submit still waiting when the dispatcher has gone is stopped, as an app
                # stops its producers (a stopped dispatcher with a full buffer never makes room).
                with anyio.CancelScope() as scope:
                    pending_submits.add(scope)
                    try:
                        await d.submit(task, **kwargs)
                    except DispatcherError:
                        return
                    accepted[ident] = task
                pending_submits.discard(scope)
                if scope.cancelled_caught:
                    return
            else:
                if d.dispatch(task, **kwargs):
                    accepted[ident] = task
                else:
                    rejected += 1
            await anyio.sleep(0)

    run_scope = anyio.CancelScope()
    pending_submits: set[anyio.CancelScope] = set()

    async def quitter() -> None:
        nonlocal quitting
        await wait_until(lambda: d.status == DispatcherStatus.RUNNING)
        if sc.quit_after:
            await anyio.sleep(sc.quit_after)
        quitting = True
        if sc.mode in ("drain", "stop"):
            handed.extend(await d.quit(drain=sc.mode == "drain"))
        else:
            if sc.mode == "drain-then-cancel":
                with anyio.move_on_after(0.01):
                    handed.extend(await d.quit(drain=True))
            run_scope.cancel()
            await wait_until(lambda: d.status == DispatcherStatus.STOPPED)
        for scope in pending_submits:
            scope.cancel()

    async def runner() -> None:
        if sc.run_after:
            await anyio.sleep(sc.run_after)
        with run_scope:
            await d.run()

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner)
            for specs, submit in zip(sc.producers, sc.use_submit):
                tg.start_soon(producer, specs, submit)
            tg.start_soon(quitter)
        # Producers that raced the quit may have queued tasks on the stopped dispatcher.
        handed.extend(await d.quit())

    handed += d.handed_back
    if sc.mode not in ("drain", "stop"):
        # An unwind does not wait for threads: their tasks still reach an outcome.
        def settled() -> bool:
            s = d.stats()
            return s.completed + s.failed + s.timed_out + s.handed_back == s.accepted

        with anyio.move_on_after(2):
            while not settled():
                await anyio.sleep(0.005)
    s = d.stats()
    by_id = {id(task): ident for ident, task in accepted.items()}
    handed_ids = [by_id[id(task)] for task in handed]  # KeyError: a task never accepted

    assert s.status == DispatcherStatus.STOPPED
    assert s.accepted == len(accepted), (s, len(accepted))
    assert s.rejected == rejected
    assert s.queued == 0 and s.running == 0, s
    assert s.handed_back == len(handed), (s, len(handed))
    assert len(set(handed_ids)) == len(handed_ids), "a task handed back twice"
    assert len(accepted) == s.completed + s.failed + s.timed_out + len(handed), s
    with tracker.lock:
        started, returned = set(tracker.started), set(tracker.returned)
    if sc.mode in ("drain", "stop"):
        assert not started & set(handed_ids), "a task both ran and was handed back"
    assert len(tracker.started) == len(started), "a task ran twice"
    # Everything not handed back ran (a thread may still be inside a timed-out task).
    assert started | set(handed_ids) == set(accepted), set(accepted) - started - set(handed_ids)
    assert started <= set(accepted)
    assert s.completed <= len(returned)


BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@BACKENDS
@SETTINGS
@given(sc=scenarios(["async", "async", "execute"]))
def test_no_task_is_lost_async(backend: str, sc: Scenario) -> None:
    anyio.run(scenario_run, sc, backend=backend)


@BACKENDS
@SETTINGS
@given(sc=scenarios(["async", "execute", "sync"]))
def test_no_task_is_lost_with_plain_functions(backend: str, sc: Scenario) -> None:
    anyio.run(scenario_run, sc, backend=backend)
