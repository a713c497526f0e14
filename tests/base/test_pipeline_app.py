"""Pipeline as a Process in an App: a finite run ends, shutdown drains, errors, health, the engine setting."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import structlog
from _support import counting_root, serving, wait_until

from nacelle_py import ComponentError, ConfigError, Process
from nacelle_py.base import Pipeline, PipelineError, Stage
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio

from test_pipeline_engines import ENGINES, _worker_based_redis, make_pipeline  # noqa: F401 (a fixture)


async def endless_root(emit: Any) -> None:
    i = 0
    while True:
        await emit(i)
        i += 1


class Waiter(Process):
    """Runs until stopped."""

    def __init__(self) -> None:
        self.released = anyio.Event()
        self.stopped = False

    async def run(self) -> None:
        await self.released.wait()

    async def stop(self) -> None:
        self.stopped = True
        self.released.set()


# -- a finite pipeline ------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_finite_pipeline_runs_and_its_return_ends_the_app(engine: str) -> None:
    app = test_app("t")
    got: list[int] = []

    async def square(msg: int, emit: Any) -> None:
        await emit(msg * msg)

    def sink(msg: int) -> None:
        got.append(msg)

    p = app.register(
        make_pipeline([Stage("numbers", counting_root(30), [Stage("square", square, [Stage("sink", sink)])])], engine),
        name="pipeline",
        priority=2,
    )
    with anyio.fail_after(10):
        status = await app.serve()  # no shutdown(): the pipeline's return unwinds the app
    assert status == 0, app.errors
    assert app.errors == ()
    assert got == [i * i for i in range(30)]
    assert p.engine == engine
    assert p.dropped == 0
    assert p.stats()["sink"].messages_in == 30


async def test_a_finite_pipeline_with_silent_exit_lets_the_app_keep_running() -> None:
    app = test_app("t")
    done = anyio.Event()
    got: list[int] = []

    async def sink(msg: int) -> None:
        got.append(msg)
        if len(got) == 10:
            done.set()

    waiter = app.register(Waiter(), name="waiter", priority=1)
    p = app.register(
        Pipeline([Stage("numbers", counting_root(10), [Stage("sink", sink)])]),
        name="pipeline",
        priority=2,
        silent_exit=True,
    )
    with structlog.testing.capture_logs() as logs:
        async with serving(app) as served:
            await done.wait()
            await wait_until(
                lambda: any(
                    e["event"] == "run finished; silent exit" and e.get("component") == "pipeline" for e in logs
                )
            )
            assert served.status is None  # the app is still serving after the pipeline returned
            assert not waiter.stopped
    assert served.status == 0, app.errors
    assert p.dropped == 0
    assert waiter.stopped
    assert got == list(range(10))


# -- shutdown -----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_app_shutdown_stops_an_endless_pipeline_and_drains(engine: str) -> None:
    app = test_app("t")
    got: list[int] = []
    enough = anyio.Event()

    async def double(msg: int, emit: Any) -> None:
        await emit(2 * msg)

    async def sink(msg: int) -> None:
        got.append(msg)
        if len(got) == 10:
            enough.set()
        await anyio.sleep(0)

    p = app.register(
        make_pipeline(
            [Stage("source", endless_root, [Stage("double", double, [Stage("sink", sink, buffer=4)], buffer=4)])],
            engine,
        ),
        name="pipeline",
        priority=2,
    )
    async with serving(app) as served:
        await enough.wait()
    assert served.status == 0, app.errors
    assert p.dropped == 0
    assert len(got) >= 10 and got == [2 * i for i in range(len(got))]
    stats = p.stats()
    assert stats["source"].messages_out == stats["double"].messages_in == stats["sink"].messages_in == len(got)


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_stuck_stage_is_cut_off_after_the_pipeline_shutdown_timeout_setting(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_PIPELINE_SHUTDOWN_TIMEOUT", "0.2")
    app = test_app("t")
    started = anyio.Event()

    async def stuck(msg: int) -> None:
        started.set()
        await anyio.sleep_forever()

    p = app.register(
        make_pipeline([Stage("source", endless_root, [Stage("stuck", stuck)])], engine, shutdown_timeout=60),
        name="pipeline",
        shutdown_timeout=30,
    )
    async with serving(app, limit=8) as served:  # 60 s (constructor) or 30 s (register) would trip this
        await started.wait()
    assert served.status == 0, app.errors  # a cut-off drain is a normal return
    assert p.dropped > 0


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_stage_error_is_the_process_error_and_is_logged_with_stage_and_index(engine: str) -> None:
    app = test_app("t")
    boom = ValueError("cannot parse")

    async def parse(msg: int, emit: Any) -> None:
        if msg == 17:
            raise boom
        await emit(msg)

    async def sink(msg: int) -> None:
        pass

    app.register(
        make_pipeline([Stage("source", endless_root, [Stage("parser", parse, [Stage("sink", sink)])])], engine),
        name="pipeline",
        priority=2,
    )
    with structlog.testing.capture_logs() as logs, anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    (error,) = app.errors
    assert isinstance(error, ComponentError)
    assert (error.component, error.operation) == ("pipeline", "run")
    cause = error.cause
    assert isinstance(cause, PipelineError)
    assert (cause.stage, cause.index, cause.error) == ("parser", 17, boom)
    failures = [e for e in logs if e.get("log_level") == "error" and e.get("component") == "pipeline"]
    assert failures, logs
    text = " ".join(str(e) for e in failures)
    assert "parser" in text and "17" in text, failures


# -- health -------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_health_key_is_healthy_while_running(engine: str) -> None:
    app = test_app("t")
    moving = anyio.Event()

    async def sink(msg: int) -> None:
        if msg == 5:
            moving.set()
        await anyio.sleep(0)

    app.register(
        make_pipeline([Stage("source", endless_root, [Stage("sink", sink)])], engine), name="pipeline", priority=2
    )
    async with serving(app) as served:
        flag = app.health.get("pipeline")  # the health key is the registered name
        assert flag.component == "pipeline"
        await moving.wait()
        assert flag.healthy, flag.reason
    assert served.status == 0, app.errors


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_stalled_stage_makes_the_pipeline_unhealthy_until_it_moves(engine: str) -> None:
    app = test_app("t")
    release = anyio.Event()
    stuck = anyio.Event()

    async def sink(msg: int) -> None:
        if msg == 3:
            stuck.set()
            await release.wait()
        await anyio.sleep(0)

    app.register(
        make_pipeline([Stage("source", endless_root, [Stage("sink", sink, buffer=4)])], engine, stall_after=0.2),
        name="pipeline",
        priority=2,
    )
    async with serving(app) as served:
        flag = app.health.get("pipeline")
        assert flag.healthy
        await stuck.wait()
        await wait_until(lambda: not flag.healthy)
        release.set()
        await wait_until(lambda: flag.healthy)
    assert served.status == 0, app.errors


# -- the engine setting ---------------------------------------------------------------------------


async def test_the_app_prefixed_engine_setting_picks_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPLE_PIPELINE_ENGINE", "serial")
    monkeypatch.setenv("PIPELINE_ENGINE", "parallel")  # the prefixed name is read first
    app = test_app("example")
    trace: list[tuple[str, int]] = []

    async def root(emit: Any) -> None:
        for i in range(5):
            await emit(i)
            trace.append(("emitted", i))

    async def sink(msg: int) -> None:
        trace.append(("sink", msg))

    p = app.register(
        Pipeline([Stage("source", root, [Stage("sink", sink)])], engine="parallel"), name="pipeline", priority=2
    )
    with anyio.fail_after(10):
        status = await app.serve()
    assert status == 0, app.errors
    assert p.engine == "serial"
    # Serial is depth-first: each message reaches the leaf before its emit returns.
    assert trace == [event for i in range(5) for event in (("sink", i), ("emitted", i))]


@pytest.mark.parametrize("variable", ["PIPELINE_ENGINE", "T_PIPELINE_ENGINE"])
async def test_a_bogus_engine_setting_fails_boot_with_a_config_error_naming_it(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "bogus")
    app = test_app("t")
    ran: list[int] = []

    async def root(emit: Any) -> None:
        ran.append(1)
        await emit(1)

    app.register(Pipeline([Stage("source", root, [Stage("sink", lambda m: None)])]), name="pipeline", priority=2)
    with anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    (error,) = app.errors
    assert error.operation in ("config", "init"), error
    assert isinstance(error.cause, ConfigError), error
    assert "PIPELINE_ENGINE" in str(error) and "bogus" in str(error), str(error)
    assert ran == []
