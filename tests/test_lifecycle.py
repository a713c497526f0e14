"""The runner's lifecycle, ported from go-nacelle/process's runner and run tests.

Order is asserted on a recorded ``Trace``; sleeps only give the runner a
chance to do something it must not do, and every wait is bounded.
"""

from __future__ import annotations

import threading
import time

import anyio
import pytest
import structlog

from nacelle_py import (
    App,
    ComponentError,
    ComponentTimeoutError,
    Health,
    Initializer,
    Inject,
    Process,
)
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """The error our test components raise."""


# -- components ------------------------------------------------------------------------


class Init(Initializer):
    """An initializer with init only; records ``<name>.init``."""

    def __init__(self, trace: Trace, name: str, *, init_error: bool = False) -> None:
        self.trace, self.name, self.init_error = trace, name, init_error

    async def init(self) -> None:
        await anyio.sleep(0)
        if self.init_error:
            self.trace.add(f"{self.name}.init.fail")
            raise Boom(f"{self.name} init")
        self.trace.add(f"{self.name}.init")


class Fin(Init):
    """An initializer with init and finalize."""

    def __init__(
        self,
        trace: Trace,
        name: str,
        *,
        init_error: bool = False,
        init_hangs: bool = False,
        finalize_error: bool = False,
        finalize_hangs: bool = False,
    ) -> None:
        super().__init__(trace, name, init_error=init_error)
        self.init_hangs, self.finalize_error, self.finalize_hangs = init_hangs, finalize_error, finalize_hangs

    async def init(self) -> None:
        if self.init_hangs:
            self.trace.add(f"{self.name}.init.start")
            await anyio.sleep_forever()
        await super().init()

    async def finalize(self) -> None:
        self.trace.add(f"{self.name}.finalize")
        if self.finalize_hangs:
            await anyio.sleep_forever()
        if self.finalize_error:
            raise Boom(f"{self.name} finalize")


class Proc(Process):
    """A process that runs until ``stop`` is called, with switchable failures."""

    def __init__(
        self,
        trace: Trace,
        name: str,
        *,
        init_error: bool = False,
        init_hangs: bool = False,
        run_error: bool = False,
        run_returns: bool = False,
        stop_error: bool = False,
        stop_releases: bool = True,
        stop_hangs: bool = False,
    ) -> None:
        self.trace, self.name = trace, name
        self.init_error, self.init_hangs = init_error, init_hangs
        self.run_error, self.run_returns = run_error, run_returns
        self.stop_error, self.stop_releases, self.stop_hangs = stop_error, stop_releases, stop_hangs

    async def init(self) -> None:
        self.released = anyio.Event()
        if self.init_hangs:
            self.trace.add(f"{self.name}.init.start")
            await anyio.sleep_forever()
        await anyio.sleep(0)
        if self.init_error:
            self.trace.add(f"{self.name}.init.fail")
            raise Boom(f"{self.name} init")
        self.trace.add(f"{self.name}.init")

    async def run(self) -> None:
        self.trace.add(f"{self.name}.run")
        try:
            await anyio.sleep(0)
            if self.run_error:
                raise Boom(f"{self.name} run")
            if self.run_returns:
                self.trace.add(f"{self.name}.run.end")
                return
            await self.released.wait()
        except anyio.get_cancelled_exc_class():
            self.trace.add(f"{self.name}.run.cancelled")
            raise
        self.trace.add(f"{self.name}.run.end")

    async def stop(self) -> None:
        self.trace.add(f"{self.name}.stop")
        if self.stop_hangs:
            await anyio.sleep_forever()
        if self.stop_releases:
            self.released.set()
        if self.stop_error:
            raise Boom(f"{self.name} stop")

    async def finalize(self) -> None:
        self.trace.add(f"{self.name}.finalize")


class NoStop(Process):
    """A process without ``stop``: the runner must cancel its ``run``."""

    def __init__(self, trace: Trace, name: str) -> None:
        self.trace, self.name = trace, name

    async def run(self) -> None:
        self.trace.add(f"{self.name}.run")
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.trace.add(f"{self.name}.run.cancelled")
            raise


# -- helpers ---------------------------------------------------------------------------


async def serve(app: App, limit: float = 10) -> int:
    """Serve to completion; a hang is a failure, not a stuck suite."""
    with anyio.fail_after(limit):
        return await app.serve()


def shutdown_when_ready(app: App) -> None:
    app.on_ready(app.shutdown)


def events(trace: Trace, suffix: str) -> list[str]:
    """The component names of the events ending in ``.suffix``, in order."""
    return [e[: -len(suffix) - 1] for e in trace if e.endswith("." + suffix)]


async def wait_for(trace: Trace, event: str, limit: float = 5) -> None:
    with anyio.fail_after(limit):
        while event not in trace:
            await anyio.sleep(0.005)


def ops(app: App) -> list[tuple[str, str]]:
    return [(e.component, e.operation) for e in app.errors]


# -- order -----------------------------------------------------------------------------


async def test_run_order_across_priorities() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "a"), name="a")
    app.register(Init(trace, "b"), name="b")
    app.register(Fin(trace, "c"), name="c")
    app.register(Proc(trace, "d"), name="d", priority=1)
    app.register(Proc(trace, "e"), name="e", priority=5)
    app.register(Proc(trace, "f"), name="f", priority=5)
    app.register(Proc(trace, "g"), name="g", priority=3)
    app.register(Proc(trace, "h"), name="h", priority=1)
    shutdown_when_ready(app)

    assert await serve(app) == 0
    assert app.errors == ()
    ev = trace.events

    # init: a group at a time, ascending priority; the next group initialises
    # only once the previous one's runs have started.
    inits = events(trace, "init")
    assert set(inits[:3]) == {"a", "b", "c"}
    assert set(inits[3:5]) == {"d", "h"}
    assert inits[5] == "g"
    assert set(inits[6:]) == {"e", "f"}
    for started in ("d.run", "h.run"):
        assert ev.index(started) < ev.index("g.init")
    assert ev.index("g.run") < min(ev.index("e.init"), ev.index("f.init"))

    # stop: descending priority, each group's runs ended before the next group stops.
    stops = events(trace, "stop")
    assert set(stops[:2]) == {"e", "f"}
    assert stops[2] == "g"
    assert set(stops[3:]) == {"d", "h"}
    assert max(ev.index("e.run.end"), ev.index("f.run.end")) < ev.index("g.stop")
    assert ev.index("g.run.end") < min(ev.index("d.stop"), ev.index("h.stop"))

    # finalize: exact reverse of successful init, after every run ended.
    with_finalize = {"a", "c", "d", "e", "f", "g", "h"}
    assert events(trace, "finalize") == [n for n in reversed(inits) if n in with_finalize]
    last_run_end = max(i for i, e in enumerate(ev) if e.endswith(".run.end"))
    assert last_run_end < min(i for i, e in enumerate(ev) if e.endswith(".finalize"))
    assert not any(e.endswith("cancelled") for e in ev)


async def test_stops_within_a_group_run_concurrently() -> None:
    """Each of two stops waits for the other to have been called: only concurrent stops finish."""
    trace = Trace()

    class Pair(Proc):
        other: Pair

        async def stop(self) -> None:
            self.called.set()
            with anyio.fail_after(2):
                await self.other.called.wait()
            await super().stop()

        async def init(self) -> None:
            self.called = anyio.Event()
            await super().init()

    x, y = Pair(trace, "x"), Pair(trace, "y")
    x.other, y.other = y, x
    app = test_app("t")
    app.register(x, name="x")
    app.register(y, name="y")
    shutdown_when_ready(app)
    assert await serve(app) == 0, app.errors
    assert set(events(trace, "stop")) == {"x", "y"}


async def test_initializers_are_not_stopped_and_only_runs_are() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "a"), name="a")
    app.register(Proc(trace, "p"), name="p", priority=1)
    shutdown_when_ready(app)
    assert await serve(app) == 0
    assert events(trace, "stop") == ["p"]
    assert events(trace, "finalize") == ["p", "a"]


async def test_no_components_serves_and_exits_cleanly() -> None:
    app = test_app("t")
    shutdown_when_ready(app)
    assert await serve(app) == 0


# -- exits -----------------------------------------------------------------------------


async def test_early_exit_unwinds_gracefully_with_status_0() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "i"), name="i")
    app.register(Proc(trace, "a"), name="a", priority=1)
    app.register(Proc(trace, "b", run_returns=True), name="b", priority=1)
    assert await serve(app) == 0
    assert app.errors == ()
    ev = trace.events
    assert ev.index("b.run.end") < ev.index("a.stop")
    assert "a.run.end" in ev and "a.run.cancelled" not in ev
    assert set(events(trace, "finalize")) == {"a", "b", "i"}
    assert events(trace, "finalize")[-1] == "i"


async def test_early_exit_mid_stack_unwinds_every_priority() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "low"), name="low")
    mid = app.register(Proc(trace, "mid"), name="mid", priority=1)
    app.register(Proc(trace, "high"), name="high", priority=2)

    async def quit_mid() -> None:
        await wait_for(trace, "high.run")
        mid.released.set()  # mid's run returns without stop(): an early exit

    async with anyio.create_task_group() as tg:
        tg.start_soon(quit_mid)
        status = await serve(app)
    assert status == 0 and app.errors == ()
    ev = trace.events
    assert "mid.stop" not in ev  # its run already ended: only what runs is stopped
    assert ev.index("mid.run.end") < ev.index("high.stop") < ev.index("low.stop")
    assert events(trace, "finalize") == ["high", "mid", "low"]


async def test_silent_exit_does_not_stop_the_app() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "a"), name="a")
    app.register(Proc(trace, "b", run_returns=True), name="b", silent_exit=True)

    async def later() -> None:
        await wait_for(trace, "b.run.end")
        await anyio.sleep(0.15)  # give the runner the chance to (wrongly) unwind
        trace.add("checked")
        app.shutdown()

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        status = await serve(app)
    assert status == 0 and app.errors == ()
    ev = trace.events
    assert ev.index("checked") < ev.index("a.stop")
    assert events(trace, "stop") == ["a"]


async def test_silent_exit_does_not_hide_a_run_error() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "a"), name="a")
    app.register(Proc(trace, "b", run_error=True), name="b", silent_exit=True)
    assert await serve(app) == 1
    assert ops(app) == [("b", "run")]
    assert "a.stop" in trace


# -- shutdown requests -----------------------------------------------------------------


async def test_shutdown_from_a_task() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "p"), name="p")

    async def stopper() -> None:
        await wait_for(trace, "p.run")
        trace.add("shutdown")
        app.shutdown()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stopper)
        status = await serve(app)
    assert status == 0 and app.errors == ()
    assert trace.before("shutdown", "p.stop")
    assert trace.before("p.run.end", "p.finalize")


async def test_shutdown_from_another_thread() -> None:
    trace = Trace()
    app = test_app("t")

    class Spawner(Proc):
        async def run(self) -> None:
            def later() -> None:
                time.sleep(0.05)
                trace.add("shutdown")
                app.shutdown()

            threading.Thread(target=later, daemon=True).start()
            await super().run()

    app.register(Spawner(trace, "p"), name="p")
    assert await serve(app) == 0
    assert app.errors == ()
    assert trace.before("shutdown", "p.stop")
    assert "p.run.end" in trace


async def test_shutdown_is_idempotent() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "p"), name="p")

    @app.on_ready
    def twice() -> None:
        app.shutdown()
        app.shutdown()

    assert await serve(app) == 0
    assert events(trace, "stop") == ["p"]


async def test_shutdown_before_serve_exits_cleanly() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "p"), name="p")
    app.shutdown()
    assert await serve(app) == 0
    assert app.errors == ()
    # whatever started was unwound
    assert len(events(trace, "run")) == len(events(trace, "stop"))


async def test_serve_twice_is_refused() -> None:
    app = test_app("t")
    shutdown_when_ready(app)
    assert await serve(app) == 0
    with pytest.raises(RuntimeError):
        await app.serve()


async def test_process_without_stop_is_cancelled() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(NoStop(trace, "n"), name="n")
    app.register(NoStop(trace, "m"), name="m", priority=1)
    shutdown_when_ready(app)
    started = time.monotonic()
    assert await serve(app) == 0
    assert time.monotonic() - started < 2
    assert app.errors == ()
    assert events(trace, "run.cancelled") == ["m", "n"]


# -- init errors and timeouts ----------------------------------------------------------


async def test_initializer_error_abandons_boot_and_finalizes_in_reverse() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "a"), name="a")
    app.register(Fin(trace, "a2"), name="a2", priority=1)
    app.register(Fin(trace, "b", init_error=True), name="b", priority=2)
    app.register(Init(trace, "c"), name="c", priority=3)
    app.register(Proc(trace, "d"), name="d", priority=3)
    assert await serve(app) == 1
    assert ops(app) == [("b", "init")]
    err = app.errors[0]
    assert isinstance(err, ComponentError)
    assert isinstance(err.cause, Boom) and err.__cause__ is err.cause
    assert "b" in str(err) and "init" in str(err)
    assert events(trace, "init") == ["a", "a2"]
    assert events(trace, "finalize") == ["a2", "a"]  # not b: its init failed
    assert not any(e.startswith(("c.", "d.")) for e in trace)


def ladder(trace: Trace, **f_options: bool) -> App:
    """go-nacelle's test topology: initializers a, b, c; process d; e, f, g together; then h.

    ``f_options`` configure the process ``f`` (``init_error=True``, ``run_error=True``...).
    """
    app = test_app("t")
    for name in ("a", "b", "c"):
        app.register(Init(trace, name), name=name)
    app.register(Proc(trace, "d"), name="d", priority=1)
    app.register(Proc(trace, "e"), name="e", priority=2)
    app.register(Proc(trace, "f", **f_options), name="f", priority=2)
    app.register(Proc(trace, "g"), name="g", priority=2)
    app.register(Proc(trace, "h"), name="h", priority=3)
    return app


async def test_process_init_error_stops_only_what_started() -> None:
    trace = Trace()
    app = ladder(trace, init_error=True)
    assert await serve(app) == 1
    assert ops(app) == [("f", "init")]
    assert events(trace, "run") == ["d"]
    assert events(trace, "stop") == ["d"]
    assert not any(e.startswith("h.") for e in trace)
    # e and g initialised alongside f: they are finalised, never run or stopped.
    fin = events(trace, "finalize")
    assert set(fin) == {"d", "e", "g"} and fin[-1] == "d"
    inits = [n for n in events(trace, "init") if n in fin]
    assert fin == list(reversed(inits))
    assert trace.before("d.run.end", "d.finalize")


async def test_init_timeout_abandons_boot() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "a"), name="a")
    app.register(Fin(trace, "b", init_hangs=True), name="b", priority=1, init_timeout=0.1)
    app.register(Proc(trace, "c"), name="c", priority=2)
    started = time.monotonic()
    assert await serve(app) == 1
    assert 0.1 <= time.monotonic() - started < 2
    assert ops(app) == [("b", "init")]
    err = app.errors[0]
    assert isinstance(err, ComponentTimeoutError) and err.timeout == pytest.approx(0.1)
    assert events(trace, "finalize") == ["a"]
    assert not any(e.startswith("c.") for e in trace)


async def test_process_init_timeout_stops_running_processes() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "a"), name="a")
    app.register(Proc(trace, "b", init_hangs=True), name="b", priority=1, init_timeout=0.1)
    assert await serve(app) == 1
    assert ops(app) == [("b", "init")]
    assert isinstance(app.errors[0], ComponentTimeoutError)
    assert events(trace, "stop") == ["a"]
    assert events(trace, "finalize") == ["a"]


async def test_plain_def_init_timeout_does_not_wait_for_the_thread() -> None:
    release = threading.Event()

    class Blocking(Initializer):
        def init(self) -> None:
            release.wait(5)

    app = test_app("t")
    app.register(Blocking(), name="blk", init_timeout=0.1)
    started = time.monotonic()
    try:
        assert await serve(app) == 1
        assert time.monotonic() - started < 2
    finally:
        release.set()
    assert ops(app) == [("blk", "init")]


# -- run errors ------------------------------------------------------------------------


async def test_run_error_stops_the_others_with_status_1() -> None:
    class LateFail(Proc):
        async def run(self) -> None:
            self.trace.add(f"{self.name}.run")
            await anyio.sleep(0.05)
            raise Boom("late")

    app = test_app("t")
    trace = Trace()
    app.register(Proc(trace, "a"), name="a")
    app.register(LateFail(trace, "x"), name="x", priority=1)
    app.register(Proc(trace, "b"), name="b", priority=1)
    with structlog.testing.capture_logs() as logs:
        assert await serve(app) == 1
    assert ops(app) == [("x", "run")]
    err = app.errors[0]
    assert isinstance(err.cause, Boom)
    assert events(trace, "stop") == ["b", "a"]  # x's run ended: not stopped
    assert set(events(trace, "finalize")) == {"a", "b", "x"}
    assert events(trace, "finalize")[-1] == "a"
    failures = [e for e in logs if e.get("log_level") == "error" and e.get("operation") == "run"]
    assert len(failures) == 1
    assert failures[0]["component"] == "x"
    assert "x" in failures[0]["event"] and "run" in failures[0]["event"]


async def test_run_error_during_boot_abandons_later_groups() -> None:
    trace = Trace()
    app = ladder(trace, run_error=True)
    assert await serve(app) == 1
    assert ("f", "run") in ops(app)
    assert all(op != "init" for _, op in ops(app))
    assert not any(e.startswith("h.") for e in trace)
    stops = events(trace, "stop")
    assert set(stops) == {"d", "e", "g"} and stops[-1] == "d"


# -- stop errors and timeouts ----------------------------------------------------------


async def test_stop_errors_are_reported_and_their_runs_cancelled_at_once() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Init(trace, "a"), name="a")
    app.register(Proc(trace, "d", stop_error=True, stop_releases=False), name="d", shutdown_timeout=5)
    app.register(Proc(trace, "e"), name="e", priority=5)
    app.register(Proc(trace, "f", stop_error=True, stop_releases=False), name="f", priority=5, shutdown_timeout=5)
    app.register(Proc(trace, "g"), name="g", priority=3)
    app.register(Proc(trace, "h", stop_error=True, stop_releases=False), name="h", shutdown_timeout=5)
    shutdown_when_ready(app)
    started = time.monotonic()
    assert await serve(app) == 1
    assert time.monotonic() - started < 3  # never waited for the 5 s shutdown timeouts
    assert sorted(ops(app)) == [("d", "stop"), ("f", "stop"), ("h", "stop")]
    assert all(isinstance(e.cause, Boom) for e in app.errors)
    assert set(events(trace, "stop")) == {"d", "e", "f", "g", "h"}
    assert set(events(trace, "run.cancelled")) == {"d", "f", "h"}
    assert set(events(trace, "run.end")) == {"e", "g"}
    assert len(events(trace, "finalize")) == 5


async def test_shutdown_timeout_cancels_run() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "i"), name="i")
    app.register(Proc(trace, "p", stop_releases=False), name="p", priority=1, shutdown_timeout=0.1)
    shutdown_when_ready(app)
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        assert await serve(app) == 1
        elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 2
    assert ops(app) == [("p", "stop")]
    err = app.errors[0]
    assert isinstance(err, ComponentTimeoutError) and err.timeout == pytest.approx(0.1)
    ev = trace.events
    assert ev.index("p.stop") < ev.index("p.run.cancelled") < ev.index("p.finalize") < ev.index("i.finalize")
    errors = [e for e in logs if e.get("log_level") == "error" and e.get("component") == "p"]
    assert len(errors) == 1 and errors[0]["operation"] == "stop"


async def test_stop_that_hangs_is_bounded_by_shutdown_timeout() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "p", stop_hangs=True), name="p", shutdown_timeout=0.1)
    shutdown_when_ready(app)
    started = time.monotonic()
    assert await serve(app) == 1
    assert time.monotonic() - started < 2
    assert ops(app) == [("p", "stop")]
    assert "p.run.cancelled" in trace and "p.finalize" in trace


async def test_shutdown_timeout_none_waits_for_the_run() -> None:
    trace = Trace()

    class Slow(Proc):
        async def stop(self) -> None:
            self.trace.add(f"{self.name}.stop")
            await anyio.sleep(0.15)
            self.released.set()

    app = test_app("t")
    app.register(Slow(trace, "p"), name="p", shutdown_timeout=None)
    shutdown_when_ready(app)
    assert await serve(app) == 0
    assert "p.run.end" in trace


async def test_shutdown_timeout_default_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SHUTDOWN_TIMEOUT", "0.1")
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "p", stop_releases=False), name="p")
    shutdown_when_ready(app)
    started = time.monotonic()
    assert await serve(app) == 1
    assert time.monotonic() - started < 2
    assert ops(app) == [("p", "stop")]


# -- finalize errors and timeouts ------------------------------------------------------


async def test_finalize_errors_are_reported_and_unwinding_continues() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "a", finalize_error=True), name="a")
    app.register(Fin(trace, "b", finalize_error=True), name="b", priority=1)
    app.register(Fin(trace, "c", finalize_error=True), name="c", priority=2)
    shutdown_when_ready(app)
    assert await serve(app) == 1
    assert events(trace, "finalize") == ["c", "b", "a"]
    assert ops(app) == [("c", "finalize"), ("b", "finalize"), ("a", "finalize")]
    assert all(isinstance(e.cause, Boom) for e in app.errors)


async def test_finalize_timeout_is_an_error_and_unwinding_continues() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "z"), name="z")
    app.register(Fin(trace, "a", finalize_hangs=True), name="a", priority=1, finalize_timeout=0.1)
    app.register(Fin(trace, "b"), name="b", priority=2)
    app.register(Proc(trace, "c"), name="c", priority=3)
    shutdown_when_ready(app)
    started = time.monotonic()
    assert await serve(app) == 1
    assert 0.1 <= time.monotonic() - started < 2
    assert events(trace, "finalize") == ["c", "b", "a", "z"]
    assert ops(app) == [("a", "finalize")]
    assert isinstance(app.errors[0], ComponentTimeoutError)


# -- start timeout and health ----------------------------------------------------------


class Unhealthy(Proc):
    """Registers ``key`` (unhealthy) in init and never reports healthy."""

    health: Health = Inject("health")

    def __init__(self, trace: Trace, name: str, key: str) -> None:
        super().__init__(trace, name)
        self.key = key

    async def init(self) -> None:
        await super().init()
        self.flag = self.health.register(self.key)


async def test_start_timeout_names_every_unhealthy_key_and_its_component() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "i"), name="i")
    app.register(Unhealthy(trace, "a", "utoh1"), name="a", priority=1, start_timeout=0.2)
    app.register(Unhealthy(trace, "b", "utoh2"), name="b", priority=1, start_timeout=5)
    app.register(Proc(trace, "c"), name="c", priority=1)
    app.register(Proc(trace, "later"), name="later", priority=2)
    started = time.monotonic()
    assert await serve(app) == 1
    assert 0.2 <= time.monotonic() - started < 2  # the group's smallest start_timeout
    # One error per component holding the group up, each named by its registered name (issue 13).
    starts = [e for e in app.errors if e.operation == "start"]
    assert len(starts) == 2 and len(app.errors) == 2
    assert [e.component for e in starts] == ["a", "b"]
    assert all(isinstance(e, ComponentTimeoutError) for e in starts)
    assert "'utoh1' (registered by a)" in str(starts[0]) and "'utoh2' (registered by b)" in str(starts[1])
    assert set(events(trace, "stop")) == {"a", "b", "c"}
    assert not any(e.startswith("later.") for e in trace)
    assert events(trace, "finalize")[-1] == "i"


async def test_next_group_waits_until_healthy() -> None:
    trace = Trace()

    class Warming(Proc):
        health: Health = Inject("health")

        async def init(self) -> None:
            await super().init()
            self.flag = self.health.register("warm")

        async def run(self) -> None:
            self.trace.add("w.run")
            await anyio.sleep(0.1)
            self.trace.add("w.healthy")
            self.flag.update(True)
            await self.released.wait()
            self.trace.add("w.run.end")

    app = test_app("t")
    app.register(Warming(trace, "w"), name="w", start_timeout=5)
    app.register(Proc(trace, "next"), name="next", priority=1)
    shutdown_when_ready(app)
    assert await serve(app) == 0, app.errors
    assert trace.before("w.healthy", "next.init")


async def test_health_updated_from_a_worker_thread() -> None:
    trace = Trace()

    class ThreadHealth(Process):
        health: Health = Inject("health")

        def __init__(self) -> None:
            self.done = threading.Event()

        async def init(self) -> None:
            self.flag = self.health.register("threaded")

        def run(self) -> None:  # a worker thread
            time.sleep(0.05)
            trace.add("healthy")
            self.flag.update(True)
            self.done.wait(5)

        def stop(self) -> None:
            self.done.set()

    app = test_app("t")
    app.register(ThreadHealth(), name="th", start_timeout=5)
    app.register(Proc(trace, "next"), name="next", priority=1)
    shutdown_when_ready(app)
    started = time.monotonic()
    assert await serve(app) == 0, app.errors
    assert time.monotonic() - started < 3
    assert trace.before("healthy", "next.init")
    assert app.health.healthy


# -- plain def methods -----------------------------------------------------------------


async def test_plain_def_methods_run_in_worker_threads() -> None:
    loop_thread = threading.get_ident()

    class Sync(Process):
        def __init__(self) -> None:
            self.idents: dict[str, int] = {}
            self.released = threading.Event()

        def init(self) -> None:
            self.idents["init"] = threading.get_ident()

        def run(self) -> None:
            self.idents["run"] = threading.get_ident()
            self.released.wait(5)

        def stop(self) -> None:
            self.idents["stop"] = threading.get_ident()
            self.released.set()

        def finalize(self) -> None:
            self.idents["finalize"] = threading.get_ident()

    proc = Sync()
    app = test_app("t")
    app.register(proc, name="sync")
    shutdown_when_ready(app)
    assert await serve(app) == 0, app.errors
    assert set(proc.idents) == {"init", "run", "stop", "finalize"}
    assert loop_thread not in proc.idents.values()


async def test_plain_def_errors_are_reported() -> None:
    class SyncFail(Process):
        def run(self) -> None:
            raise Boom("sync run")

    app = test_app("t")
    app.register(SyncFail(), name="sf")
    assert await serve(app) == 1
    assert ops(app) == [("sf", "run")]
    assert isinstance(app.errors[0].cause, Boom)


async def test_blocking_def_run_without_stop_does_not_block_shutdown() -> None:
    release = threading.Event()

    class Blocking(Process):
        def run(self) -> None:
            release.wait(5)

    app = test_app("t")
    app.register(Blocking(), name="blk")
    shutdown_when_ready(app)
    try:
        with structlog.testing.capture_logs() as logs:
            status = await serve(app, limit=3)  # the 5 s wait in the thread is not waited for
    finally:
        release.set()
    # The thread cannot be interrupted: the runner stops waiting for it. Cancelling
    # a run without stop() is the ordinary way to stop it, not a failure, but it is said.
    assert status == 0, app.errors
    warnings = [e for e in logs if e.get("log_level") == "warning" and e.get("component") == "blk"]
    assert [e["event"] for e in warnings] == [
        "run abandoned: a plain def run() cannot be cancelled; give the process a stop()"
    ]


# -- errors and logs -------------------------------------------------------------------


async def test_every_error_logged_once_with_component_and_operation() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "a", finalize_error=True), name="a")
    app.register(Proc(trace, "p", stop_error=True), name="p", priority=1)
    shutdown_when_ready(app)
    with structlog.testing.capture_logs() as logs:
        assert await serve(app) == 1
    assert ops(app) == [("p", "stop"), ("a", "finalize")]
    errors = [(e.get("component"), e.get("operation")) for e in logs if e.get("log_level") == "error"]
    assert errors.count(("p", "stop")) == 1
    assert errors.count(("a", "finalize")) == 1
    by_component = {e["event"] for e in logs if e.get("component") == "p"}
    assert {"init starting", "init finished", "run starting"} <= by_component


async def test_clean_run_logs_lifecycle_at_info() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "p"), name="p")
    shutdown_when_ready(app)
    with structlog.testing.capture_logs() as logs:
        assert await serve(app) == 0
    assert not [e for e in logs if e.get("log_level") == "error"]
    p_events = [e["event"] for e in logs if e.get("component") == "p"]
    for event in ("init starting", "init finished", "run starting", "stop starting", "finalize starting"):
        assert event in p_events


# -- requests and failures during boot -------------------------------------------------


async def test_shutdown_during_init_cancels_it_and_unwinds_what_started() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "a"), name="a")
    app.register(Fin(trace, "b", init_hangs=True), name="b", priority=1)
    app.register(Proc(trace, "c"), name="c", priority=2)

    async def stopper() -> None:
        await wait_for(trace, "b.init.start")
        app.shutdown()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stopper)
        status = await serve(app)
    assert status == 0 and app.errors == ()
    assert events(trace, "stop") == ["a"]
    assert events(trace, "finalize") == ["a"]  # b never finished init: not finalised
    assert not any(e.startswith("c.") for e in trace)


async def test_shutdown_while_waiting_for_health_is_clean() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Unhealthy(trace, "u", "never"), name="u", start_timeout=5)

    async def stopper() -> None:
        await wait_for(trace, "u.run")
        await anyio.sleep(0.05)
        app.shutdown()

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(stopper)
        status = await serve(app)
    assert time.monotonic() - started < 2
    assert status == 0 and app.errors == ()
    assert events(trace, "stop") == ["u"]


async def test_shutdown_during_first_group_init() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "b", init_hangs=True), name="b")

    async def stopper() -> None:
        await wait_for(trace, "b.init.start")
        app.shutdown()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stopper)
        status = await serve(app)
    assert status == 0 and app.errors == ()
    assert "b.finalize" not in trace


async def test_run_error_while_a_later_group_initialises_cancels_that_init() -> None:
    trace = Trace()

    class LateFail(Proc):
        async def run(self) -> None:
            self.trace.add(f"{self.name}.run")
            await wait_for(self.trace, "h.init.start")
            raise Boom("late")

    app = test_app("t")
    app.register(LateFail(trace, "d"), name="d")
    app.register(Fin(trace, "h", init_hangs=True), name="h", priority=1)  # no init_timeout
    assert await serve(app, limit=5) == 1
    assert ops(app) == [("d", "run")]
    assert events(trace, "finalize") == ["d"]


async def test_init_error_does_not_wait_for_a_hanging_sibling_init() -> None:
    """A failed init abandons boot: a sibling init still running (no init_timeout) is cancelled after a short grace."""
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "a"), name="a")
    app.register(Fin(trace, "f", init_error=True), name="f", priority=1)
    app.register(Fin(trace, "g", init_hangs=True), name="g", priority=1)
    assert await serve(app, limit=5) == 1
    assert ops(app) == [("f", "init")]
    assert events(trace, "finalize") == ["a"]


async def test_on_ready_hook_error_unwinds_with_status_1() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "p"), name="p")

    @app.on_ready
    def broken() -> None:
        raise Boom("hook")

    assert await serve(app) == 1
    assert [e.operation for e in app.errors] == ["ready"]
    assert events(trace, "stop") == ["p"]


async def test_early_exit_during_boot_skips_later_groups() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Init(trace, "i"), name="i", priority=-1)  # see the _boot bug above for the first group
    app.register(Proc(trace, "a"), name="a")
    app.register(Proc(trace, "oneshot", run_returns=True), name="oneshot")
    app.register(Proc(trace, "later"), name="later", priority=1)
    assert await serve(app) == 0, app.errors
    assert events(trace, "stop") == ["a"]
    assert "later.run" not in trace
    # later may or may not have initialised (the return races its group's start);
    # whatever initialised is finalised.
    assert set(events(trace, "finalize")) == set(events(trace, "init")) - {"i"}


async def test_shutdown_from_a_thread_during_boot() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "a"), name="a")

    class SlowInit(Fin):
        def init(self) -> None:  # type: ignore[override]  # a worker thread
            self.trace.add("slow.init.start")
            app.shutdown()  # from the worker thread
            time.sleep(0.05)
            self.trace.add("slow.init")

    app.register(SlowInit(trace, "slow"), name="slow", priority=1)
    app.register(Proc(trace, "c"), name="c", priority=2)
    assert await serve(app) == 0, app.errors
    assert events(trace, "stop") == ["a"]
    assert not any(e.startswith("c.") for e in trace)


@pytest.mark.parametrize(
    "first_group",
    [
        True,
        False,
    ],
)
async def test_run_error_among_processes_without_stop(first_group: bool) -> None:
    trace = Trace()

    class FailNoStop(Process):
        health: Health = Inject("health")

        async def init(self) -> None:
            self.flag = self.health.register("bad")  # keeps the group starting until run fails

        async def run(self) -> None:
            await wait_for(trace, "n.run")
            await wait_for(trace, "m.run")
            raise Boom("nostop")

    app = test_app("t")
    if not first_group:
        app.register(Init(trace, "i"), name="i", priority=-1)
    app.register(NoStop(trace, "n"), name="n")
    app.register(FailNoStop(), name="bad")
    app.register(NoStop(trace, "m"), name="m")
    assert await serve(app) == 1
    assert ops(app) == [("bad", "run")]
    assert set(events(trace, "run.cancelled")) == {"n", "m"}


# -- a component may not end the process -------------------------------------------------


class Exits(Initializer):
    def __init__(self, sync: bool) -> None:
        self.sync = sync

    async def _async_init(self) -> None:
        raise SystemExit(3)

    def init(self):  # type: ignore[no-untyped-def]
        if self.sync:
            raise SystemExit(3)
        return self._async_init()


@pytest.mark.parametrize("sync", [True, False])
async def test_system_exit_from_a_component_is_an_ordinary_failure(sync: bool) -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Fin(trace, "a"), name="a")
    app.register(Exits(sync), name="exits", priority=1)
    assert await serve(app) == 1
    assert ops(app) == [("exits", "init")]
    assert "SystemExit" in str(app.errors[0])
    assert events(trace, "finalize") == ["a"]


@pytest.mark.parametrize("process_timeout", [None, 3.0])
async def test_start_wait_is_bounded_by_the_smallest_start_timeout_of_the_whole_group(
    process_timeout: float | None,
) -> None:
    """An initializer's start_timeout counts too: it may own a health key the wait depends on."""

    class Warmer(Initializer):
        health = Inject("health")

        async def init(self) -> None:
            self.health.register("cache-warm")  # never reported healthy

    class Forever(Process):
        async def run(self) -> None:
            await anyio.sleep_forever()

    app = test_app("t")
    app.register(Warmer(), name="warm", priority=0, start_timeout=0.2)
    app.register(Forever(), name="p", priority=0, start_timeout=process_timeout)
    assert await serve(app, limit=2.5) == 1
    error = app.errors[0]
    assert isinstance(error, ComponentTimeoutError) and error.operation == "start"
    assert error.timeout == pytest.approx(0.2)
    assert "cache-warm" in str(error) and "warm" in error.component


async def test_trace_before_needs_both_events() -> None:
    trace = Trace()
    trace.add("a")
    assert not trace.before("a", "b")
    assert not trace.before("b", "a")
    trace.add("b")
    assert trace.before("a", "b") and not trace.before("b", "a")
