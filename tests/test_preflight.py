"""The preflight: before any init, components take or check what they need; a failure changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic_settings import BaseSettings

from nacelle_py import ComponentTimeoutError, Initializer, Inject, Process, ServiceContainer
from nacelle_py.base import HTTPServer
from nacelle_py.testing import Trace, test_app

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from harness import ROOT, clean_env  # noqa: E402

pytestmark = pytest.mark.anyio


class PortSettings(BaseSettings):
    port: int = 0


class Writer(Initializer):
    """A low-priority component that changes the world at init (a migration, say)."""

    provides = ("written",)
    services: ServiceContainer = Inject("services")

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    async def init(self) -> None:
        self.trace.add("writer.init")
        self.services.set("written", True)

    async def finalize(self) -> None:
        self.trace.add("writer.finalize")


class Claims(Process):
    """Takes a resource at its preflight; init adopts it; finalize releases whatever it holds."""

    settings: PortSettings = Inject()
    services: ServiceContainer = Inject("services")
    logger: Any = Inject("logger")
    written: bool = Inject("written")

    def __init__(self, trace: Trace, fail: bool = False, hang: bool = False) -> None:
        self.trace, self.fail, self.hang = trace, fail, hang
        self.held: str | None = None

    async def preflight(self) -> None:
        # What a preflight can see: settings and the services set before serving, not "written".
        seen = sorted(k for k in ("settings", "services", "logger", "written") if k in vars(self))
        self.trace.add(f"claims.preflight {seen}")
        if self.hang:
            await anyio.sleep_forever()
        if self.fail:
            raise OSError("port 8080 is taken")
        self.held = "resource"

    async def init(self) -> None:
        self.trace.add(f"claims.init holding={self.held}")

    async def run(self) -> None:
        await anyio.sleep_forever()

    async def finalize(self) -> None:
        self.trace.add(f"claims.finalize holding={self.held}")
        self.held = None


def app_with(trace: Trace, **claims: Any) -> Any:
    app = test_app("t")
    app.register(Writer(trace), name="writer", priority=0)
    app.register(Claims(trace, **claims), name="claims", priority=1, start_timeout=0.5)
    return app


async def test_a_failing_preflight_ends_the_boot_before_any_init() -> None:
    trace = Trace()
    app = app_with(trace, fail=True)
    with anyio.fail_after(10):
        assert await app.serve() == 1
    assert [(e.component, e.operation) for e in app.errors] == [("claims", "preflight")]
    assert "port 8080 is taken" in str(app.errors[0])
    assert trace.events == [
        "claims.preflight ['logger', 'services', 'settings']",
        "claims.finalize holding=None",  # its finalize releases whatever the preflight took
    ]


async def test_what_the_preflight_took_is_adopted_by_init_and_finalized_once() -> None:
    trace = Trace()
    app = app_with(trace)
    app.on_ready(app.shutdown)
    with anyio.fail_after(10):
        assert await app.serve() == 0, app.errors
    assert trace.events == [
        "claims.preflight ['logger', 'services', 'settings']",
        "writer.init",
        "claims.init holding=resource",
        "claims.finalize holding=resource",
        "writer.finalize",
    ]


async def test_a_later_failure_releases_what_a_preflight_took_whose_init_never_ran() -> None:
    class Broken(Initializer):
        async def init(self) -> None:
            raise RuntimeError("priority 0 fails")

    trace = Trace()
    app = test_app("t")
    app.register(Broken(), name="broken", priority=0)
    app.register(Writer(trace), name="writer", priority=0)
    app.register(Claims(trace), name="claims", priority=1)
    with anyio.fail_after(10):
        assert await app.serve() == 1
    assert trace.events[0].startswith("claims.preflight")
    assert trace.events[-1] == "claims.finalize holding=resource"  # released once, though init never ran
    assert trace.events.count("claims.finalize holding=resource") == 1
    assert "claims.init holding=resource" not in trace


async def test_a_preflight_is_bounded_by_the_start_timeout() -> None:
    trace = Trace()
    app = app_with(trace, hang=True)
    with anyio.fail_after(10):
        assert await app.serve() == 1
    (error,) = app.errors
    assert isinstance(error, ComponentTimeoutError) and error.operation == "preflight"
    assert "writer.init" not in trace


async def echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def test_a_taken_port_of_a_high_priority_server_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    monkeypatch.setenv("HTTP_PORT", str(taken_port))
    trace = Trace()
    app = test_app("t")
    app.register(Writer(trace), name="writer", priority=0)
    app.register(HTTPServer(echo), name="web", priority=10)
    with anyio.fail_after(10):
        assert await app.serve() == 1
    assert [(e.component, e.operation) for e in app.errors] == [("web", "preflight")]
    assert f"127.0.0.1:{taken_port}" in str(app.errors[0]) and "HTTP_PORT" in str(app.errors[0])
    assert trace.events == []  # the writer never initialised: nothing was written


async def test_app_preflight_checks_and_releases(monkeypatch: pytest.MonkeyPatch, taken_port: int) -> None:
    monkeypatch.setenv("HTTP_PORT", "0")
    app = test_app("t")
    server = app.register(HTTPServer(echo), name="web")
    assert await app.preflight() == []
    assert server.address is None  # bound, then released: the port is free again
    monkeypatch.setenv("HTTP_PORT", str(taken_port))
    app = test_app("t")
    app.register(HTTPServer(echo), name="web")
    (problem,) = await app.preflight()
    assert (problem.component, problem.operation) == ("web", "preflight")


def test_check_runs_the_preflight(taken_port: int) -> None:
    env = clean_env(EXAMPLE_HTTP_PORT=str(taken_port))
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "nacelle_py", "check", "example_app:build_app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[preflight] api: " in done.stdout and f"127.0.0.1:{taken_port}" in done.stdout
