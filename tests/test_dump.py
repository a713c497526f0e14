"""The dump (SIGUSR1, ``App.dump()``), in process, on asyncio and trio.

Every component's name, kind, state and priority, the stack of every task
of the loop (a tree) and of every other thread, logged without stopping
anything.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest
from _serving import serving
from structlog.testing import capture_logs

from nacelle_py import Initializer, Process
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio

Log = MutableMapping[str, Any]


class Waiter(Process):
    """Waits in a function with a name to look for in the dump."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    async def run(self) -> None:
        await self.parked_in_a_recognisable_place()

    async def parked_in_a_recognisable_place(self) -> None:
        self.trace.add("waiter.parked")
        await anyio.sleep_forever()


class Blocking(Process):
    """A plain ``def run`` on its thread, until stopped."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def run(self) -> None:
        self.started.set()
        self.release.wait(10)

    def stop(self) -> None:
        self.release.set()


class Ready(Initializer):
    pass


def only(logs: list[Log], event: str) -> Log:
    found = [e for e in logs if e.get("event") == event]
    assert len(found) == 1, [e.get("event") for e in logs]
    return found[0]


async def wait_for_log(logs: list[Log], event: str, limit: float = 5.0) -> None:
    with anyio.fail_after(limit):
        while not any(e.get("event") == event for e in logs):
            await anyio.sleep(0.005)


async def test_dump_lists_components_tasks_and_threads_and_stops_nothing(anyio_backend: str) -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Ready(), name="ready", priority=0)
    app.register(Waiter(trace), name="waiter", priority=1)
    blocking = app.register(Blocking(), name="blocking", priority=1)
    with capture_logs() as logs:
        async with serving(app) as status:
            assert blocking.started.wait(5)
            app.dump()
            app.dump()  # twice: nothing was stopped by the first
            assert "waiter.parked" in trace
    assert status == [0] and app.errors == ()
    components = [e for e in logs if e.get("event") == "dump: components"]
    assert len(components) == 2
    first = components[0]
    assert first["log_level"] == "warning" and first["phase"] == "running" and first["reason"] == "dump() called"
    assert [(c["name"], c["kind"], c["state"], c["priority"]) for c in first["components"]] == [
        ("ready", "initializer", "initialized", 0),
        ("waiter", "process", "running", 1),
        ("blocking", "process", "running", 1),
    ]
    tasks = [e for e in logs if e.get("event") == "dump: tasks"][0]
    assert tasks["backend"] == anyio_backend and tasks["tasks"] >= 3
    stack = tasks["stack"]
    assert "task 'nacelle run waiter'" in stack
    assert "in parked_in_a_recognisable_place" in stack and "await anyio.sleep_forever()" in stack
    # A tree: the run is indented under the task that hosts the runs.
    run_line = next(line for line in stack.splitlines() if "task 'nacelle run waiter'" in line)
    assert run_line.startswith("  ")
    threads = [e for e in logs if e.get("event") == "dump: threads"][0]
    assert "thread 'nacelle blocking.run'" in threads["stack"] and "self.release.wait(10)" in threads["stack"]
    assert threads["threads"] >= 2  # the run's thread and the loop watch, at least
    # The app was not stopped by the dumps: its unwind began only at the test's shutdown.
    stopping = [i for i, e in enumerate(logs) if e.get("event") == "shutdown requested"]
    assert len(stopping) == 1 and stopping[0] > logs.index(components[1])


async def test_dump_from_another_thread() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Waiter(trace), name="waiter")
    with capture_logs() as logs:
        async with serving(app) as status:
            await anyio.to_thread.run_sync(app.dump)
            await wait_for_log(logs, "dump: threads")
    assert status == [0]
    assert "in parked_in_a_recognisable_place" in only(logs, "dump: tasks")["stack"]


async def test_dump_when_not_serving_is_ignored() -> None:
    app = test_app("t")
    app.register(Waiter(Trace()), name="waiter")
    with capture_logs() as logs:
        app.dump()
        async with serving(app) as status:
            pass
        app.dump()
    assert status == [0]
    assert sum(e.get("event") == "dump ignored: the app is not serving" for e in logs) == 2
    assert not [e for e in logs if e.get("event") == "dump: components"]


async def test_sigusr1_dumps_when_the_app_handles_signals() -> None:
    """A real SIGUSR1 to this process, sent only once the app's handler is installed."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled on the main thread only")
    trace = Trace()
    before = signal.getsignal(signal.SIGUSR1)
    app = test_app("t", handle_signals=True)
    app.register(Waiter(trace), name="waiter")
    with capture_logs() as logs:
        async with serving(app) as status:
            assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, before)
            os.kill(os.getpid(), signal.SIGUSR1)
            await wait_for_log(logs, "dump: threads")
            assert app.errors == ()
    assert status == [0]
    assert signal.getsignal(signal.SIGUSR1) == before
    assert only(logs, "dump: components")["reason"] == "signal SIGUSR1"
    assert "in parked_in_a_recognisable_place" in only(logs, "dump: tasks")["stack"]
