"""Dispatcher as a Process in an App: health, logging, stop drains, an unwind hands back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
import structlog
from _support import serving, wait_until

from nacelle_py import ComponentTimeoutError, Process
from nacelle_py.base import Dispatcher, DispatcherStatus
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio


def blocker(release: anyio.Event, started: list[str], name: str) -> Callable[[], Any]:
    async def task() -> None:
        started.append(name)
        await release.wait()

    task.__qualname__ = f"blocker_{name}"
    return task


async def test_healthy_once_running_and_stop_drains() -> None:
    app = test_app("t")
    d = app.register(Dispatcher(max_buffered=100, min_workers=2, max_workers=4), name="jobs", priority=1)
    done: list[int] = []

    def task(i: int) -> Callable[[], Any]:
        async def run() -> None:
            await anyio.sleep(0.005)
            done.append(i)

        return run

    async with serving(app) as served:
        flag = app.health.get("jobs")  # the health key is the component's name
        assert flag.healthy and flag.component == "jobs"
        assert d.status == DispatcherStatus.RUNNING
        for i in range(40):
            assert d.dispatch(task(i))
    assert served.status == 0, app.errors
    assert sorted(done) == list(range(40))  # stop() drained every accepted task
    s = d.stats()
    assert (s.status, s.accepted, s.completed, s.handed_back) == (DispatcherStatus.STOPPED, 40, 40, 0)
    assert not app.health.get("jobs").healthy  # stopped


async def test_logs_carry_the_component_name() -> None:
    app = test_app("t")
    d = app.register(Dispatcher(min_workers=1, max_workers=1), name="jobs")

    async def fails() -> None:
        raise ValueError("nope")

    with structlog.testing.capture_logs() as logs:
        async with serving(app) as served:
            d.dispatch(fails)
            await wait_until(lambda: d.stats().failed == 1)
    assert served.status == 0, app.errors  # a failed task is not an app failure
    (entry,) = [e for e in logs if e["event"] == "task failed"]
    assert entry["component"] == "jobs" and isinstance(entry["exc_info"], ValueError)


async def test_unwind_past_shutdown_timeout_hands_back_running_and_queued() -> None:
    app = test_app("t")
    d = app.register(
        Dispatcher(max_buffered=10, min_workers=1, max_workers=1, task_timeout=None),
        name="jobs",
        shutdown_timeout=0.2,
    )
    release = anyio.Event()  # never set: the running task outlives the shutdown timeout
    started: list[str] = []
    tasks = [blocker(release, started, str(i)) for i in range(4)]
    with structlog.testing.capture_logs() as logs:
        async with serving(app) as served:
            for t in tasks:
                assert d.dispatch(t)
            await wait_until(lambda: started == ["0"])
    assert served.status == 1
    # The runner reports the stop timeout (sometimes twice: stop() and the run's wait share a deadline).
    assert app.errors and {(type(e), e.component, e.operation) for e in app.errors} == {
        (ComponentTimeoutError, "jobs", "stop")
    }, [str(e) for e in app.errors]
    assert sorted(d.handed_back, key=tasks.index) == tasks  # the running one too, each once
    s = d.stats()
    assert (s.status, s.accepted, s.handed_back, s.completed, s.running, s.queued) == (
        DispatcherStatus.STOPPED,
        4,
        4,
        0,
        0,
        0,
    )
    assert started == ["0"]
    assert any(e["event"] == "dispatcher unwound with tasks not run" for e in logs)


async def test_unwind_counts_every_accepted_task_once() -> None:
    # A mix: some finish during stop(), one hangs past the timeout, the rest never start.
    app = test_app("t")
    d = app.register(
        Dispatcher(max_buffered=50, min_workers=1, max_workers=2, task_timeout=None),
        name="jobs",
        shutdown_timeout=0.2,
    )
    hang = anyio.Event()
    done: list[int] = []

    def quick(i: int) -> Callable[[], Any]:
        async def run() -> None:
            await anyio.sleep(0.001)
            done.append(i)

        return run

    async with serving(app):
        accepted = sum(d.dispatch(quick(i)) for i in range(10))
        accepted += d.dispatch(blocker(hang, [], "a")) + d.dispatch(blocker(hang, [], "b"))
        accepted += sum(d.dispatch(quick(i)) for i in range(10, 20))
    s = d.stats()
    assert accepted == 22
    assert s.accepted == accepted == s.completed + s.failed + s.timed_out + s.handed_back
    assert s.handed_back == len(d.handed_back) >= 2
    assert s.completed == len(done)


async def test_unhealthy_while_saturated_then_recovers() -> None:
    app = test_app("t")
    d = app.register(
        Dispatcher(max_buffered=10, min_workers=1, max_workers=1, task_timeout=1.0, saturated_after=0.1),
        name="jobs",
    )
    release = anyio.Event()
    started: list[str] = []
    async with serving(app) as served:
        flag = app.health.get("jobs")
        assert flag.healthy
        d.dispatch(blocker(release, started, "a"))
        d.dispatch(blocker(release, started, "b"))  # waits: every worker is busy
        await wait_until(lambda: not flag.healthy)
        assert flag.reason is not None and "saturated" in flag.reason
        release.set()
        await wait_until(lambda: flag.healthy)
        assert flag.reason is None
    assert served.status == 0, app.errors
    assert started == ["a", "b"] and d.stats().completed == 2


async def test_busy_but_not_saturated_stays_healthy() -> None:
    # Every worker busy with nothing waiting is full use, not saturation.
    app = test_app("t")
    d = app.register(
        Dispatcher(max_buffered=10, min_workers=2, max_workers=2, task_timeout=1.0, saturated_after=0.05),
        name="jobs",
    )
    release = anyio.Event()
    started: list[str] = []
    seen: list[bool] = []
    async with serving(app):
        flag = app.health.get("jobs")
        app.health.subscribe(lambda c: seen.append(c.healthy) if c.key == "jobs" else None)
        d.dispatch(blocker(release, started, "a"))
        d.dispatch(blocker(release, started, "b"))
        await wait_until(lambda: len(started) == 2)
        await anyio.sleep(0.3)  # several monitor passes past saturated_after
        assert flag.healthy and seen == []
        release.set()


async def test_dispatch_after_the_dispatcher_stopped_is_not_silently_lost() -> None:
    # A lower-priority component stops after the dispatcher (priority 1) and dispatches in its stop().
    app = test_app("t")
    d = app.register(Dispatcher(min_workers=1, max_workers=1), name="jobs", priority=1)
    ran: list[str] = []

    async def late() -> None:
        ran.append("late")

    class Producer(Process):
        accepted: bool | None = None

        async def run(self) -> None:
            self.released = anyio.Event()
            await self.released.wait()

        async def stop(self) -> None:
            self.accepted = d.dispatch(late)
            self.released.set()

    producer = app.register(Producer(), name="producer", priority=0)
    async with serving(app) as served:
        pass
    assert served.status == 0, app.errors
    assert producer.accepted is not None
    s = d.stats()
    # Either refused, or it has an outcome or was handed back: never accepted and forgotten.
    assert not producer.accepted or ran == ["late"] or late in d.handed_back, (producer.accepted, s)
