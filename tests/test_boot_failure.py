"""App.on_boot_failure and Initializer.boot_failed: called once, after the unwind, only when the boot fails."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from pydantic import Field
from pydantic_settings import BaseSettings
from structlog.testing import capture_logs

from nacelle_py import App, ComponentError, Initializer, Inject, Process, RegistrationError
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """The error our test components raise."""


class StrictSettings(BaseSettings):
    """A setting that must be positive: BOOTFAIL_LIMIT."""

    bootfail_limit: int = Field(1, gt=0)


class Reporter(Process):
    """Records its lifecycle and the boot failures it hears of; optionally fails its init."""

    settings: StrictSettings = Inject()

    def __init__(self, trace: Trace, *, init_error: bool = False, async_hook: bool = True) -> None:
        self.trace, self.init_error, self.async_hook = trace, init_error, async_hook
        self.heard: list[tuple[ComponentError, ...]] = []
        self.stopped = anyio.Event()

    async def init(self) -> None:
        self.trace.add("reporter.init")
        if self.init_error:
            raise Boom("init refused")

    async def run(self) -> None:
        await self.stopped.wait()

    async def stop(self) -> None:
        self.stopped.set()

    async def finalize(self) -> None:
        self.trace.add("reporter.finalize")

    async def boot_failed(self, errors: Sequence[ComponentError]) -> None:
        self.trace.add("reporter.boot_failed")
        self.heard.append(tuple(errors))


class PlainReporter(Initializer):
    """A plain def boot_failed, called on the loop thread."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def boot_failed(self, errors: Sequence[ComponentError]) -> None:
        self.trace.add(f"plain.boot_failed:{len(errors)}")


def app_with(trace: Trace, **reporter: bool) -> tuple[App, Reporter]:
    app = test_app("bootfail")
    component = app.register(Reporter(trace, **reporter), name="reporter")
    app.register(PlainReporter(trace), name="plain", priority=1)

    @app.on_boot_failure
    async def tell(errors: Sequence[ComponentError]) -> None:
        trace.add(f"app.hook:{','.join(e.operation for e in errors)}")

    return app, component


async def test_a_config_error_is_reported_once_before_any_injection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTFAIL_LIMIT", "0")
    trace = Trace()
    app, reporter = app_with(trace)
    assert await app.serve() == 1
    assert trace.events == ["reporter.boot_failed", "plain.boot_failed:1", "app.hook:config"]
    assert "settings" not in vars(reporter)  # never injected, still told
    [errors] = reporter.heard
    assert errors == app.errors and "BOOTFAIL_LIMIT" in str(errors[0])


async def test_an_init_failure_is_reported_once_after_the_unwind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOOTFAIL_LIMIT", raising=False)
    trace = Trace()
    app, reporter = app_with(trace, init_error=True)
    assert await app.serve() == 1
    assert trace.events == ["reporter.init", "reporter.boot_failed", "plain.boot_failed:1", "app.hook:init"]
    [errors] = reporter.heard
    assert isinstance(errors[0].cause, Boom) and errors[0].component == "reporter"


async def test_a_clean_run_or_a_stop_during_boot_tells_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOOTFAIL_LIMIT", raising=False)
    trace = Trace()
    app, _ = app_with(trace)
    app.on_ready(app.shutdown)
    assert await app.serve() == 0
    trace2 = Trace()
    early, _ = app_with(trace2)
    early.shutdown()  # before boot: the boot ends without an error
    assert await early.serve() == 0
    assert not [e for e in trace.events + trace2.events if "boot_failed" in e or "hook" in e]


async def test_a_failure_after_the_boot_is_not_a_boot_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOOTFAIL_LIMIT", raising=False)
    trace = Trace()
    app, _ = app_with(trace)

    class Failing(Process):
        async def run(self) -> None:
            await anyio.sleep(0.05)
            raise Boom("later")

    app.register(Failing(), name="failing", priority=2)
    assert await app.serve() == 1
    assert not [e for e in trace.events if "boot_failed" in e or "hook" in e]


async def test_a_hook_that_raises_or_hangs_is_logged_and_the_others_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTFAIL_LIMIT", "0")
    monkeypatch.setenv("BOOTFAIL_SHUTDOWN_TIMEOUT", "0.2")  # bounds each hook
    trace = Trace()
    app = test_app("bootfail")

    @app.on_boot_failure
    def raises(errors: Sequence[ComponentError]) -> None:
        raise Boom("hook")

    @app.on_boot_failure
    async def hangs(errors: Sequence[ComponentError]) -> None:
        await anyio.sleep_forever()

    app.on_boot_failure(lambda errors: trace.add("last"))
    app.register(Reporter(trace), name="reporter")
    with capture_logs() as logs, anyio.fail_after(5):
        assert await app.serve() == 1
    assert trace.events == ["reporter.boot_failed", "last"]
    events = [(line["event"], line.get("component")) for line in logs if "hook" in line["event"]]
    assert events == [("boot failure hook failed", "bootfail"), ("boot failure hook timed out", "bootfail")]


def test_on_boot_failure_takes_a_callable() -> None:
    with pytest.raises(RegistrationError, match="on_boot_failure"):
        App("x").on_boot_failure(42)  # type: ignore[arg-type]
