"""Dispatcher: the Go dispatcher package's scenarios, task kinds, timeouts, quit and stats.

Ported from the Go package's tests (dispatch before run, buffer full, min/max
workers, scale up and down, drain vs no drain, reentrant run, status) and
extended to the Python contract. Tasks block on events, not sleeps, so each
test says exactly which task is running; every wait is bounded.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import structlog
from _support import Boom, wait_until
from hypothesis import given
from hypothesis import strategies as st

from nacelle_py import RegistrationError
from nacelle_py.base import Dispatcher, DispatcherError, DispatcherStats, DispatcherStatus

pytestmark = pytest.mark.anyio

STOPPED, STOPPING, RUNNING, DRAINING = (
    DispatcherStatus.STOPPED,
    DispatcherStatus.STOPPING,
    DispatcherStatus.RUNNING,
    DispatcherStatus.DRAINING,
)


# -- helpers ----------------------------------------------------------------------------


@asynccontextmanager
async def running(d: Dispatcher, limit: float = 10.0) -> AsyncIterator[anyio.abc.TaskGroup]:
    """Run ``d`` in a task group for the block; the block must quit it (checked)."""
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.run)
            await wait_until(lambda: d.status == RUNNING and d.stats().workers >= d.min_workers)
            yield tg
            if d.status != STOPPED:  # a failed assertion inside must not hang the group
                await d.quit(drain=False)


class Gate:
    """Async tasks that block until released; records which started and which finished."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.started: list[str] = []
        self.finished: list[str] = []

    def task(self, name: str) -> Callable[[], Any]:
        async def blocked() -> None:
            self.started.append(name)
            await self.release.wait()
            self.finished.append(name)

        blocked.__qualname__ = f"blocked_{name}"
        return blocked


def recorder(log: list[str], name: str, delay: float = 0.0) -> Callable[[], Any]:
    async def task() -> None:
        if delay:
            await anyio.sleep(delay)
        log.append(name)

    return task


def outcomes(s: DispatcherStats) -> int:
    return s.completed + s.failed + s.timed_out + s.handed_back


# -- dispatch before run, buffer, backpressure --------------------------------------------


async def test_dispatch_before_run_waits_then_runs_in_order() -> None:
    d = Dispatcher(max_buffered=10, min_workers=1, max_workers=1)
    done: list[str] = []
    assert all(d.dispatch(recorder(done, str(i))) for i in range(5))
    await anyio.sleep(0.02)  # give a (wrongly) running pool a chance
    assert done == []
    s = d.stats()
    assert (s.status, s.accepted, s.queued, s.workers, s.running) == (STOPPED, 5, 5, 0, 0)
    async with running(d):
        await wait_until(lambda: len(done) == 5)
        assert done == ["0", "1", "2", "3", "4"]  # one worker: FIFO
        assert await d.quit(drain=True) == []
    s = d.stats()
    assert (s.accepted, s.completed, s.queued, s.handed_back) == (5, 5, 0, 0)


async def test_every_task_runs_exactly_once_under_many_workers() -> None:
    # The Go package's TestDispatchTasks: thousands of tasks, more than the buffer holds.
    d = Dispatcher(max_buffered=100, min_workers=4, max_workers=16)
    seen: list[int] = []

    def make(i: int) -> Callable[[], Any]:
        async def task() -> None:
            await anyio.sleep(0)
            seen.append(i)

        return task

    async with running(d):
        for i in range(3000):
            await d.submit(make(i))
        assert await d.quit(drain=True) == []
    assert sorted(seen) == list(range(3000))
    s = d.stats()
    assert (s.accepted, s.completed, s.rejected) == (3000, 3000, 0)


async def test_buffer_full_before_run_rejects_and_counts() -> None:
    d = Dispatcher(max_buffered=3)
    tasks = [recorder([], str(i)) for i in range(5)]
    assert [d.dispatch(t) for t in tasks] == [True, True, True, False, False]
    s = d.stats()
    assert (s.accepted, s.rejected, s.queued) == (3, 2, 3)


async def test_buffer_full_while_running_rejects_then_frees_room() -> None:
    d = Dispatcher(max_buffered=2, min_workers=1, max_workers=1, task_timeout=None)
    gate = Gate()
    async with running(d):
        assert d.dispatch(gate.task("a"))
        await wait_until(lambda: gate.started == ["a"])  # running: no longer buffered
        assert d.dispatch(gate.task("b")) and d.dispatch(gate.task("c"))
        assert not d.dispatch(gate.task("d"))
        assert d.stats().rejected == 1
        gate.release.set()
        await wait_until(lambda: len(gate.finished) == 3)
        assert d.dispatch(gate.task("e"))  # room again
        assert await d.quit(drain=True) == []
    s = d.stats()
    assert (s.accepted, s.rejected, s.completed) == (4, 1, 4)
    assert gate.finished == ["a", "b", "c", "e"]


async def test_submit_waits_for_room() -> None:
    d = Dispatcher(max_buffered=1, min_workers=1, max_workers=1, task_timeout=None)
    gate = Gate()
    submitted = anyio.Event()

    async def submitter() -> None:
        await d.submit(gate.task("c"))
        submitted.set()

    async with running(d) as tg:
        d.dispatch(gate.task("a"))
        await wait_until(lambda: gate.started == ["a"])
        assert d.dispatch(gate.task("b"))  # the buffer is now full
        tg.start_soon(submitter)
        await anyio.sleep(0.05)
        assert not submitted.is_set()  # waiting for room, not failing
        gate.release.set()
        with anyio.fail_after(5):
            await submitted.wait()
        assert await d.quit(drain=True) == []
    s = d.stats()
    assert (s.accepted, s.rejected, s.completed) == (3, 0, 3)  # waiting is not a rejection


async def test_submit_after_quit_with_a_full_buffer_raises_instead_of_hanging() -> None:
    # Nothing makes room in a quit dispatcher's buffer until run() is called again.
    d = Dispatcher(max_buffered=1, min_workers=1, max_workers=1)
    async with running(d):
        await d.quit()
    assert d.dispatch(recorder([], "queued"))  # a stopped dispatcher still buffers
    with anyio.fail_after(5):
        with pytest.raises(DispatcherError):
            await d.submit(recorder([], "no room"))
    s = d.stats()
    assert (s.accepted, s.rejected, s.queued) == (1, 0, 1)


async def test_submit_after_an_unwind_with_a_full_buffer_raises_instead_of_hanging() -> None:
    d = Dispatcher(max_buffered=1, min_workers=1, max_workers=1, task_timeout=None)
    gate = Gate()
    with anyio.fail_after(10):
        with anyio.CancelScope() as unwind:
            async with anyio.create_task_group() as tg:
                tg.start_soon(d.run)
                await wait_until(lambda: d.stats().workers == 1)
                d.dispatch(gate.task("running"))
                await wait_until(lambda: gate.started == ["running"])
                unwind.cancel()  # as the runner cancels run() when stop() runs out of time
    assert d.status == STOPPED and len(d.handed_back) == 1  # the cancelled running task
    d.dispatch(gate.task("fills the buffer"))
    with anyio.move_on_after(1) as waited:
        with pytest.raises(DispatcherError):
            await d.submit(gate.task("no room"))
    assert not waited.cancelled_caught, "submit() hung on a dispatcher that will not run again"


async def test_submit_raises_while_quitting() -> None:
    d = Dispatcher(max_buffered=1, min_workers=1, max_workers=1, task_timeout=None)
    gate = Gate()
    errors: list[BaseException] = []

    async def submitter() -> None:
        try:
            await d.submit(gate.task("late"))
        except DispatcherError as exc:
            errors.append(exc)

    async with running(d) as tg:
        d.dispatch(gate.task("a"))
        await wait_until(lambda: gate.started == ["a"])
        d.dispatch(gate.task("b"))
        tg.start_soon(submitter)  # waits: the buffer is full
        await anyio.sleep(0.01)
        tg.start_soon(d.quit, True)
        await wait_until(lambda: d.status == DRAINING)
        await wait_until(lambda: bool(errors))  # the waiting submit gives up
        with pytest.raises(DispatcherError, match="quitting"):
            await d.submit(gate.task("after"))  # and a new one fails at once
        assert not d.dispatch(gate.task("after"))  # dispatch while draining: rejected
        gate.release.set()
        await wait_until(lambda: d.status == STOPPED)
    assert gate.finished == ["a", "b"]
    assert d.stats().accepted == 2


# -- workers: min, max, scale up, scale down ---------------------------------------------


async def test_min_workers_start_with_run() -> None:
    d = Dispatcher(max_buffered=100, min_workers=5, max_workers=15)
    assert d.stats().workers == 0
    async with running(d):
        await wait_until(lambda: d.stats().workers == 5)
        await anyio.sleep(0.05)
        s = d.stats()
        assert (s.workers, s.scale_ups, s.running) == (5, 0, 0)  # no load: no scaling
        await d.quit()
    assert d.stats().workers == 0


async def test_scale_up_under_load_stops_at_max_workers() -> None:
    d = Dispatcher(max_buffered=100, min_workers=1, max_workers=4, task_timeout=None)
    gate = Gate()
    peak = 0

    def task(i: int) -> Callable[[], Any]:
        inner = gate.task(str(i))

        async def watched() -> None:
            nonlocal peak
            peak = max(peak, d.stats().workers)
            await inner()

        return watched

    async with running(d):
        for i in range(20):
            assert d.dispatch(task(i))
        await wait_until(lambda: d.stats().running == 4)
        await anyio.sleep(0.05)  # a chance to overshoot
        s = d.stats()
        assert (s.workers, s.running, s.queued) == (4, 4, 16)
        assert s.scale_ups == 3
        gate.release.set()
        assert await d.quit(drain=True) == []
    assert len(gate.finished) == 20 and peak == 4


async def test_tasks_queued_before_run_scale_the_pool_up() -> None:
    d = Dispatcher(max_buffered=100, min_workers=1, max_workers=3, task_timeout=None)
    gate = Gate()
    for i in range(6):
        d.dispatch(gate.task(str(i)))
    async with running(d):
        await wait_until(lambda: d.stats().running == 3)
        assert d.stats().workers == 3
        gate.release.set()
        assert await d.quit() == []
    assert len(gate.finished) == 6


async def test_idle_workers_scale_down_to_min_and_back_up() -> None:
    d = Dispatcher(max_buffered=100, min_workers=1, max_workers=4, task_timeout=None, scale_down_after=0.1)
    gate = Gate()
    with structlog.testing.capture_logs() as logs:
        async with running(d):
            for i in range(8):
                d.dispatch(gate.task(str(i)))
            await wait_until(lambda: d.stats().workers == 4)
            gate.release.set()
            await wait_until(lambda: d.stats().workers == 1)
            s = d.stats()
            assert (s.scale_ups, s.scale_downs, s.completed) == (3, 3, 8)
            await anyio.sleep(0.3)  # several scale-down periods: never below the minimum
            assert d.stats().workers == 1
            again = Gate()
            for i in range(4):
                d.dispatch(again.task(str(i)))
            await wait_until(lambda: d.stats().running == 4)  # and back up under load
            again.release.set()
            assert await d.quit() == []
    events = [e["event"] for e in logs]
    assert events.count("dispatcher scaled down") >= 3
    assert "dispatcher scaled up" in events
    assert all(e["log_level"] == "debug" for e in logs if e["event"].startswith("dispatcher scaled"))


# -- timeouts ------------------------------------------------------------------------------


async def test_default_timeout_counts_and_worker_survives() -> None:
    d = Dispatcher(min_workers=1, max_workers=1, task_timeout=0.1)
    done: list[str] = []

    async def hangs() -> None:
        await anyio.sleep_forever()

    with structlog.testing.capture_logs() as logs:
        async with running(d):
            d.dispatch(hangs)
            d.dispatch(recorder(done, "after"))  # the only worker must survive the timeout
            await wait_until(lambda: done == ["after"])
            assert await d.quit() == []
    s = d.stats()
    assert (s.completed, s.failed, s.timed_out, s.workers) == (1, 0, 1, 0)
    timed_out = [e for e in logs if e["event"] == "task timed out"]
    assert len(timed_out) == 1 and timed_out[0]["log_level"] == "warning"


async def test_per_task_timeout_overrides_the_default() -> None:
    d = Dispatcher(min_workers=2, max_workers=2, task_timeout=10.0)
    done: list[str] = []

    async def hangs() -> None:
        await anyio.sleep_forever()

    async with running(d):
        d.dispatch(hangs, timeout=0.05)
        await wait_until(lambda: d.stats().timed_out == 1)
        assert d.dispatch(recorder(done, "ok"), timeout=5)
        await wait_until(lambda: done == ["ok"])
        assert await d.quit() == []
    assert (d.stats().completed, d.stats().timed_out) == (1, 1)


async def test_per_task_timeout_none_means_no_limit() -> None:
    d = Dispatcher(min_workers=1, max_workers=1, task_timeout=0.05)
    done: list[str] = []
    async with running(d):
        d.dispatch(recorder(done, "slow", delay=0.3), timeout=None)
        await wait_until(lambda: done == ["slow"])
        assert await d.quit() == []
    assert (d.stats().completed, d.stats().timed_out) == (1, 0)


async def test_task_after_a_timeout_gets_its_own_full_timeout() -> None:
    # A worker whose task timed out runs the next one: that task's clock starts anew.
    d = Dispatcher(min_workers=1, max_workers=1, task_timeout=0.3)
    done: list[str] = []

    async def hangs() -> None:
        await anyio.sleep_forever()

    async with running(d):
        d.dispatch(hangs)
        d.dispatch(recorder(done, "next", delay=0.1))  # well inside its own 0.3 s
        await wait_until(lambda: d.stats().completed + d.stats().timed_out == 2)
        await d.quit()
    assert done == ["next"]
    assert (d.stats().completed, d.stats().timed_out) == (1, 1)


async def test_sync_task_timing_out_in_a_thread_keeps_the_pool_working() -> None:
    d = Dispatcher(min_workers=1, max_workers=1, task_timeout=0.1, max_threads=1)
    unblock = threading.Event()
    done: list[str] = []

    def hangs() -> None:
        unblock.wait(5)

    def quick() -> None:
        done.append("quick")

    try:
        with structlog.testing.capture_logs() as logs:
            async with running(d):
                d.dispatch(hangs)
                await wait_until(lambda: d.stats().timed_out == 1)
                d.dispatch(quick)  # the only thread is stuck: the pool must replace it
                await wait_until(lambda: done == ["quick"])
                assert await d.quit() == []
    finally:
        unblock.set()
    s = d.stats()
    assert (s.completed, s.timed_out, s.failed) == (1, 1, 0)
    assert any(e["event"] == "task timed out in a thread" for e in logs)


async def test_sync_task_with_timeout_none_is_not_timed_out() -> None:
    d = Dispatcher(min_workers=1, max_workers=1, task_timeout=0.05)
    done: list[str] = []

    def slow() -> None:
        time.sleep(0.3)
        done.append("slow")

    async with running(d):
        d.dispatch(slow, timeout=None)
        await wait_until(lambda: d.stats().completed + d.stats().timed_out == 1)
        await d.quit()
    assert (d.stats().completed, d.stats().timed_out) == (1, 0)


async def test_sync_task_per_task_timeout_overrides_default() -> None:
    d = Dispatcher(min_workers=1, max_workers=1, task_timeout=10.0)
    unblock = threading.Event()
    try:
        async with running(d):
            d.dispatch(lambda: unblock.wait(5), timeout=0.05)
            await wait_until(lambda: d.stats().timed_out == 1)
            await d.quit()
    finally:
        unblock.set()
    assert (d.stats().completed, d.stats().timed_out) == (0, 1)


# -- failures --------------------------------------------------------------------------------


async def test_failures_are_counted_logged_and_do_not_stop_the_worker() -> None:
    d = Dispatcher(min_workers=1, max_workers=1)
    done: list[str] = []

    async def fails() -> None:
        raise Boom("async")

    def fails_in_thread() -> None:
        raise Boom("sync")

    with structlog.testing.capture_logs() as logs:
        async with running(d):
            d.dispatch(fails)
            d.dispatch(fails_in_thread)
            d.dispatch(recorder(done, "after"))
            await wait_until(lambda: d.stats().failed == 2 and done == ["after"])
            assert await d.quit() == []
    s = d.stats()
    assert (s.completed, s.failed, s.timed_out) == (1, 2, 0)
    failed = [e for e in logs if e["event"] == "task failed"]
    assert len(failed) == 2
    assert all(e["log_level"] == "error" for e in failed)
    assert sorted(str(e["exc_info"]) for e in failed) == ["async", "sync"]
    assert all(isinstance(e["exc_info"], Boom) for e in failed)


# -- quit ----------------------------------------------------------------------------------------


async def test_quit_drain_runs_everything_accepted() -> None:
    d = Dispatcher(max_buffered=100, min_workers=1, max_workers=3)
    done: list[str] = []
    async with running(d):
        for i in range(50):
            assert d.dispatch(recorder(done, str(i), delay=0.001))
        assert await d.quit(drain=True) == []
        assert d.status == STOPPED
    assert sorted(done, key=int) == [str(i) for i in range(50)]
    s = d.stats()
    assert (s.accepted, s.completed, s.queued, s.running, s.handed_back) == (50, 50, 0, 0, 0)


async def test_quit_without_drain_finishes_running_and_hands_back_queued() -> None:
    d = Dispatcher(max_buffered=100, min_workers=1, max_workers=1, task_timeout=None)
    gate = Gate()
    first = gate.task("running")
    queued = [gate.task(f"q{i}") for i in range(5)]
    result: list[Any] = []

    async def quitter() -> None:
        result.extend(await d.quit(drain=False))

    async with running(d) as tg:
        d.dispatch(first)
        await wait_until(lambda: gate.started == ["running"])
        for t in queued:
            d.dispatch(t)
        tg.start_soon(quitter)
        await wait_until(lambda: d.status == STOPPING)
        await anyio.sleep(0.02)
        assert d.status == STOPPING  # waits for the running task
        assert not d.dispatch(gate.task("late"))
        gate.release.set()
        await wait_until(lambda: d.status == STOPPED)
    assert result == queued  # in dispatch order, never run
    assert gate.started == ["running"] and gate.finished == ["running"]  # finished, not cancelled
    s = d.stats()
    assert (s.accepted, s.completed, s.handed_back, s.queued) == (6, 1, 5, 0)


async def test_quit_without_drain_while_draining_escalates() -> None:
    # A drain that takes too long can be cut short; every quit call returns.
    d = Dispatcher(max_buffered=10, min_workers=1, max_workers=1, task_timeout=None)
    gate = Gate()
    queued = [gate.task("q1"), gate.task("q2")]
    results: dict[str, list[Any]] = {}

    async def quit(name: str, drain: bool) -> None:
        results[name] = await d.quit(drain=drain)

    async with running(d) as tg:
        d.dispatch(gate.task("running"))
        await wait_until(lambda: gate.started == ["running"])
        for t in queued:
            d.dispatch(t)
        tg.start_soon(quit, "drain", True)
        await wait_until(lambda: d.status == DRAINING)
        tg.start_soon(quit, "stop", False)
        await wait_until(lambda: d.status == STOPPING)
        tg.start_soon(quit, "again", True)
        await anyio.sleep(0.01)
        gate.release.set()
        await wait_until(lambda: len(results) == 3)
    assert results == {"drain": [], "stop": queued, "again": []}
    assert gate.finished == ["running"]
    s = d.stats()
    assert (s.accepted, s.completed, s.handed_back) == (3, 1, 2)


async def test_quit_without_drain_many_tasks_runs_fewer() -> None:
    # The Go package's TestQuitExitsWithoutCompletingQueue.
    d = Dispatcher(max_buffered=1000, min_workers=1, max_workers=2)
    done: list[str] = []
    async with running(d):
        for i in range(1000):
            d.dispatch(recorder(done, str(i), delay=0.001))
        handed = await d.quit(drain=False)
    assert len(done) < 1000
    assert len(done) + len(handed) == 1000
    assert outcomes(d.stats()) == 1000


async def test_join_waits_for_every_outcome_and_keeps_running() -> None:
    d = Dispatcher(max_buffered=100, min_workers=1, max_workers=4)
    done: list[str] = []
    async with running(d):
        for i in range(20):
            d.dispatch(recorder(done, str(i), delay=0.002))
        d.dispatch(lambda: done.append("thread"))
        with anyio.fail_after(5):
            await d.join()
        s = d.stats()
        assert len(done) == 21 and (s.queued, s.running, s.completed) == (0, 0, 21)
        assert d.status == RUNNING  # join is not quit
        assert d.dispatch(recorder(done, "after"))
        await d.quit()
    assert done[-1] == "after"


async def test_quit_while_stopped_hands_back_queued() -> None:
    d = Dispatcher(max_buffered=10)
    assert await d.quit() == []
    tasks = [recorder([], str(i)) for i in range(3)]
    for t in tasks:
        d.dispatch(t)
    with structlog.testing.capture_logs():
        assert await d.quit(drain=True) == tasks
    s = d.stats()
    assert (s.status, s.queued, s.handed_back, s.accepted) == (STOPPED, 0, 3, 3)
    assert d.handed_back == []  # quit returned them; handed_back lists only an unwind's


async def test_quit_rejects_non_bool_drain() -> None:
    d = Dispatcher()
    with pytest.raises(TypeError, match="drain"):
        await d.quit(drain="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="drain"):
        await d.quit(drain=1)  # type: ignore[arg-type]


# -- run: reentrant, again, status --------------------------------------------------------------


async def test_second_concurrent_run_waits_and_adds_no_workers() -> None:
    d = Dispatcher(min_workers=2, max_workers=8)
    returned: list[str] = []

    async def second() -> None:
        await d.run()
        returned.append("second")

    async with running(d) as tg:
        tg.start_soon(second)
        await anyio.sleep(0.05)
        assert d.stats().workers == 2
        assert returned == []  # it waits for the first
        done: list[str] = []
        d.dispatch(recorder(done, "x"))
        await wait_until(lambda: done == ["x"])
        await d.quit()
        await wait_until(lambda: returned == ["second"])


async def test_run_again_after_quit() -> None:
    d = Dispatcher(min_workers=1, max_workers=2)
    done: list[str] = []
    async with running(d):
        d.dispatch(recorder(done, "first"))
        await d.quit()
    d.dispatch(recorder(done, "between"))  # queued while stopped
    async with running(d):
        await wait_until(lambda: done == ["first", "between"])
        d.dispatch(recorder(done, "second"))
        await d.quit()
    assert done == ["first", "between", "second"]
    async with running(d):  # and once more, with a plain function in a thread
        d.dispatch(lambda: done.append("thread"))
        await d.quit()
    assert done[-1] == "thread"
    assert d.stats().completed == 4


async def test_run_quit_run_with_threads_repeatedly() -> None:
    # The thread pool is closed at each quit and must serve the next run.
    d = Dispatcher(min_workers=1, max_workers=2, max_threads=2)
    done: list[int] = []
    for i in range(10):
        async with running(d):
            d.dispatch(functools.partial(done.append, i))
            await d.quit()
    assert done == list(range(10))


async def test_status_transitions_drain() -> None:
    d = Dispatcher(min_workers=1, max_workers=1, task_timeout=None)
    gate = Gate()
    assert d.status == STOPPED
    with structlog.testing.capture_logs() as logs:
        async with running(d) as tg:
            assert d.status == RUNNING
            d.dispatch(gate.task("a"))
            await wait_until(lambda: gate.started == ["a"])
            tg.start_soon(d.quit, True)
            await wait_until(lambda: d.status == DRAINING)
            gate.release.set()
            await wait_until(lambda: d.status == STOPPED)
    statuses = [e["status"] for e in logs if e["event"] == "dispatcher status"]
    assert statuses == ["RUNNING", "DRAINING", "STOPPED"]


async def test_status_transitions_stop() -> None:
    d = Dispatcher(min_workers=1, max_workers=1)
    with structlog.testing.capture_logs() as logs:
        async with running(d):
            await d.quit(drain=False)
            assert d.status == STOPPED
    statuses = [e["status"] for e in logs if e["event"] == "dispatcher status"]
    assert statuses == ["RUNNING", "STOPPING", "STOPPED"]


# -- task kinds --------------------------------------------------------------------------------


async def test_task_kinds() -> None:
    d = Dispatcher(min_workers=1, max_workers=2)
    where: dict[str, int] = {}
    loop_thread = threading.get_ident()

    async def async_function() -> None:
        where["async function"] = threading.get_ident()

    def plain_function() -> None:
        where["plain function"] = threading.get_ident()

    class AsyncExecute:
        async def execute(self) -> None:
            where["async execute"] = threading.get_ident()

    class SyncExecute:
        def execute(self) -> None:
            where["sync execute"] = threading.get_ident()

    class AsyncCallable:
        async def __call__(self) -> None:
            where["async callable"] = threading.get_ident()

    async def with_arg(name: str) -> None:
        where[name] = threading.get_ident()

    tasks = [
        async_function,
        plain_function,
        AsyncExecute(),
        SyncExecute(),
        AsyncCallable(),
        functools.partial(with_arg, "async partial"),
    ]
    async with running(d):
        assert all(d.dispatch(t) for t in tasks)
        await d.quit()
    assert d.stats().completed == len(tasks)
    assert {k for k, v in where.items() if v == loop_thread} == {
        "async function",
        "async execute",
        "async callable",
        "async partial",
    }
    assert {k for k, v in where.items() if v != loop_thread} == {"plain function", "sync execute"}


async def test_plain_functions_bounded_by_max_threads() -> None:
    d = Dispatcher(min_workers=1, max_workers=4, max_threads=2, task_timeout=None)
    lock = threading.Lock()
    active = peak = 0
    unblock = threading.Event()

    def blocking() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        unblock.wait(5)
        with lock:
            active -= 1

    try:
        async with running(d):
            for _ in range(6):
                d.dispatch(blocking)
            await wait_until(lambda: d.stats().running == 2)
            await anyio.sleep(0.05)
            s = d.stats()
            assert (s.running, s.threads, s.queued) == (2, 2, 4)
            unblock.set()
            assert await d.quit() == []
    finally:
        unblock.set()
    assert peak == 2 and d.stats().completed == 6


async def test_dispatch_from_another_thread_through_from_thread() -> None:
    d = Dispatcher(min_workers=1, max_workers=1)
    done: list[str] = []
    async with running(d):
        accepted = await anyio.to_thread.run_sync(lambda: anyio.from_thread.run_sync(d.dispatch, recorder(done, "x")))
        assert accepted
        await wait_until(lambda: done == ["x"])
        await d.quit()


async def test_direct_dispatch_from_another_thread_hops_to_the_loop() -> None:
    """A plain thread (a `def run`, say) may call dispatch: it runs on the loop's thread, once."""
    d = Dispatcher(min_workers=1, max_workers=1)
    done: list[str] = []
    results: list[bool] = []
    threads: list[int] = []

    async def task() -> None:
        threads.append(threading.get_ident())
        done.append("x")

    def from_thread() -> None:
        results.append(d.dispatch(task))

    async with running(d):
        await anyio.sleep(0.01)  # the worker is idle, waiting for work
        await anyio.to_thread.run_sync(from_thread)
        await wait_until(lambda: done == ["x"])
        await d.quit()
    assert results == [True]
    assert threads == [threading.get_ident()]  # the task ran on the loop's thread
    assert d.stats().accepted == 1 and d.stats().completed == 1


# -- stats -----------------------------------------------------------------------------------------


async def test_latency_percentiles() -> None:
    d = Dispatcher(max_buffered=1000, min_workers=2, max_workers=2)
    s = d.stats()
    assert (s.latency_p50, s.latency_p90, s.latency_p99) == (None, None, None)
    async with running(d):
        for i in range(200):
            d.dispatch(recorder([], str(i)))
        for _ in range(20):
            d.dispatch(lambda: None)  # threads' latencies count too
        await d.quit()
    s = d.stats()
    assert s.latency_p50 is not None and s.latency_p90 is not None and s.latency_p99 is not None
    assert 0 <= s.latency_p50 <= s.latency_p90 <= s.latency_p99 < 10


async def test_stats_invariant_at_quiet_moments() -> None:
    d = Dispatcher(max_buffered=20, min_workers=1, max_workers=2, task_timeout=None)
    gate = Gate()
    async with running(d):
        for i in range(6):
            d.dispatch(gate.task(str(i)))
        await wait_until(lambda: d.stats().running == 2)
        s = d.stats()
        assert s.accepted == outcomes(s) + s.queued + s.running == 6
        assert (s.queued, s.running) == (4, 2)
        gate.release.set()
        await d.quit()
    s = d.stats()
    assert s.accepted == outcomes(s) == 6


# -- standalone --------------------------------------------------------------------------------------


async def test_async_with_runs_and_drains() -> None:
    done: list[str] = []
    with anyio.fail_after(10):
        async with Dispatcher(min_workers=1, max_workers=2) as d:
            assert d.status == RUNNING
            for i in range(10):
                d.dispatch(recorder(done, str(i), delay=0.001))
    assert len(done) == 10
    assert d.status == STOPPED and d.stats().completed == 10


async def test_async_with_error_stops_without_drain() -> None:
    gate = Gate()
    raised: BaseException | None = None
    with anyio.fail_after(10):
        try:
            async with Dispatcher(min_workers=1, max_workers=1, task_timeout=None) as d:
                d.dispatch(gate.task("running"))
                await wait_until(lambda: gate.started == ["running"])
                for i in range(3):
                    d.dispatch(gate.task(str(i)))
                gate.release.set()  # the running one may finish; the queued are handed back
                raise Boom("body failed")
        except BaseException as exc:  # noqa: BLE001 - how it surfaces is the next test's concern
            raised = exc
    assert raised is not None
    s = d.stats()
    assert d.status == STOPPED
    assert s.accepted == 4 == outcomes(s)
    assert s.handed_back >= 1
    assert gate.finished[:1] == ["running"]


async def test_async_with_body_error_surfaces_unwrapped() -> None:
    with anyio.fail_after(10):
        with pytest.raises(Boom, match="body failed"):
            async with Dispatcher():
                raise Boom("body failed")


# -- bad input ---------------------------------------------------------------------------------------


def test_min_workers_above_max_workers() -> None:
    with pytest.raises(RegistrationError, match="min_workers.*max_workers"):
        Dispatcher(min_workers=5, max_workers=2)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_buffered", 0),
        ("max_buffered", -1),
        ("max_buffered", True),
        ("max_buffered", 1.5),
        ("max_buffered", "10"),
        ("min_workers", 0),
        ("min_workers", -2),
        ("max_workers", 0),
        ("max_workers", "4"),
        ("max_workers", False),
        ("task_timeout", -1.0),
        ("task_timeout", 0),
        ("task_timeout", math.nan),
        ("task_timeout", math.inf),
        ("task_timeout", "10"),
        ("task_timeout", True),
        ("scale_down_after", -0.1),
        ("scale_down_after", math.nan),
        ("scale_down_after", None),
        ("max_threads", 0),
        ("max_threads", True),
        ("saturated_after", -1),
        ("saturated_after", math.nan),
    ],
)
def test_bad_constructor_option_names_the_option(option: str, value: object) -> None:
    with pytest.raises(RegistrationError, match=option):
        Dispatcher(**{option: value})  # type: ignore[arg-type]


@given(
    option=st.sampled_from(["max_buffered", "min_workers", "max_workers", "max_threads"]),
    value=st.one_of(st.integers(-5, 5), st.booleans(), st.floats(allow_nan=True), st.text(max_size=2), st.none()),
)
def test_int_options_are_positive_ints_or_rejected(option: str, value: object) -> None:
    kwargs: dict[str, Any] = {option: value}
    if option == "min_workers":
        kwargs["max_workers"] = 10  # above every value drawn
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        assert getattr(Dispatcher(**kwargs), option) == value
    else:
        with pytest.raises(RegistrationError, match=option):
            Dispatcher(**kwargs)


@given(
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.booleans(), st.text(max_size=2)
    )
)
def test_task_timeout_is_positive_finite_or_rejected(value: object) -> None:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if valid:
        assert Dispatcher(task_timeout=value).task_timeout == value  # type: ignore[arg-type]
    else:
        with pytest.raises(RegistrationError, match="task_timeout"):
            Dispatcher(task_timeout=value)  # type: ignore[arg-type]


def test_task_timeout_none_means_no_limit() -> None:
    assert Dispatcher(task_timeout=None).task_timeout is None


@pytest.mark.parametrize("task", [None, 42, "task", object()])
async def test_dispatch_non_callable_is_type_error(task: object) -> None:
    d = Dispatcher()
    with pytest.raises(TypeError, match="execute"):
        d.dispatch(task)
    with pytest.raises(TypeError, match="execute"):
        await d.submit(task)
    s = d.stats()
    assert (s.accepted, s.rejected, s.queued) == (0, 0, 0)


async def test_dispatch_object_with_non_callable_execute_is_type_error() -> None:
    class Broken:
        execute = 5

    d = Dispatcher()
    with pytest.raises(TypeError, match="execute"):
        d.dispatch(Broken())
    assert d.stats().accepted == 0


@pytest.mark.parametrize("timeout", [-1, 0, math.nan, math.inf, "1", True])
async def test_dispatch_bad_timeout_is_a_clear_error(timeout: object) -> None:
    d = Dispatcher()
    expected = TypeError if isinstance(timeout, (str, bool)) else ValueError  # wrong kind vs wrong value
    with pytest.raises(expected, match="timeout"):
        d.dispatch(recorder([], "x"), timeout=timeout)  # type: ignore[arg-type]
    assert d.stats().accepted == 0


# -- conveniences ----------------------------------------------------------------------------------


async def test_status_compares_with_the_enum_its_value_and_its_name() -> None:
    d = Dispatcher()
    assert d.status == DispatcherStatus.STOPPED == Dispatcher.STOPPED
    assert d.status == 0 and d.status == "STOPPED" and d.status != "RUNNING"
    async with running(d):
        await wait_until(lambda: d.status == "RUNNING")
        assert d.status == 2 and str(d.status) == "RUNNING"
        await d.quit()
    assert d.status == "stopped"


async def test_stats_read_by_field_name_and_aliases() -> None:
    d = Dispatcher()
    done: list[str] = []
    assert d.dispatch(recorder(done, "a"))
    s = d.stats()
    assert s["accepted"] == s.accepted == 1
    assert s.queue_depth == s["queued"] == 1
    with pytest.raises(KeyError):
        s["nope"]
    async with running(d):
        await d.join()
        s = d.stats()
        assert s.succeeded == s["completed"] == 1 and done == ["a"]
        await d.quit()


async def test_join_after_a_run_ended_with_tasks_queued_raises_instead_of_hanging() -> None:
    d = Dispatcher()
    async with running(d):
        await d.quit()
    assert d.dispatch(recorder([], "later"))
    with anyio.fail_after(2):
        with pytest.raises(DispatcherError, match="not running"):
            await d.join()


# -- failures that are the task's own, not the worker's -------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_task_cancelled_by_its_own_future_is_a_failure_not_the_end_of_the_dispatcher() -> None:
    import asyncio

    async def awaits_a_cancelled_future() -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    done: list[str] = []
    d = Dispatcher(min_workers=1, max_workers=1)
    async with running(d):
        assert d.dispatch(awaits_a_cancelled_future)
        assert d.dispatch(recorder(done, "after"))
        with anyio.fail_after(5):
            await d.join()
        assert d.status == "RUNNING" and done == ["after"]
        s = d.stats()
        assert (s.failed, s.completed, s.handed_back) == (1, 1, 0)
        await d.quit()


async def test_a_task_that_swallows_its_timeout_is_timed_out_and_the_next_task_runs() -> None:
    done: list[str] = []

    async def swallower() -> None:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            return  # swallowed

    d = Dispatcher(min_workers=1, max_workers=1, task_timeout=0.1)
    async with running(d):
        d.dispatch(swallower)
        d.dispatch(recorder(done, "innocent", delay=0.01))
        with anyio.fail_after(5):
            await d.join()
        s = d.stats()
        assert done == ["innocent"] and (s.timed_out, s.completed) == (1, 1)
        await d.quit()


async def test_a_plain_callable_returning_a_coroutine_fails_clearly() -> None:
    async def work() -> None:
        pass

    d = Dispatcher()
    with structlog.testing.capture_logs() as logs:
        async with running(d):
            d.dispatch(lambda: work())
            with anyio.fail_after(5):
                await d.join()
            await d.quit()
    assert (d.stats().failed, d.stats().completed) == (1, 0)
    assert any("awaitable" in str(e.get("exc_info", "")) for e in logs if e["event"] == "task failed")


async def test_system_exit_in_a_plain_function_is_a_failure_and_the_pool_keeps_working() -> None:
    import sys

    done: list[str] = []

    def exits() -> None:
        sys.exit(3)

    def fine() -> None:
        done.append("fine")

    d = Dispatcher(task_timeout=None, max_threads=1)
    async with running(d):
        d.dispatch(exits)
        d.dispatch(fine)
        with anyio.fail_after(5):
            await d.join()
        await d.quit()
    assert (d.stats().failed, d.stats().completed) == (1, 1) and done == ["fine"]


async def test_max_threads_stays_a_bound_when_plain_functions_overrun() -> None:
    gate = threading.Event()
    lock = threading.Lock()
    now_running = [0, 0]  # current, peak

    def stuck() -> None:
        with lock:
            now_running[0] += 1
            now_running[1] = max(now_running)
        gate.wait(5)
        with lock:
            now_running[0] -= 1

    d = Dispatcher(max_buffered=100, max_threads=2, task_timeout=0.05)
    try:
        async with running(d):
            for _ in range(8):
                d.dispatch(stuck)
            await wait_until(lambda: d.stats().timed_out >= 2)
            await anyio.sleep(0.2)  # room for a replacement thread to (wrongly) appear
            assert now_running[1] == 2 and d.stats().threads == 2
            gate.set()
            with anyio.fail_after(10):
                await d.join()
            await d.quit()
    finally:
        gate.set()
    s = d.stats()
    assert s.accepted == 8 == s.completed + s.timed_out


async def test_tasks_queued_before_run_get_workers_at_once() -> None:
    d = Dispatcher(max_buffered=100, min_workers=1, max_workers=8)
    gate = Gate()
    for i in range(20):
        d.dispatch(gate.task(str(i)))
    async with running(d):
        await wait_until(lambda: len(gate.started) == 8)
        assert d.stats().workers == 8 and d.stats().scale_ups == 7  # min_workers, then scaled up
        gate.release.set()
        with anyio.fail_after(5):
            await d.join()
        await d.quit()


async def test_a_dispatch_that_finds_no_idle_worker_adds_one() -> None:
    d = Dispatcher(max_buffered=100, min_workers=1, max_workers=4)
    gate = Gate()
    async with running(d):
        await wait_until(lambda: d.stats().workers == 1)
        d.dispatch(gate.task("a"))
        await wait_until(lambda: gate.started == ["a"])
        d.dispatch(gate.task("b"))  # the only worker is busy: b must not wait for it
        await wait_until(lambda: gate.started == ["a", "b"])
        assert d.stats().scale_ups >= 1
        gate.release.set()
        await d.join()
        await d.quit()


# -- running again, cancelled quits, the thread pool's saturation ----------------------------------


async def test_plain_functions_run_in_every_run_after_a_quit() -> None:
    """Exit requests sent to the threads at the end of a run must not take the next run's tasks."""
    d = Dispatcher(min_workers=1, max_workers=1)
    for _ in range(30):
        async with running(d):
            await wait_until(lambda: d.status == "RUNNING")
            assert d.dispatch(lambda: None)
            with anyio.fail_after(5):
                await d.join()
            await d.quit()
    assert d.stats().completed == 30


async def test_a_cancelled_quit_leaves_the_dispatcher_running_and_its_tasks_findable() -> None:
    d = Dispatcher(min_workers=1, max_workers=1, task_timeout=None)
    gate = Gate()
    async with running(d):
        for name in ("a", "b", "c"):
            d.dispatch(gate.task(name))
        await wait_until(lambda: gate.started == ["a"])
        with anyio.move_on_after(0.05):
            await d.quit(drain=True)
        assert d.status == "RUNNING" and d.dispatch(gate.task("d"))
        with anyio.move_on_after(0.05):
            await d.quit(drain=False)
        assert d.status == "RUNNING"
        names = sorted(t.__qualname__ for t in d.handed_back)
        assert names == ["blocked_b", "blocked_c", "blocked_d"] and d.stats().handed_back == 3
        gate.release.set()
        with anyio.fail_after(5):
            await d.quit()
    s = d.stats()
    assert s.accepted == s.completed + s.handed_back == 4


async def test_a_thread_pool_backlog_counts_as_saturation() -> None:
    from nacelle_py import Health

    health = Health()
    release = threading.Event()
    d = Dispatcher(max_buffered=100, min_workers=1, max_workers=1, max_threads=1, saturated_after=0.1)
    d.health = health.for_component("jobs")  # as an App would inject it
    await d.init()
    try:
        async with running(d):
            await wait_until(lambda: health.healthy)
            for _ in range(5):
                d.dispatch(lambda: release.wait(5))
            await wait_until(lambda: not health.healthy)
            assert "saturated" in (health.get("jobs").reason or "")
            release.set()
            with anyio.fail_after(10):
                await d.join()
            await wait_until(lambda: health.healthy)
            await d.quit()
    finally:
        release.set()
