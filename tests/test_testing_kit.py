"""The test kit through its public API: ``running()``, its handle, ``override_service`` and ``override_settings``.

Every async test runs on asyncio and trio. Lifecycle order is asserted on a
``Trace``; every wait is bounded by ``anyio.fail_after`` around the block
(``LIMIT``), far above what each scenario needs, so a hang fails instead of
hanging and a slow machine does not flake.
"""

from __future__ import annotations

import signal
from typing import Any

import anyio
import httpx
import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from nacelle_py import (
    App,
    ComponentError,
    ConfigError,
    Health,
    Initializer,
    Inject,
    Process,
    RegistrationError,
    ServiceContainer,
    ServiceError,
)
from nacelle_py.testing import (
    BootError,
    ExitError,
    RunningApp,
    Trace,
    override_service,
    override_settings,
    running,
    test_app,
)

pytestmark = pytest.mark.anyio

LIMIT = 20.0
"""Seconds any one scenario may take before the test fails (each needs well under one)."""


class Boom(Exception):
    """What the test components raise."""


# -- components ------------------------------------------------------------------------


class Store(Initializer):
    """Sets the service ``"store"`` in its init (as a database initializer would); finalizes it."""

    services: ServiceContainer = Inject("services")

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.made: dict[str, Any] = {"kind": "real"}

    async def init(self) -> None:
        self.services.set("store", self.made)
        self.trace.add("store.init")

    async def finalize(self) -> None:
        self.trace.add("store.finalize")


class Settings(BaseSettings):
    """The worker's settings: ``<APP>_WORKER_TICK`` and ``<APP>_WORKER_LABELS``."""

    model_config = SettingsConfigDict(env_prefix="WORKER_")

    tick: float = Field(1.0, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    limit: int | None = 5


class Worker(Process):
    """Reports healthy once running; records its calls; fails or hangs where told to."""

    store: dict[str, Any] = Inject("store")
    settings: Settings = Inject()
    health: Health = Inject("health")

    def __init__(
        self,
        trace: Trace,
        *,
        fail_in: str | None = None,
        healthy: bool = True,
        hang_in_stop: bool = False,
    ) -> None:
        self.trace = trace
        self.fail_in = fail_in
        self.healthy = healthy
        self.hang_in_stop = hang_in_stop
        self.crash: anyio.Event | None = None  # made at init: set it to make the run fail

    async def init(self) -> None:
        self.trace.add("worker.init")
        self.key = self.health.register("worker")
        self.stopping = anyio.Event()
        self.crash = anyio.Event()
        if self.fail_in == "init":
            raise Boom("worker init")

    async def run(self) -> None:
        self.trace.add("worker.run")
        if self.healthy:
            self.key.update(True)
        with anyio.CancelScope() as scope:

            async def crash() -> None:
                assert self.crash is not None
                await self.crash.wait()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(crash)
                await self.stopping.wait()
                tg.cancel_scope.cancel()
        if scope.cancelled_caught:
            raise Boom("worker crashed")
        self.trace.add("worker.run.end")

    async def stop(self) -> None:
        self.trace.add("worker.stop")
        if self.hang_in_stop:
            await anyio.sleep_forever()
        self.stopping.set()
        if self.fail_in == "stop":
            raise Boom("worker stop")

    async def finalize(self) -> None:
        self.trace.add("worker.finalize")


def build(trace: Trace, name: str = "kit", **worker: Any) -> tuple[App, Store, Worker]:
    """A store (priority 0) and a worker that injects it (priority 1)."""
    app = test_app(name)
    store = app.register(Store(trace), name="store")
    worker_component = app.register(Worker(trace, **worker), name="worker", priority=1, shutdown_timeout=None)
    return app, store, worker_component


# -- boot to healthy, the handle, the unwind --------------------------------------------


async def test_boots_to_healthy_and_unwinds_when_the_block_ends() -> None:
    trace = Trace()
    app, store, worker = build(trace)
    with anyio.fail_after(LIMIT):
        async with running(app) as handle:
            assert isinstance(handle, RunningApp) and handle.app is app
            trace.add("body")
            assert handle.health.healthy and handle.phase == "running"
            assert handle.states == {"store": "initialized", "worker": "running"}
            assert handle.services.get("store") is store.made is worker.store
            assert handle.settings(Settings) is worker.settings
            assert handle.component("worker", Worker) is worker
            assert handle.status is None and handle.errors == ()
            assert handle.ops_address is None and handle.ops_url is None  # test_app has no ops endpoint
    assert handle.status == 0 and handle.phase == "stopped"
    assert trace.events == [
        "store.init",
        "worker.init",
        "worker.run",
        "body",
        "worker.stop",
        "worker.run.end",
        "worker.finalize",
        "store.finalize",
    ]
    assert handle.states == {"store": "finalized", "worker": "finalized"}


async def test_the_handle_names_a_missing_or_mistyped_component() -> None:
    app, _, _ = build(Trace())
    with anyio.fail_after(LIMIT):
        async with running(app) as handle:
            with pytest.raises(KeyError, match="'nope'.*registered: store, worker"):
                handle.component("nope")
            with pytest.raises(TypeError, match="'store' is a Store, not a Worker"):
                handle.component("store", Worker)


async def test_the_ops_endpoint_is_reachable_through_the_handle() -> None:
    app = test_app("ops", ops_addr="127.0.0.1:0")
    app.register(Worker(Trace()), name="worker")
    app.services.set("store", {})
    with anyio.fail_after(LIMIT):
        async with running(app) as handle:
            assert handle.ops_address is not None and handle.ops_address[1] != 0
            assert handle.ops_url == f"http://127.0.0.1:{handle.ops_address[1]}"
            async with httpx.AsyncClient(base_url=handle.ops_url, timeout=5) as http:
                ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        async with httpx.AsyncClient(base_url=handle.ops_url, timeout=5) as http:
            with pytest.raises(httpx.ConnectError):  # the endpoint closed with the app
                await http.get("/livez")


async def test_no_signal_handler_is_installed_even_when_the_app_asks_for_them() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    app = test_app("signals", handle_signals=True)  # what App() does by default
    app.register(Worker(Trace()), name="worker")
    app.services.set("store", {})
    with anyio.fail_after(LIMIT):
        async with running(app):
            during = {signum: signal.getsignal(signum) for signum in before}
    assert during == before
    assert {signum: signal.getsignal(signum) for signum in before} == before


async def test_shutdown_and_wait_stopped_from_the_body() -> None:
    trace = Trace()
    app, _, _ = build(trace)
    with anyio.fail_after(LIMIT):
        async with running(app) as handle:
            handle.shutdown()
            assert await handle.wait_stopped() == 0
            assert handle.phase == "stopped" and "store.finalize" in trace
    assert handle.status == 0


async def test_wait_stopped_is_bounded() -> None:
    app, _, _ = build(Trace())
    with anyio.fail_after(LIMIT):
        async with running(app) as handle:
            with pytest.raises(TimeoutError, match=r"still serving after 0.05s \(phase running; running: worker\)"):
                await handle.wait_stopped(timeout=0.05)


# -- failures ---------------------------------------------------------------------------


async def test_the_body_error_wins_and_the_unwind_errors_are_attached() -> None:
    trace = Trace()
    app, _, _ = build(trace, fail_in="stop")
    with anyio.fail_after(LIMIT):
        with pytest.raises(KeyError, match="from the body") as raised:
            async with running(app) as handle:
                raise KeyError("from the body")
    assert handle.status == 1
    [note] = raised.value.__notes__
    assert "exited with status 1" in note and "worker: stop failed: Boom: worker stop" in note
    assert trace.before("worker.stop", "store.finalize")  # unwound all the same


async def test_a_body_error_after_a_clean_unwind_carries_no_note() -> None:
    trace = Trace()
    app, _, _ = build(trace)
    with anyio.fail_after(LIMIT):
        with pytest.raises(AssertionError) as raised:
            async with running(app) as handle:
                assert handle.status == 1, "from the body"
    assert handle.status == 0 and "store.finalize" in trace
    assert not getattr(raised.value, "__notes__", None)


async def test_an_unwind_failure_raises_exit_error_with_the_errors() -> None:
    app, _, _ = build(Trace(), fail_in="stop")
    with anyio.fail_after(LIMIT):
        with pytest.raises(ExitError) as raised:
            async with running(app) as handle:
                pass
    error = raised.value
    assert handle.status == error.status == 1 and not error.timed_out
    assert [(e.component, e.operation) for e in error.errors] == [("worker", "stop")]
    assert error.errors == handle.errors == app.errors
    assert isinstance(error.__cause__, ComponentError) and isinstance(error.__cause__.__cause__, Boom)
    assert str(error).startswith(
        "app 'kit' exited with status 1: 1 error(s):\n  - worker: stop failed: Boom: worker stop"
    )


async def test_a_run_failing_during_the_body_stops_the_app_and_raises_on_exit() -> None:
    trace = Trace()
    app, _, worker = build(trace)
    with anyio.fail_after(LIMIT):
        with pytest.raises(ExitError, match="worker: run failed: Boom: worker crashed"):
            async with running(app) as handle:
                assert worker.crash is not None
                worker.crash.set()
                assert await handle.wait_stopped() == 1
                assert handle.phase == "stopped"
    assert trace.before("worker.finalize", "store.finalize")


async def test_a_failed_boot_raises_boot_error_with_the_errors_and_unwinds() -> None:
    trace = Trace()
    app, _, _ = build(trace, fail_in="init")
    with anyio.fail_after(LIMIT):
        with pytest.raises(BootError) as raised:
            async with running(app):
                trace.add("body")  # never reached
    error = raised.value
    assert error.status == 1 and not error.timed_out
    assert [(e.component, e.operation) for e in error.errors] == [("worker", "init")]
    assert isinstance(error.__cause__, ComponentError) and isinstance(error.__cause__.cause, Boom)
    assert "app 'kit' did not boot (status 1): 1 error(s):\n  - worker: init failed: Boom: worker init" in str(error)
    assert trace.events == ["store.init", "worker.init", "store.finalize"]


async def test_a_bad_setting_in_the_environment_is_a_boot_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_WORKER_TICK", "soon")
    trace = Trace()
    app, _, _ = build(trace)
    with anyio.fail_after(LIMIT):
        with pytest.raises(
            BootError, match=r"(?s)kit: config failed: .*\n      - KIT_WORKER_TICK: .*\(got 'soon'\)"
        ) as raised:
            async with running(app):
                pass
    assert raised.value.errors[0].operation == "config" and trace.events == []  # nothing initialised


async def test_a_failed_on_ready_hook_is_a_boot_failure() -> None:
    trace = Trace()
    app, _, _ = build(trace)

    def hook() -> None:
        raise Boom("not ready after all")

    app.on_ready(hook)
    with anyio.fail_after(LIMIT):
        with pytest.raises(BootError, match="kit: ready failed: Boom: not ready after all"):
            async with running(app):
                trace.add("body")
    assert "body" not in trace and "store.finalize" in trace


async def test_a_boot_that_is_never_healthy_times_out_naming_the_key() -> None:
    trace = Trace()
    app, _, _ = build(trace, healthy=False)
    with anyio.fail_after(LIMIT):
        with pytest.raises(BootError) as raised:
            async with running(app, timeout=1):
                trace.add("body")
    error = raised.value
    assert error.timed_out and error.status == 0 and error.errors == ()
    assert "app 'kit' was not healthy within 1s (running(timeout=...)): phase starting; " in str(error)
    assert "waiting on health key 'worker' (registered by worker): not yet reported healthy" in str(error)
    assert "body" not in trace
    assert trace.before("worker.stop", "worker.finalize") and "store.finalize" in trace


async def test_a_stop_during_boot_is_a_boot_error_without_errors() -> None:
    app, _, _ = build(Trace())
    app.shutdown()  # before it serves: the runner stops at once
    with anyio.fail_after(LIMIT):
        with pytest.raises(BootError, match="stopped before it was healthy, without an error"):
            async with running(app):
                pass


async def test_an_unwind_that_overruns_the_timeout_is_forced_and_raises() -> None:
    trace = Trace()
    app, _, _ = build(trace, hang_in_stop=True)  # shutdown_timeout=None: only running() bounds it
    with anyio.fail_after(LIMIT):
        with pytest.raises(ExitError) as raised:
            async with running(app, timeout=0.5) as handle:
                pass
    error = raised.value
    assert error.timed_out and handle.status == 1
    assert (
        "did not unwind within 0.5s (running(timeout=...)); not unwound yet: store (initialized), worker (stopping);"
        in str(error)
    )
    assert "kit: shutdown failed: forced by running(): the unwind overran timeout=0.5s" in str(error)
    assert "store.finalize" in trace  # forced, the rest still unwound


async def test_a_cancelled_test_still_unwinds_its_app() -> None:
    trace = Trace()
    app, _, _ = build(trace)
    with anyio.fail_after(LIMIT):
        with anyio.CancelScope() as scope:
            async with running(app) as handle:
                scope.cancel()  # as a timeout around the test would
                await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert handle.status == 0
    assert trace.events[-4:] == ["worker.stop", "worker.run.end", "worker.finalize", "store.finalize"]


async def test_an_app_serves_once() -> None:
    app, _, _ = build(Trace())
    with anyio.fail_after(LIMIT):
        async with running(app):
            pass
        with pytest.raises(RuntimeError, match="has already served .* build a new App for each test"):
            async with running(app):
                pass


async def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="running\\(\\) takes a nacelle_py.App"):
        async with running("app"):  # type: ignore[arg-type]
            pass
    for timeout in (0, -1, float("inf"), None):
        with pytest.raises(RegistrationError, match="running\\(\\): timeout must be a"):
            async with running(test_app(), timeout=timeout):  # type: ignore[arg-type]
                pass


# -- override_service --------------------------------------------------------------------


async def test_a_service_an_initializer_sets_at_init_is_overridden_for_the_block() -> None:
    trace = Trace()
    app, store, worker = build(trace)
    fake = {"kind": "fake"}
    with anyio.fail_after(LIMIT):
        with override_service(app, "store", fake) as given:
            assert given is fake and "store" not in app.services  # nothing has set it yet
            async with running(app) as handle:
                assert handle.services.get("store") is fake
                assert worker.store is fake  # injected after the initializer set the real one
                assert store.made == {"kind": "real"}  # the initializer keeps (and finalizes) its own
    assert app.services.get("store") is store.made  # reset on the way out


async def test_a_service_set_before_boot_is_overridden_at_once_and_reset_after_a_failure() -> None:
    app = test_app()
    app.services.set("clock", "real clock")
    with pytest.raises(Boom), override_service(app, "clock", "fake clock"):
        assert app.services.get("clock") == "fake clock"
        raise Boom
    assert app.services.get("clock") == "real clock"


def test_overrides_of_one_key_nest_and_unwind_in_any_order() -> None:
    app = test_app()
    app.services.set("clock", "real")
    outer = override_service(app, "clock", "outer")
    inner = override_service(app, "clock", "inner")
    outer.__enter__()
    inner.__enter__()
    assert app.services.get("clock") == "inner"
    outer.__exit__(None, None, None)  # out of order: a fixture's override ending before a block's
    assert app.services.get("clock") == "inner"
    inner.__exit__(None, None, None)
    assert app.services.get("clock") == "real"


def test_pending_overrides_of_a_key_unwind_in_any_order_before_it_is_set() -> None:
    app = test_app()
    first = override_service(app, "late", 1)
    second = override_service(app, "late", 2)
    first.__enter__()
    second.__enter__()
    with pytest.raises(ServiceError):
        first.__exit__(None, None, None)  # never set: the check says so
    app.services.set("late", "real")
    assert app.services.get("late") == 2
    second.__exit__(None, None, None)
    assert app.services.get("late") == "real"


def test_an_override_of_a_key_nothing_ever_set_is_an_error() -> None:
    app = test_app()
    app.services.set("store", {})
    with pytest.raises(ServiceError, match=r"no service was ever registered under 'stroe'.*registered: .*store"):
        with override_service(app, "stroe", {}):
            pass


async def test_an_injected_fake_must_still_match_the_annotation() -> None:
    class Typed(Initializer):
        number: int = Inject("number")

    app = test_app()
    app.services.set("number", 1)
    app.register(Typed(), name="typed")
    with anyio.fail_after(LIMIT), override_service(app, "number", "one"):
        with pytest.raises(
            BootError, match="typed: inject failed: .*'number' is a str, but the attribute is annotated int"
        ):
            async with running(app):
                pass


# -- override_settings -------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["KIT_WORKER_TICK", "WORKER_TICK", "worker_tick", "tick"])
async def test_a_setting_is_named_by_env_variable_or_field_name(keyword: str) -> None:
    app, _, worker = build(Trace())
    with anyio.fail_after(LIMIT), override_settings(app, **{keyword: "0.25"}):
        async with running(app):
            assert worker.settings.tick == 0.25


async def test_an_override_beats_the_environment_and_leaving_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_WORKER_TICK", "9")
    app, _, worker = build(Trace())
    assert app.config.load(Settings).tick == 9  # loaded (and cached) before the override
    with anyio.fail_after(LIMIT), override_settings(app, WORKER_TICK=0.5):
        assert app.config.load(Settings).tick == 0.5
        async with running(app):
            assert worker.settings.tick == 0.5
    assert app.config.load(Settings).tick == 9


def test_strings_are_read_as_the_environment_reads_them_and_other_values_as_they_are() -> None:
    app, _, _ = build(Trace())
    with override_settings(app, worker_labels='{"team": "core"}', worker_limit="5"):
        loaded = app.config.load(Settings)
        assert loaded.labels == {"team": "core"} and loaded.limit == 5
    with override_settings(app, worker_labels={"team": "ops"}, worker_limit=None):
        loaded = app.config.load(Settings)
        assert loaded.labels == {"team": "ops"} and loaded.limit is None
    assert app.config.load(Settings).labels == {}


def test_the_framework_settings_can_be_overridden() -> None:
    app = test_app("kit")
    with override_settings(app, log_level="debug", SHUTDOWN_TIMEOUT="2"):
        from nacelle_py import AppSettings

        loaded = app.config.load(AppSettings)
        assert loaded.log_level == "debug" and loaded.shutdown_timeout == 2.0


def test_a_bad_value_is_a_config_error_naming_the_env_variable() -> None:
    app, _, _ = build(Trace())
    with pytest.raises(ConfigError) as raised, override_settings(app, tick="-1", worker_limit="many"):
        pass
    text = str(raised.value)
    assert (
        "KIT_WORKER_TICK: Input should be greater than 0 (got '-1'); also read from WORKER_TICK; "
        "given as override_settings(tick=...) (Settings.tick)" in text
    )
    assert "KIT_WORKER_LIMIT: " in text and "given as override_settings(worker_limit=...)" in text
    assert {(e.model, e.field) for e in raised.value.errors} == {("Settings", "tick"), ("Settings", "limit")}
    with pytest.raises(ConfigError, match="KIT_WORKER_LABELS: cannot be decoded"):
        with override_settings(app, worker_labels="not json"):
            pass
    assert app.config.load(Settings).tick == 1.0  # nothing was left applied


def test_a_problem_of_another_setting_is_left_for_the_boot_to_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_WORKER_LIMIT", "many")
    app, _, _ = build(Trace())
    with override_settings(app, tick="2"):  # valid: the bad WORKER_LIMIT is not this override's to report
        with pytest.raises(ConfigError, match="KIT_WORKER_LIMIT"):
            app.config.load(Settings)


def test_unknown_ambiguous_and_repeated_keywords_are_refused() -> None:
    app, _, _ = build(Trace())
    app.register(Other(), name="other")
    with pytest.raises(ConfigError, match=r"tik: no setting of this app is read from it; did you mean TICK"):
        with override_settings(app, tik="1"):
            pass
    with pytest.raises(
        ConfigError, match=r"several settings models have a field 'tick'.*KIT_OTHER_TICK \(OtherSettings\)"
    ):
        with override_settings(app, tick="1"):
            pass
    with pytest.raises(ConfigError, match=r"set twice, as WORKER_TICK= and worker_tick="):
        with override_settings(app, WORKER_TICK="1", worker_tick="2"):
            pass
    with pytest.raises(TypeError, match="at least one setting"):
        with override_settings(app):
            pass


def test_a_model_loaded_by_a_component_itself_is_known_once_passed() -> None:
    class Loaded(BaseSettings):
        depth: int = 1

    app = test_app("kit")
    with pytest.raises(ConfigError, match="depth: no setting"):
        with override_settings(app, depth="3"):
            pass
    with override_settings(app, Loaded, depth="3"):
        assert app.config.load(Loaded).depth == 3


async def test_settings_cannot_be_overridden_once_the_app_has_started() -> None:
    app, _, _ = build(Trace())
    with anyio.fail_after(LIMIT):
        async with running(app):
            with pytest.raises(RuntimeError, match="already started, and settings are loaded at boot"):
                with override_settings(app, tick="2"):
                    pass


class OtherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OTHER_")

    tick: float = 1.0


class Other(Initializer):
    settings: OtherSettings = Inject()
