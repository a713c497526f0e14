"""systemd's notification protocol: STATUS per priority, READY=1 once healthy, STATUS on changes, STOPPING=1,
WATCHDOG=1 at half of WATCHDOG_USEC, and what happens when the socket is missing or a setting is bad.

Each test binds a real Unix datagram socket (a path in a temporary directory, or the abstract
namespace) and points NOTIFY_SOCKET at it. Datagrams are read without blocking: a pump task drains
the socket while the app serves (Linux queues only ``net.unix.max_dgram_qlen`` datagrams, often 10,
and the sender never blocks), and a component can drain it synchronously to see what was sent before
its own step. Order is asserted on one recorded trace of datagrams and steps; every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from nacelle_py import App, ConfigError, Health, Initializer, Inject, Process
from nacelle_py.testing import Trace

pytestmark = pytest.mark.anyio

SD = "sd:"  # the prefix of a datagram in the trace


class Boom(Exception):
    """The error a test's component raises on purpose."""


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``predicate`` every 2 ms; fail the test after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.002)


class Notifications:
    """What arrives on our end of NOTIFY_SOCKET, in arrival order, also recorded in ``trace``."""

    def __init__(self, sock: socket.socket, trace: Trace) -> None:
        self.sock = sock
        self.trace = trace
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        """Read every datagram that is waiting (never blocks); returns all messages so far."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return list(self.messages)
            message = data.decode()
            self.messages.append(message)
            self.trace.add(SD + message)

    async def pump(self) -> None:
        """Drain every 2 ms until cancelled, so that the socket's queue never fills."""
        while True:
            self.drain()
            await anyio.sleep(0.002)

    async def until(self, predicate: Callable[[list[str]], bool], limit: float = 5.0) -> list[str]:
        """Drain until ``predicate(messages)`` holds; bounded."""
        with anyio.fail_after(limit):
            while not predicate(self.drain()):
                await anyio.sleep(0.002)
        return list(self.messages)

    def count(self, message: str) -> int:
        return self.drain().count(message)

    def lifecycle(self) -> list[str]:
        """Every message but the watchdog's pings (which interleave with the rest at any point)."""
        return [m for m in self.drain() if m != "WATCHDOG=1"]


def short_dir(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, or a shorter directory when a socket path in it would pass the 107-byte limit."""
    if len(str(tmp_path / "notify.sock")) < 100:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="sd-") as name:
        yield Path(name)


@pytest.fixture
def trace() -> Trace:
    return Trace()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trace: Trace) -> Iterator[Notifications]:
    """A datagram socket bound in a temporary directory, named by NOTIFY_SOCKET."""
    for directory in short_dir(tmp_path):
        path = directory / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind(str(path))
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
            yield Notifications(sock, trace)
        finally:
            sock.close()


@pytest.fixture
def abstract_notify(monkeypatch: pytest.MonkeyPatch, trace: Trace) -> Iterator[Notifications]:
    """A datagram socket in the abstract namespace, named ``@name`` by NOTIFY_SOCKET as systemd does."""
    name = f"nacelle-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Notifications(sock, trace)
    finally:
        sock.close()


# -- components ------------------------------------------------------------------------------------


class Gate(Process):
    """Registers its health key (its name) in init; healthy once ``run`` starts (after ``healthy_gate``).

    ``stop_gate`` holds ``stop()``; ``notes``, when given, is drained at each step so that the trace
    shows exactly which datagrams were sent before it. ``flag`` flips the key afterwards.
    """

    health: Health = Inject("health")

    def __init__(
        self,
        trace: Trace,
        key: str,
        *,
        notes: Notifications | None = None,
        healthy_gate: anyio.Event | None = None,
        stop_gate: anyio.Event | None = None,
    ) -> None:
        self.trace, self.key, self.notes = trace, key, notes
        self.healthy_gate, self.stop_gate = healthy_gate, stop_gate

    def _step(self, event: str) -> None:
        if self.notes is not None:
            self.notes.drain()
        self.trace.add(f"{self.key}.{event}")

    async def init(self) -> None:
        self.flag = self.health.register(self.key)
        self.released = anyio.Event()
        self._step("init")

    async def run(self) -> None:
        if self.healthy_gate is not None:
            self._step("healthy.waiting")
            await self.healthy_gate.wait()
        self._step("healthy")
        self.flag.update(True)
        await self.released.wait()

    async def stop(self) -> None:
        self._step("stop")
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        self.released.set()

    async def finalize(self) -> None:
        self._step("finalize")


class Failing(Initializer):
    """An initializer whose init fails."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    async def init(self) -> None:
        await anyio.sleep(0)
        self.trace.add("failing.init")
        raise Boom("no database")


class Served:
    """The exit status of a background ``serve()``, and an event set once it returned."""

    status: int | None = None
    done: anyio.Event


@asynccontextmanager
async def serving(
    app: App, notes: Notifications | None, *, wait_ready: bool = True, limit: float = 10.0
) -> AsyncIterator[Served]:
    """Serve ``app`` (and pump ``notes``) in the background until the block ends, which calls ``app.shutdown()``."""
    ready = anyio.Event()
    done = anyio.Event()
    app.on_ready(ready.set)
    served = Served()
    served.done = done

    async def serve() -> None:
        served.status = await app.serve()
        ready.set()  # a boot that fails must not leave the block waiting
        done.set()

    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            if notes is not None:
                tg.start_soon(notes.pump)
            tg.start_soon(serve)
            if wait_ready:
                await ready.wait()
            try:
                yield served
            finally:
                if not done.is_set():
                    app.shutdown()
                await done.wait()
                if notes is not None:
                    notes.drain()
                tg.cancel_scope.cancel()  # the pump


def make_app(**kwargs: Any) -> App:
    return App("t", handle_signals=False, **kwargs)


def sd_events(trace: Trace) -> list[str]:
    """The trace with the watchdog's pings left out."""
    return [e for e in trace.events if e != SD + "WATCHDOG=1"]


# -- the lifecycle, as systemd sees it --------------------------------------------------------------


async def test_status_per_priority_then_ready_only_once_every_priority_is_healthy(
    notify: Notifications, trace: Trace
) -> None:
    healthy_gate = anyio.Event()
    app = make_app()
    app.register(Gate(trace, "db", notes=notify), name="db")
    app.register(Gate(trace, "cache", notes=notify), name="cache")
    app.register(Gate(trace, "late", notes=notify, healthy_gate=healthy_gate), name="late", priority=1)
    async with serving(app, notify, wait_ready=False) as served:
        await notify.until(lambda ms: any(m.startswith("STATUS=starting priority 1") for m in ms))
        await wait_until(lambda: "late.healthy.waiting" in trace)
        for _ in range(10):  # the loop runs on while priority 1 is unhealthy: still no READY=1
            await anyio.sleep(0.005)
            assert not any("READY=1" in m for m in notify.drain()), notify.messages
        trace.add("test.release")
        healthy_gate.set()
        await notify.until(lambda ms: any("READY=1" in m for m in ms))
    assert served.status == 0, app.errors
    lifecycle = notify.lifecycle()
    assert lifecycle[:3] == [
        "STATUS=starting priority 0 (2 components)",
        "STATUS=starting priority 1 (1 component)",
        "READY=1\nSTATUS=ready: 3 components healthy",
    ]
    assert [m for m in lifecycle if "READY=1" in m] == [lifecycle[2]]  # once
    events = trace.events
    assert events.index(SD + "STATUS=starting priority 0 (2 components)") < events.index("db.init")
    assert events.index(SD + "STATUS=starting priority 1 (1 component)") < events.index("late.init")
    assert events.index("db.healthy") < events.index(SD + "STATUS=starting priority 1 (1 component)")
    assert events.index("test.release") < events.index(SD + lifecycle[2])


async def test_status_degraded_when_a_key_turns_unhealthy_after_ready_and_ready_when_it_recovers(
    notify: Notifications, trace: Trace
) -> None:
    app = make_app()
    db = app.register(Gate(trace, "db"), name="db")
    app.register(Gate(trace, "cache"), name="cache", priority=1)  # its key registers after db's, always
    async with serving(app, notify) as served:
        await notify.until(lambda ms: any("READY=1" in m for m in ms))
        db.flag.update(False, "connection lost")
        await notify.until(lambda ms: "STATUS=degraded: unhealthy db" in ms)
        app.health.get("cache").update(False)
        await notify.until(lambda ms: "STATUS=degraded: unhealthy db, cache" in ms)
        app.health.get("cache").update(True)
        db.flag.update(True)
        await notify.until(lambda ms: ms.count("STATUS=ready: 2 components healthy") == 1)
    assert served.status == 0, app.errors
    assert notify.lifecycle() == [
        "STATUS=starting priority 0 (1 component)",
        "STATUS=starting priority 1 (1 component)",
        "READY=1\nSTATUS=ready: 2 components healthy",
        "STATUS=degraded: unhealthy db",
        "STATUS=degraded: unhealthy db, cache",
        "STATUS=degraded: unhealthy db",
        "STATUS=ready: 2 components healthy",
        "STOPPING=1\nSTATUS=stopping: shutdown() called",
        "STATUS=stopped",
    ]


async def test_stopping_is_sent_as_the_unwind_begins_and_stopped_at_the_end(
    notify: Notifications, trace: Trace
) -> None:
    stop_gate = anyio.Event()
    app = make_app()
    app.register(Gate(trace, "db", notes=notify), name="db")
    app.register(Gate(trace, "api", notes=notify, stop_gate=stop_gate), name="api", priority=1)
    async with serving(app, notify) as served:
        app.shutdown()
        await wait_until(lambda: "api.stop" in trace)
        stopping = "STOPPING=1\nSTATUS=stopping: shutdown() called"
        assert stopping in notify.drain()  # while the unwind is under way
        assert "STATUS=stopped" not in notify.drain()
        stop_gate.set()
    assert served.status == 0, app.errors
    events = sd_events(trace)
    assert events.index(SD + stopping) < events.index("api.stop")  # sent before the first stop()
    assert events.index("api.stop") < events.index("db.stop")
    assert events[-1] == SD + "STATUS=stopped"  # last: after every finalize
    assert events.index("db.finalize") < events.index(SD + "STATUS=stopped")
    assert notify.lifecycle()[-2:] == [stopping, "STATUS=stopped"]
    assert sum("STOPPING=1" in m for m in notify.messages) == 1


async def test_a_failing_run_says_why_it_stops(notify: Notifications, trace: Trace) -> None:
    class Crash(Process):
        async def run(self) -> None:
            await anyio.sleep(0)
            raise Boom("lost the socket")

    app = make_app()
    app.register(Gate(trace, "db"), name="db")
    app.register(Crash(), name="crash", priority=1)
    async with serving(app, notify, wait_ready=False) as served:
        await notify.until(lambda ms: "STATUS=stopped" in ms)
    assert served.status == 1
    assert any(m.startswith("STOPPING=1\nSTATUS=stopping: crash: run failed") for m in notify.messages), notify.messages


async def test_no_ready_when_boot_fails_but_stopping_and_stopped_are_sent(notify: Notifications, trace: Trace) -> None:
    app = make_app()
    app.register(Gate(trace, "db"), name="db")
    app.register(Failing(trace), name="failing", priority=1)
    app.register(Gate(trace, "never"), name="never", priority=2)
    async with serving(app, notify, wait_ready=False) as served:
        await served.done.wait()  # no shutdown() from us: see the tests below
    assert served.status == 1
    assert [(e.component, e.operation) for e in app.errors] == [("failing", "init")]
    lifecycle = notify.lifecycle()
    assert not any("READY=1" in m for m in lifecycle)
    assert lifecycle == [
        "STATUS=starting priority 0 (1 component)",
        "STATUS=starting priority 1 (1 component)",
        "STOPPING=1\nSTATUS=stopping: boot did not finish",
        "STATUS=stopped",
    ]
    assert "never.init" not in trace


async def test_a_shutdown_during_a_failed_boot_s_unwind_sends_stopping_once(
    notify: Notifications, trace: Trace
) -> None:
    stop_gate = anyio.Event()
    app = make_app()
    app.register(Gate(trace, "db", notes=notify, stop_gate=stop_gate), name="db")
    app.register(Failing(trace), name="failing", priority=1)
    async with serving(app, notify, wait_ready=False) as served:
        await wait_until(lambda: "db.stop" in trace)  # the failed boot unwinds
        app.shutdown()  # as a SIGTERM from systemd would, while the unwind is under way
        stop_gate.set()
        await served.done.wait()
    assert served.status == 1
    assert notify.lifecycle() == [
        "STATUS=starting priority 0 (1 component)",
        "STATUS=starting priority 1 (1 component)",
        "STOPPING=1\nSTATUS=stopping: boot did not finish",
        "STATUS=stopped",
    ]


async def test_shutdown_after_a_failed_boot_s_serve_returned_changes_nothing(
    notify: Notifications, trace: Trace
) -> None:
    app = make_app(logger=structlog.get_logger())
    app.register(Failing(trace), name="failing")
    with capture_logs() as logs:
        async with serving(app, notify, wait_ready=False) as served:
            await served.done.wait()
        assert served.status == 1
        before = [e["event"] for e in logs]
        app.shutdown()  # documented as safe after serving
    assert [e["event"] for e in logs] == before  # nothing logged: not "shutdown requested", no failed send
    assert notify.lifecycle()[-1] == "STATUS=stopped"


async def test_a_shutdown_before_boot_sends_stopping_without_ready(notify: Notifications, trace: Trace) -> None:
    app = make_app()
    app.register(Gate(trace, "db"), name="db")
    app.shutdown()
    async with serving(app, notify, wait_ready=False) as served:
        await notify.until(lambda ms: "STATUS=stopped" in ms)
    assert served.status == 0, app.errors
    assert notify.lifecycle() == ["STOPPING=1\nSTATUS=stopping: shutdown() called before boot", "STATUS=stopped"]
    assert "db.init" not in trace


async def test_the_abstract_namespace_form_of_notify_socket(abstract_notify: Notifications, trace: Trace) -> None:
    app = make_app()
    app.register(Gate(trace, "db"), name="db")
    async with serving(app, abstract_notify) as served:
        await abstract_notify.until(lambda ms: any("READY=1" in m for m in ms))
    assert served.status == 0, app.errors
    assert abstract_notify.lifecycle() == [
        "STATUS=starting priority 0 (1 component)",
        "READY=1\nSTATUS=ready: 1 component healthy",
        "STOPPING=1\nSTATUS=stopping: shutdown() called",
        "STATUS=stopped",
    ]


async def test_notify_socket_is_never_read_with_the_app_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trace: Trace
) -> None:
    for directory in short_dir(tmp_path):
        path = directory / "prefixed.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.bind(str(path))
            monkeypatch.setenv("T_NOTIFY_SOCKET", str(path))  # systemd sets NOTIFY_SOCKET only
            notes = Notifications(sock, trace)
            app = make_app()
            app.register(Gate(trace, "db"), name="db")
            async with serving(app, notes) as served:
                pass
            assert served.status == 0, app.errors
            assert notes.drain() == []


# -- the watchdog ------------------------------------------------------------------------------------


async def test_watchdog_pings_at_half_the_period(
    notify: Notifications, trace: Trace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    app = make_app()
    app.register(Gate(trace, "db"), name="db")
    async with serving(app, notify) as served:
        await notify.until(lambda ms: ms.count("WATCHDOG=1") >= 3, limit=1.0)
    assert served.status == 0, app.errors
    assert notify.lifecycle()[-2:] == ["STOPPING=1\nSTATUS=stopping: shutdown() called", "STATUS=stopped"]


async def test_watchdog_keeps_pinging_through_a_slow_unwind(
    notify: Notifications, trace: Trace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    stop_gate = anyio.Event()
    app = make_app()
    app.register(Gate(trace, "db", notes=notify, stop_gate=stop_gate), name="db")
    async with serving(app, notify) as served:
        app.shutdown()
        await wait_until(lambda: "db.stop" in trace)
        pings = notify.count("WATCHDOG=1")
        await notify.until(lambda ms: ms.count("WATCHDOG=1") >= pings + 3, limit=2.0)
        stop_gate.set()
    assert served.status == 0, app.errors
    events = trace.events
    stopping = events.index(SD + "STOPPING=1\nSTATUS=stopping: shutdown() called")
    assert events[stopping:].count(SD + "WATCHDOG=1") >= 3


async def test_watchdog_for_another_process_is_not_ours(
    notify: Notifications, trace: Trace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid() if os.getppid() != os.getpid() else 1))
    app = make_app()
    app.register(Gate(trace, "db"), name="db")
    async with serving(app, notify) as served:
        await notify.until(lambda ms: any("READY=1" in m for m in ms))
        await anyio.sleep(0.3)  # six periods' worth of chances to ping wrongly
    assert served.status == 0, app.errors
    assert "WATCHDOG=1" not in notify.drain()
    assert notify.lifecycle()[-1] == "STATUS=stopped"  # the rest of the protocol still works


async def test_watchdog_pid_of_this_process_pings(
    notify: Notifications, trace: Trace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    app = make_app()
    app.register(Gate(trace, "db"), name="db")
    async with serving(app, notify) as served:
        await notify.until(lambda ms: ms.count("WATCHDOG=1") >= 3, limit=1.0)
    assert served.status == 0, app.errors


async def test_no_watchdog_without_watchdog_usec(notify: Notifications, trace: Trace) -> None:
    app = make_app()
    app.register(Gate(trace, "db"), name="db")
    async with serving(app, notify) as served:
        await anyio.sleep(0.1)
    assert served.status == 0, app.errors
    assert "WATCHDOG=1" not in notify.drain()


# -- failures -----------------------------------------------------------------------------------------


async def test_a_socket_nobody_listens_on_warns_once_and_the_app_still_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trace: Trace
) -> None:
    for directory in short_dir(tmp_path):
        missing = directory / "nobody.sock"
        monkeypatch.setenv("NOTIFY_SOCKET", str(missing))
        monkeypatch.setenv("WATCHDOG_USEC", "100000")  # many sends: still one warning
        app = make_app(logger=structlog.get_logger())
        app.register(Gate(trace, "db"), name="db")
        app.register(Gate(trace, "late"), name="late", priority=1)
        with capture_logs() as logs:
            async with serving(app, None) as served:
                await anyio.sleep(0.2)
                app.health.get("db").update(False)  # a STATUS= change: another failed send
                app.health.get("db").update(True)
        assert served.status == 0, app.errors
        assert app.errors == ()
        warnings = [e for e in logs if e["event"] == "systemd notification failed"]
        assert len(warnings) == 1, warnings
        (warning,) = warnings
        assert warning["log_level"] == "warning"
        assert warning["socket"] == str(missing)
        assert warning["error"]
        assert not [e for e in logs if e["log_level"] == "error"]
        assert trace.before("db.healthy", "late.init")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WATCHDOG_USEC", "abc"),
        ("WATCHDOG_USEC", "0"),
        ("WATCHDOG_USEC", "-100"),
        ("WATCHDOG_PID", "abc"),
    ],
)
async def test_a_bad_watchdog_setting_is_a_config_error_naming_it(
    notify: Notifications, trace: Trace, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    app = make_app(logger=structlog.get_logger())
    app.register(Gate(trace, "db"), name="db")
    with capture_logs(), anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    (error,) = app.errors
    assert isinstance(error.cause, ConfigError)
    assert name in str(error)
    assert repr(value) in str(error)
    assert trace.events == []  # nothing started
    assert notify.drain() == []  # nor told systemd anything
