"""The blocked-loop detector (``LOOP_BLOCK_WARN``), in process, on asyncio and trio.

A component calls ``time.sleep(1)`` on the event loop: one warning, whose
stack names the function that slept, sampled from the watching thread while
the loop was stuck; counted in ``/metrics`` (a real HTTP client on the real
ops endpoint). The watching thread lives exactly as long as ``serve()``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from nacelle_py import App, ConfigError, Process
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio

Log = MutableMapping[str, Any]
WATCH_THREAD = "nacelle loop watch"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("T_") or key == "LOOP_BLOCK_WARN":
            monkeypatch.delenv(key)
    yield


def block_the_loop_for_a_second() -> None:
    """What a careless component does: a blocking call on the event loop."""
    time.sleep(1)


class Blocker(Process):
    """Once told to, blocks the loop for a second; then waits to be cancelled."""

    async def init(self) -> None:
        self.go = anyio.Event()
        self.done = anyio.Event()
        self.watching: bool | None = None

    async def run(self) -> None:
        await self.go.wait()
        self.watching = any(t.name == WATCH_THREAD for t in threading.enumerate())
        block_the_loop_for_a_second()
        self.done.set()
        await anyio.sleep_forever()


async def serve_and_block(app: App, blocker: Blocker, *, scrape: bool = False) -> tuple[int, str]:
    """Serve, let the blocker block once, scrape /metrics if asked, shut down; (status, metrics text)."""
    metrics = ""
    status: list[int] = []
    ready = anyio.Event()
    app.on_ready(ready.set)

    async def serve() -> None:
        status.append(await app.serve())

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await ready.wait()
            blocker.go.set()
            await blocker.done.wait()
            await anyio.sleep(0.3)  # the loop beats again: the "running again" line
            if scrape:
                address = app.ops_address
                assert address is not None
                async with httpx.AsyncClient(timeout=5) as client:
                    response = await client.get(f"http://{address[0]}:{address[1]}/metrics")
                assert response.status_code == 200
                metrics = response.text
            app.shutdown()
    return status[0], metrics


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WATCH_THREAD]


async def test_a_blocked_loop_is_one_warning_with_the_blocking_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_OPS_ADDR", "127.0.0.1:0")
    app = test_app("t")  # LOOP_BLOCK_WARN left at its default, 0.5 s
    blocker = app.register(Blocker(), name="blocker")
    with capture_logs() as logs:
        status, metrics = await serve_and_block(app, blocker, scrape=True)
    assert status == 0, app.errors
    assert blocker.watching is True
    assert not watch_threads()  # stopped with serve(), not leaked
    warnings = [e for e in logs if e.get("event") == "event loop blocked"]
    assert len(warnings) == 1, [e.get("event") for e in logs]
    (warning,) = warnings
    assert warning["log_level"] == "warning" and warning["threshold"] == 0.5
    assert 500 <= warning["blocked_ms"] < 1000
    stack = warning["stack"]
    # Sampled while the loop slept: the innermost frames are the component's.
    innermost = stack.strip().splitlines()[-4:]
    assert "in block_the_loop_for_a_second" in innermost[-2] and "time.sleep(1)" in innermost[-1], stack
    assert "in run" in innermost[0] and "block_the_loop_for_a_second()" in innermost[1], stack
    again = [e for e in logs if e.get("event") == "event loop running again"]
    assert len(again) == 1 and 500 <= again[0]["blocked_ms"] <= 5000
    lines = metrics.splitlines()
    assert "# TYPE nacelle_loop_blocked_total counter" in lines
    assert any(line.startswith("# HELP nacelle_loop_blocked_total ") for line in lines)
    assert "nacelle_loop_blocked_total 1.0" in lines


async def test_none_turns_the_detector_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOOP_BLOCK_WARN", "none")
    monkeypatch.setenv("T_OPS_ADDR", "127.0.0.1:0")
    app = test_app("t")
    blocker = app.register(Blocker(), name="blocker")
    with capture_logs() as logs:
        status, metrics = await serve_and_block(app, blocker, scrape=True)
    assert status == 0, app.errors
    assert blocker.watching is False  # no thread at all
    assert not [e for e in logs if str(e.get("event")).startswith("event loop")]
    assert "nacelle_loop_blocked_total 0.0" in metrics.splitlines()


async def test_a_lower_threshold_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOOP_BLOCK_WARN", "0.2")
    app = test_app("t")
    blocker = app.register(Blocker(), name="blocker")
    with capture_logs() as logs:
        status, _ = await serve_and_block(app, blocker)
    assert status == 0, app.errors
    (warning,) = [e for e in logs if e.get("event") == "event loop blocked"]
    assert warning["threshold"] == 0.2 and 200 <= warning["blocked_ms"] < 1000
    assert "in block_the_loop_for_a_second" in warning["stack"]


@pytest.mark.parametrize("value", ["0", "-1", "abc", "inf"])
async def test_a_bad_value_is_a_config_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("T_LOOP_BLOCK_WARN", value)
    app = test_app("t")
    app.register(Blocker(), name="blocker")
    with anyio.fail_after(5):
        status = await app.serve()
    assert status == 1
    (error,) = app.errors
    assert isinstance(error.cause, ConfigError)
    (problem,) = error.cause.errors
    assert problem.env == "T_LOOP_BLOCK_WARN" and problem.field == "loop_block_warn"
    assert f"got {value!r}" in problem.message
    assert not watch_threads()


async def test_an_idle_app_has_no_warning_and_no_thread_after_serve() -> None:
    app = test_app("t")

    class Idle(Process):
        async def run(self) -> None:
            await anyio.sleep(0.8)  # a quiet loop for longer than the threshold

    app.register(Idle(), name="idle")
    with capture_logs() as logs:
        with anyio.fail_after(10):
            status = await app.serve()  # the run returns: the app ends
    assert status == 0
    assert not [e for e in logs if e.get("event") == "event loop blocked"]
    assert not watch_threads()
