"""Reload (SIGHUP, ``App.reload()``), in process, on asyncio and trio.

The settings live in a real ``.env`` file (``App(env_file=...)``), the one
source besides a secrets directory that a running process can see change.
Order is asserted on a recorded ``Trace``; waits are on log lines and trace
events, each bounded.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from _serving import serving
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from structlog.testing import capture_logs

from nacelle_py import Initializer, Inject, Process
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio

Log = MutableMapping[str, Any]


class Boom(Exception):
    """The error a test's component raises on purpose."""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing from the developer's shell leaks into these tests (the env would beat the file)."""
    for key in list(os.environ):
        if key.startswith("T_") or key in ("GREETING", "LIMIT_SIZE", "RATIO", "RELOAD_TIMEOUT"):
            monkeypatch.delenv(key)
    yield


# -- settings and components -------------------------------------------------------------------


class Greeting(BaseSettings):
    """What the components say."""

    greeting: str = Field("hello", description="A word.")


class Limits(BaseSettings):
    """A model with its own prefix and a typed field, to make invalid."""

    model_config = SettingsConfigDict(env_prefix="LIMIT_")

    size: int = Field(1, description="A size.")


class Ratio(BaseSettings):
    """A second model to make invalid in the same reload."""

    ratio: float = Field(1.0, gt=0, description="A ratio.")


class Reloading(Process):
    """Runs until cancelled; its async reload() records the greeting it sees (and may fail or hang)."""

    greeting: Greeting = Inject()
    limits: Limits = Inject()
    ratio: Ratio = Inject()

    def __init__(self, trace: Trace, name: str, *, fail: bool = False, hang: bool = False) -> None:
        self.trace, self.name, self.fail, self.hang = trace, name, fail, hang
        self.gate: anyio.Event | None = None  # set by the test: the first reload() waits for it

    async def run(self) -> None:
        await anyio.sleep_forever()

    async def reload(self) -> None:
        self.trace.add(f"{self.name}.reload.start")
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
        if self.hang:
            await anyio.sleep_forever()
        if self.fail:
            raise Boom(f"{self.name} cannot reload")
        self.trace.add(f"{self.name}.reload:{self.greeting.greeting}")


class PlainReloading(Initializer):
    """An initializer with a plain ``def reload()``: it runs on a thread of its own."""

    greeting: Greeting = Inject()

    def __init__(self, trace: Trace, name: str, *, hang: threading.Event | None = None) -> None:
        self.trace, self.name, self.hang = trace, name, hang

    def reload(self) -> None:
        thread = threading.current_thread().name
        if self.hang is not None:
            self.hang.wait(5)
        self.trace.add(f"{self.name}.reload:{self.greeting.greeting}@{thread}")


class Unaware(Process):
    """Reads the same settings but defines no reload(): it keeps what it booted with."""

    greeting: Greeting = Inject()

    async def run(self) -> None:
        await anyio.sleep_forever()


class Restarting(Process):
    """Fails once when told to; its restart waits out a long backoff (unless the app stops)."""

    greeting: Greeting = Inject()

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.runs = 0
        self.fail_now: anyio.Event | None = None

    async def init(self) -> None:
        if self.fail_now is None:
            self.fail_now = anyio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            assert self.fail_now is not None
            await self.fail_now.wait()
            raise Boom("first run fails")
        await anyio.sleep_forever()

    async def reload(self) -> None:
        self.trace.add("restarting.reload")


# -- helpers -----------------------------------------------------------------------------------


def env_file(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "settings.env"
    path.write_text(text)
    return path


def count(logs: list[Log], event: str, **fields: Any) -> int:
    return sum(1 for e in logs if e.get("event") == event and all(e.get(k) == v for k, v in fields.items()))


def find(logs: list[Log], event: str, **fields: Any) -> Log:
    for e in logs:
        if e.get("event") == event and all(e.get(k) == v for k, v in fields.items()):
            return e
    raise AssertionError(f"no log {event!r} {fields} in {[e.get('event') for e in logs]}")


async def until(predicate: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    """Poll ``predicate`` every 5 ms; fail the test after ``limit`` seconds."""
    with anyio.move_on_after(limit):
        while not predicate():
            await anyio.sleep(0.005)
        return
    raise AssertionError(f"not within {limit}s: {what}")


async def reloaded(logs: list[Log], n: int = 1) -> None:
    """Wait until ``n`` reloads have ended (accepted or rejected)."""

    def ended() -> int:
        return sum(1 for e in logs if e.get("event") == "reloaded" or str(e.get("event")).startswith("reload rejected"))

    await until(lambda: ended() >= n, f"{n} reload(s) ended")


async def test_valid_config_reloads_in_priority_order_with_fresh_settings(tmp_path: Path) -> None:
    trace = Trace()
    path = env_file(tmp_path, "T_GREETING=hello\n")
    app = test_app("t", env_file=path)
    app.register(Reloading(trace, "c"), name="c", priority=2)
    app.register(PlainReloading(trace, "a"), name="a", priority=0)
    app.register(Reloading(trace, "d"), name="d", priority=1)
    unaware = app.register(Unaware(), name="u", priority=1)
    app.register(Reloading(trace, "b"), name="b", priority=1)
    with capture_logs() as logs:
        async with serving(app) as status:
            path.write_text("T_GREETING=bonjour\n")
            app.reload()
            await reloaded(logs)
            assert app.config.load(Greeting).greeting == "bonjour"  # config.load sees the new model too
    assert status == [0] and app.errors == ()
    assert [e for e in trace if ".reload:" in e] == [
        "a.reload:bonjour@nacelle a.reload",  # priority 0 first; a plain def on a thread of its own
        "d.reload:bonjour",  # priority 1 in registration order
        "b.reload:bonjour",
        "c.reload:bonjour",
    ]
    assert unaware.greeting.greeting == "hello"  # no reload(): it keeps the settings it booted with
    changed = find(logs, "config reloaded", settings="Greeting")
    assert changed["values"] == {"greeting": "bonjour"}
    done = find(logs, "reloaded")
    assert done["settings_changed"] == ["Greeting"] and done["components"] == 4 and done["failed"] == 0
    assert count(logs, "reload finished") == 4


async def test_invalid_config_keeps_the_old_one_and_logs_every_error(tmp_path: Path) -> None:
    trace = Trace()
    path = env_file(tmp_path, "T_GREETING=hello\n")
    app = test_app("t", env_file=path)
    app.register(Reloading(trace, "a"), name="a")
    with capture_logs() as logs:
        async with serving(app) as status:
            # One valid change and two invalid values in two models: all or nothing.
            path.write_text("T_GREETING=bonjour\nT_LIMIT_SIZE=big\nT_RATIO=-1\n")
            app.reload()
            await reloaded(logs)
            assert app.config.load(Greeting).greeting == "hello"
            assert app.config.load(Limits).size == 1
            assert not [e for e in trace if ".reload" in e]
            # Fixed: the next reload goes through.
            path.write_text("T_GREETING=bonjour\nT_LIMIT_SIZE=3\n")
            app.reload()
            await reloaded(logs, 2)
            assert app.config.load(Limits).size == 3
    assert status == [0] and app.errors == ()  # a rejected reload does not fail the app
    rejected = find(logs, "reload rejected: invalid configuration; the current settings stay")
    assert rejected["log_level"] == "error" and rejected["problems"] == 2
    errors = rejected["errors"]
    assert any(e.startswith("T_LIMIT_SIZE: ") and "'big'" in e and "(Limits.size)" in e for e in errors), errors
    assert any(e.startswith("T_RATIO: ") and "greater than 0" in e and "(Ratio.ratio)" in e for e in errors), errors
    assert [e for e in trace if ".reload:" in e] == ["a.reload:bonjour"]


async def test_a_failing_reload_is_logged_and_the_app_runs_on(tmp_path: Path) -> None:
    trace = Trace()
    app = test_app("t", env_file=env_file(tmp_path, "T_GREETING=hola\n"))
    app.register(Reloading(trace, "a"), name="a", priority=0)
    app.register(Reloading(trace, "b", fail=True), name="b", priority=1)
    app.register(Reloading(trace, "c"), name="c", priority=2)
    with capture_logs() as logs:
        async with serving(app) as status:
            app.reload()
            await reloaded(logs)
            app.dump()  # the failure is on b's record
            failed = find(logs, "b: reload failed: Boom: b cannot reload")
            assert failed["component"] == "b" and failed["operation"] == "reload"
            assert isinstance(failed["exc_info"], Boom)
            # Still running: a second reload goes through every component again.
            app.reload()
            await reloaded(logs, 2)
    assert status == [0] and app.errors == ()
    assert [e for e in trace if e.endswith(":hola")] == ["a.reload:hola", "c.reload:hola"] * 2
    done = find(logs, "reloaded")
    assert done["log_level"] == "warning" and done["components"] == 3 and done["failed"] == 1
    (b,) = [c for c in find(logs, "dump: components")["components"] if c["name"] == "b"]
    assert b["state"] == "running" and b["error_count"] == 1 and "Boom" in b["last_error"]


async def test_reload_timeout_bounds_each_reload(tmp_path: Path) -> None:
    trace = Trace()
    release = threading.Event()
    app = test_app("t", env_file=env_file(tmp_path))
    app.register(Reloading(trace, "async", hang=True), name="async", priority=0, reload_timeout=0.2)
    app.register(PlainReloading(trace, "plain", hang=release), name="plain", priority=1, reload_timeout=0.2)
    app.register(Reloading(trace, "last"), name="last", priority=2)
    try:
        with capture_logs() as logs:
            async with serving(app) as status:
                app.reload()
                await reloaded(logs)
    finally:
        release.set()
    assert status == [0] and app.errors == ()
    for name in ("async", "plain"):
        error = find(logs, f"{name}: reload failed: reload() did not return within 0.2s; cancelled")
        assert error["component"] == name and error["operation"] == "reload"
    assert "last.reload:hello" in trace
    assert find(logs, "reloaded")["failed"] == 2


async def test_reload_timeout_defaults_to_the_app_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_RELOAD_TIMEOUT", "0.1")
    trace = Trace()
    app = test_app("t", env_file=env_file(tmp_path))
    app.register(Reloading(trace, "a", hang=True), name="a")
    with capture_logs() as logs:
        async with serving(app) as status:
            app.reload()
            await reloaded(logs)
    assert status == [0]
    assert count(logs, "a: reload failed: reload() did not return within 0.1s; cancelled") == 1


async def test_requests_during_a_reload_coalesce_into_one_more(tmp_path: Path) -> None:
    trace = Trace()
    app = test_app("t", env_file=env_file(tmp_path))
    slow = app.register(Reloading(trace, "a"), name="a")
    slow.gate = gate = anyio.Event()
    with capture_logs() as logs:
        async with serving(app) as status:
            app.reload()
            await until(lambda: "a.reload.start" in trace, "the first reload began")
            for _ in range(3):
                app.reload()
            assert count(logs, "reload queued: a reload is in progress; one more follows it") == 3
            gate.set()
            await reloaded(logs, 2)
    assert status == [0]
    assert [e["requests"] for e in logs if e.get("event") == "reloading"] == [1, 3]
    assert trace.events.count("a.reload:hello") == 2


async def test_a_reload_asked_for_during_boot_runs_once_the_app_is_running(tmp_path: Path) -> None:
    trace = Trace()
    app = test_app("t", env_file=env_file(tmp_path))

    class AsksDuringInit(Initializer):
        async def init(self) -> None:
            app.reload()
            trace.add("init")

    app.register(AsksDuringInit(), name="asker", priority=0)
    app.register(Reloading(trace, "a"), name="a", priority=1)
    app.on_ready(lambda: trace.add("ready"))
    with capture_logs() as logs:
        async with serving(app) as status:
            await reloaded(logs)
    assert status == [0]
    assert count(logs, "reload deferred: the app is booting; it reloads once running") == 1
    assert trace.events == ["init", "ready", "a.reload.start", "a.reload:hello"]


async def test_a_reload_asked_for_while_stopping_is_ignored(tmp_path: Path) -> None:
    trace = Trace()
    app = test_app("t", env_file=env_file(tmp_path))

    class AsksWhileStopping(Process):
        async def init(self) -> None:
            self.stopped = anyio.Event()

        async def run(self) -> None:
            await self.stopped.wait()

        async def stop(self) -> None:
            app.reload()
            trace.add("stop")
            self.stopped.set()

    app.register(Reloading(trace, "a"), name="a", priority=0)
    app.register(AsksWhileStopping(), name="asker", priority=1)
    with capture_logs() as logs:
        async with serving(app) as status:
            pass
    assert status == [0], app.errors
    assert "stop" in trace and not [e for e in trace if "reload" in e]
    assert count(logs, "reload ignored: the app is stopping") == 1


async def test_a_stop_cuts_a_hanging_reload_short(tmp_path: Path) -> None:
    trace = Trace()
    app = test_app("t", env_file=env_file(tmp_path))
    app.register(Reloading(trace, "a", hang=True), name="a", priority=0, reload_timeout=None)
    app.register(Reloading(trace, "b"), name="b", priority=1)
    with capture_logs() as logs:
        async with serving(app, limit=5) as status:  # the stop gives it half a second, not forever
            app.reload()
            await until(lambda: "a.reload.start" in trace, "the reload began")
    assert status == [0] and app.errors == ()
    assert count(logs, "reload cut short: the app is stopping") == 1
    assert "b.reload.start" not in trace


async def test_a_restarting_component_is_skipped(tmp_path: Path) -> None:
    trace = Trace()
    app = test_app("t", env_file=env_file(tmp_path))
    flaky = app.register(Restarting(trace), name="flaky", priority=0, restart="on_failure", backoff=(30.0, 30.0))
    app.register(Reloading(trace, "a"), name="a", priority=1)
    with capture_logs() as logs:
        async with serving(app) as status:
            assert flaky.fail_now is not None
            flaky.fail_now.set()
            await until(lambda: count(logs, "restarting component") == 1, "the restart began")
            app.reload()
            await reloaded(logs)
    assert status == [0]
    skipped = find(logs, "reload skipped: not running", component="flaky")
    assert skipped["state"] in ("restarting", "finalized")
    assert "restarting.reload" not in trace and "a.reload:hello" in trace


async def test_reload_when_not_serving_is_ignored(tmp_path: Path) -> None:
    trace = Trace()
    app = test_app("t", env_file=env_file(tmp_path))
    app.register(Reloading(trace, "a"), name="a")
    with capture_logs() as logs:
        app.reload()
        async with serving(app) as status:
            pass
        app.reload()
    assert status == [0]
    assert count(logs, "reload ignored: the app is not serving") == 2
    assert not [e for e in trace if "reload" in e]


async def test_reload_from_another_thread(tmp_path: Path) -> None:
    trace = Trace()
    path = env_file(tmp_path)
    app = test_app("t", env_file=path)
    app.register(Reloading(trace, "a"), name="a")
    with capture_logs() as logs:
        async with serving(app) as status:
            path.write_text("GREETING=ciao\n")  # the unprefixed name works in the file too
            await anyio.to_thread.run_sync(app.reload)
            await reloaded(logs)
    assert status == [0]
    assert "a.reload:ciao" in trace
    assert find(logs, "reloading")["reason"] == "reload() called"


# -- SIGHUP --------------------------------------------------------------------------------------


async def test_sighup_reloads_when_the_app_handles_signals(tmp_path: Path) -> None:
    """A real SIGHUP to this process, sent only once the app's handler is installed."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled on the main thread only")
    trace = Trace()
    path = env_file(tmp_path)
    before = signal.getsignal(signal.SIGHUP)
    app = test_app("t", env_file=path, handle_signals=True)
    app.register(Reloading(trace, "a"), name="a")
    with capture_logs() as logs:
        async with serving(app) as status:
            assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, before)
            path.write_text("T_GREETING=salut\n")
            os.kill(os.getpid(), signal.SIGHUP)
            await reloaded(logs)
            assert app.config.load(Greeting).greeting == "salut"
    assert status == [0] and app.errors == ()
    assert signal.getsignal(signal.SIGHUP) == before  # put back as it was
    assert find(logs, "reloading")["reason"] == "signal SIGHUP"
    assert "a.reload:salut" in trace


async def test_without_signal_handling_sighup_is_left_alone(tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    app = test_app("t", env_file=env_file(tmp_path))  # handle_signals=False
    app.register(Unaware(), name="u")
    seen: dict[int, Any] = {}
    async with serving(app) as status:
        seen = {s: signal.getsignal(s) for s in before}
    assert status == [0]
    assert seen == before


def test_the_reload_hook_is_part_of_the_component_api() -> None:
    assert Initializer().reload() is None and Process().reload() is None
    assert "SIGHUP" in (Initializer.reload.__doc__ or "")
