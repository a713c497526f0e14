"""Black-box QA of restart policies (issue 13, part B, and the fault-injection bugs), on asyncio and trio.

Written from the issue's text and docs/lifecycle.md, docs/operations.md and the README
only, through the public API: ``App``, ``register``, ``nacelle_py.testing``, the ops
endpoint over real HTTP, a real subprocess for signals. Tests that expose a bug are strict
xfails whose reason starts with ``BUG:``. Lifecycle order is read from a ``Trace`` of
``<label>#<incarnation>.<operation>`` events; sleeps only give the runner a chance to do
something it must not do, and every wait is bounded.
"""

from __future__ import annotations

import math
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from nacelle_py import App, Health, Initializer, Inject, Process, RegistrationError, ServiceContainer
from nacelle_py.base import HTTPServer
from nacelle_py.testing import BootError, Trace, running, test_app

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from harness import AppProcess, clean_env  # noqa: E402

pytestmark = pytest.mark.anyio

QUICK = (0.01, 0.02)
"""A backoff that keeps scenarios fast."""
LIMIT = 15.0
"""The bound of every scenario's wait."""

Action = str
"""What a run does in an incarnation: "serve" (until stopped), "raise", "return", "hang" (never healthy),
"crash" (raises at once, before its key is healthy)."""


# -- components ---------------------------------------------------------------------------------------


class Step(Initializer):
    """An initializer that records init/finalize per incarnation and may fail chosen inits."""

    services: ServiceContainer = Inject("services")

    def __init__(self, trace: Trace, label: str, fail_inits: frozenset[int] = frozenset(), sets: str = "") -> None:
        self.trace = trace
        self.label = label
        self.fail_inits = fail_inits
        self.sets = sets
        self.n = 0

    async def init(self) -> None:
        self.n += 1
        self.trace.add(f"{self.label}#{self.n}.init")
        if self.n in self.fail_inits:
            raise RuntimeError(f"{self.label} init boom #{self.n}")
        if self.sets:
            self.services.set(self.sets, f"{self.sets}-{self.n}")
        self.trace.add(f"{self.label}#{self.n}.init.ok")

    async def finalize(self) -> None:
        self.trace.add(f"{self.label}#{self.n}.finalize")


class Proc(Process):
    """A process whose run does, per incarnation, what ``actions`` says (default: serve until stopped).

    Failing actions wait for ``go`` (the app's ``on_ready``, unless ``at_boot``), so that a
    failure lands while the app supervises.
    """

    health: Health = Inject("health")

    def __init__(
        self,
        trace: Trace,
        label: str,
        actions: dict[int, Action] | None = None,
        *,
        go: anyio.Event | None = None,
        key: str | None = None,
        fail_inits: frozenset[int] = frozenset(),
        fail_stops: frozenset[int] = frozenset(),
        slow_inits: frozenset[int] = frozenset(),
        wants: str = "",
        services: ServiceContainer | None = None,
    ) -> None:
        self.trace = trace
        self.label = label
        self.actions = actions or {}
        self.go = go
        self.key_name = key
        self.fail_inits = fail_inits
        self.fail_stops = fail_stops
        self.slow_inits = slow_inits
        self.wants = wants
        self.n = 0
        self.seen: list[object] = []

    async def init(self) -> None:
        self.n += 1
        self.trace.add(f"{self.label}#{self.n}.init")
        if self.n in self.fail_inits:
            raise RuntimeError(f"{self.label} init boom #{self.n}")
        if self.n in self.slow_inits:
            await anyio.sleep(30)
        self.stopping = anyio.Event()
        self.key = self.health.register(self.key_name) if self.key_name else None
        self.trace.add(f"{self.label}#{self.n}.init.ok")

    async def run(self) -> None:
        n = self.n
        self.trace.add(f"{self.label}#{n}.run")
        if self.wants:
            self.seen.append(self.services_get(self.wants))
        action = self.actions.get(n, "serve")
        if action == "crash":
            await anyio.sleep(0.01)
            raise RuntimeError(f"{self.label} crash #{n}")
        if self.key is not None and action != "hang":
            self.key.update(True)
        if action in ("raise", "return"):
            if self.go is not None:
                await self.go.wait()
            await anyio.sleep(0.01)
            if action == "raise":
                self.trace.add(f"{self.label}#{n}.raise")
                raise RuntimeError(f"{self.label} boom #{n}")
            self.trace.add(f"{self.label}#{n}.return")
            return
        await self.stopping.wait()
        self.trace.add(f"{self.label}#{n}.run.end")

    def services_get(self, key: str) -> object:
        return self.container.get(key)

    async def stop(self) -> None:
        self.trace.add(f"{self.label}#{self.n}.stop")
        self.stopping.set()
        if self.n in self.fail_stops:
            raise RuntimeError(f"{self.label} stop boom #{self.n}")

    async def finalize(self) -> None:
        self.trace.add(f"{self.label}#{self.n}.finalize")


class Consumer(Proc):
    """A Proc that is injected with the service container (to read a service an initializer re-sets)."""

    container: ServiceContainer = Inject("services")


# -- helpers ------------------------------------------------------------------------------------------


async def until(predicate: Callable[[], bool], limit: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until true, at most ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.005)


def at(trace: Trace, event: str) -> int:
    """Position of ``event`` in the trace (fails with the trace when absent)."""
    events = trace.events
    assert event in events, f"{event} not in {events}"
    return events.index(event)


def ops(trace: Trace, op: str) -> list[str]:
    """The ``label#n`` of every ``op`` event, in order."""
    return [e[: -len(op) - 1] for e in trace.events if e.endswith(f".{op}")]


def assert_finalized_once(trace: Trace) -> None:
    """Every successful init (per incarnation) is finalized exactly once, and nothing else is."""
    events = trace.events
    inited = [e[: -len(".init.ok")] for e in events if e.endswith(".init.ok")]
    finalized = [e[: -len(".finalize")] for e in events if e.endswith(".finalize")]
    assert sorted(inited) == sorted(finalized), events
    assert len(set(finalized)) == len(finalized), events


async def serve(app: App, body: Callable[[], Awaitable[None]], limit: float = LIMIT) -> int:
    """Serve ``app`` while ``body`` runs (it ends the app, or the app ends on its own); the exit status."""
    status: list[int] = []

    async def serving() -> None:
        status.append(await app.serve())

    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serving)
            await body()
    return status[0]


def restart_logs(logs: list[dict[str, Any]], component: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in logs
        if e.get("event") == "restarting component" and (component is None or e.get("component") == component)
    ]


def ready_go(app: App) -> anyio.Event:
    go = anyio.Event()
    app.on_ready(go.set)
    return go


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- bad input and defaults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("restart", "transient"),
        ("restart", None),
        ("restart", "ON_FAILURE"),
        ("max_restarts", True),
        ("max_restarts", 1.5),
        ("max_restarts", "3"),
        ("restart_window", math.inf),
        ("restart_window", math.nan),
        ("restart_window", "5"),
        ("restart_window", -0.0),
        ("backoff", (0.0, 0.0)),
        ("backoff", (0.5, 0.1)),
        ("backoff", (math.nan, 1.0)),
        ("backoff", (0.1, math.inf)),
        ("backoff", None),
        ("backoff", "ab"),
    ],
)
def test_bad_option_is_a_registration_error_naming_the_option_and_the_component(option: str, value: object) -> None:
    app = test_app("shop")
    with pytest.raises(RegistrationError) as raised:
        app.register(Proc(Trace(), "c"), name="consumer", **{option: value})
    assert option in str(raised.value) and "consumer" in str(raised.value)


@pytest.mark.parametrize("strategy", ["one-for-one", "ONE_FOR_ALL", "", None])
def test_bad_strategy_is_a_registration_error_naming_the_option(strategy: object) -> None:
    with pytest.raises(RegistrationError, match="restart_strategy"):
        App("shop", restart_strategy=strategy, handle_signals=False)  # type: ignore[arg-type]


def test_the_contract_keywords_are_accepted_literally() -> None:
    for strategy in ("one_for_one", "one_for_all", "rest_for_one"):
        app = App("shop", restart_strategy=strategy, handle_signals=False)  # type: ignore[arg-type]
        for restart in ("never", "on_failure", "always"):
            app.register(
                Proc(Trace(), restart),
                name=f"consumer-{restart}",
                priority=2,
                restart=restart,  # type: ignore[arg-type]
                max_restarts=5,
                restart_window=60.0,
                backoff=(0.1, 10.0),
            )


async def test_default_strategy_is_one_for_one_and_default_policy_is_never() -> None:
    """Defaults: a sibling of an on_failure process is untouched; a process left at the default unwinds."""
    trace = Trace()
    app = test_app("t")
    go = ready_go(app)
    app.register(Proc(trace, "a"), name="a", priority=1)
    app.register(Proc(trace, "b", {1: "raise"}, go=go), name="b", priority=1, restart="on_failure", backoff=QUICK)
    later = anyio.Event()
    app.register(Proc(trace, "c", {1: "raise", 2: "raise"}, go=later), name="c", priority=2)

    async def body() -> None:
        await until(lambda: "b#2.run" in trace)
        later.set()
        await until(lambda: "c#1.raise" in trace)

    status = await serve(app, body)
    assert status == 1
    assert [(e.component, e.operation) for e in app.errors] == [("c", "run")]
    assert "a#2.init" not in trace and "c#2.init" not in trace
    assert_finalized_once(trace)


# -- strategies ---------------------------------------------------------------------------------------


def ladder(trace: Trace, strategy: str, failing: str) -> tuple[App, dict[str, Step | Proc]]:
    """i0 (init, p0), x y z (procs, p1, in that order), i2 (init, p2), w (proc, p2); every one on_failure."""
    app = test_app("t", restart_strategy=strategy)
    go = ready_go(app)
    built: dict[str, Step | Proc] = {}
    for label, priority, is_proc in (
        ("i0", 0, False),
        ("x", 1, True),
        ("y", 1, True),
        ("z", 1, True),
        ("i2", 2, False),
        ("w", 2, True),
    ):
        component: Step | Proc
        if is_proc:
            component = Proc(trace, label, {1: "raise"} if label == failing else {}, go=go, key=f"{label}-key")
        else:
            component = Step(trace, label)
        built[label] = app.register(
            component,
            name=label,
            priority=priority,
            restart="on_failure",
            backoff=QUICK,
            start_timeout=5,
            shutdown_timeout=2,
        )
    return app, built


async def test_one_for_all_reboots_in_place_stop_descending_finalize_reverse_init_ascending() -> None:
    trace = Trace()
    app, _ = ladder(trace, "one_for_all", "y")
    async with running(app, timeout=10) as handle:
        await until(lambda: "w#2.run" in trace and handle.health.healthy, 5)
        assert handle.states == {
            "i0": "initialized",
            "x": "running",
            "y": "running",
            "z": "running",
            "i2": "initialized",
            "w": "running",
        }
    events = trace.events
    first_boot_inits = [e for e in ops(trace, "init.ok") if e.endswith("#1")]
    # stopped in descending priority: w (p2) before x and z (p1); the failed y is not stopped
    assert at(trace, "w#1.stop") < min(at(trace, "x#1.stop"), at(trace, "z#1.stop")), events
    assert "y#1.stop" not in trace, events
    # finalized in reverse init order, once each
    restart_finals = [e for e in ops(trace, "finalize") if e.endswith("#1")]
    assert restart_finals == list(reversed(first_boot_inits)), events
    # all finalized before any re-init; re-init ascending by priority
    assert max(at(trace, f"{e}.finalize") for e in first_boot_inits) < at(trace, "i0#2.init"), events
    assert at(trace, "i0#2.init.ok") < min(at(trace, f"{c}#2.init") for c in "xyz"), events
    assert max(at(trace, f"{c}#2.run") for c in "xyz") < min(at(trace, "i2#2.init"), at(trace, "w#2.init")), events
    assert handle.status == 0 and app.errors == ()
    assert_finalized_once(trace)


async def test_rest_for_one_restarts_the_failed_one_later_in_its_group_and_every_higher_priority() -> None:
    trace = Trace()
    app, _ = ladder(trace, "rest_for_one", "y")
    async with running(app, timeout=10) as handle:
        await until(lambda: "w#2.run" in trace and handle.health.healthy, 5)
    restarted = sorted(e.split("#")[0] for e in ops(trace, "init") if e.endswith("#2"))
    assert restarted == ["i2", "w", "y", "z"], trace.events
    assert "x#1.stop" in trace and ops(trace, "init").count("x#1") == 1  # x only stopped in the final unwind
    assert at(trace, "w#1.stop") < at(trace, "z#1.stop") and at(trace, "w#2.run") > at(trace, "z#2.run")
    assert handle.status == 0 and app.errors == ()
    assert_finalized_once(trace)


async def test_rest_for_one_on_the_highest_priority_restarts_only_itself() -> None:
    trace = Trace()
    app, _ = ladder(trace, "rest_for_one", "w")
    async with running(app, timeout=10) as handle:
        await until(lambda: "w#2.run" in trace and handle.health.healthy, 5)
    assert sorted(e.split("#")[0] for e in ops(trace, "init") if e.endswith("#2")) == ["w"], trace.events
    assert handle.status == 0
    assert_finalized_once(trace)


async def test_reinjection_after_one_for_all_sees_the_service_of_the_new_initializer_incarnation() -> None:
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all")
    go = ready_go(app)
    app.register(Step(trace, "db", sets="db"), name="db", restart="on_failure", backoff=QUICK)
    consumer = app.register(
        Consumer(trace, "c", {1: "raise"}, go=go, wants="db"), name="c", priority=1, restart="on_failure", backoff=QUICK
    )
    async with running(app, timeout=10):
        await until(lambda: "c#2.run" in trace)
    assert consumer.seen == ["db-1", "db-2"]


# -- restart="never" among siblings (the documented decision) -------------------------------------------


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_never_sibling_caught_in_a_group_restart_is_stopped_for_good_and_the_app_goes_on(strategy: str) -> None:
    trace = Trace()
    app = test_app("t", restart_strategy=strategy)
    go = ready_go(app)
    app.register(Step(trace, "i"), name="i", restart="never")
    app.register(Proc(trace, "f", {1: "raise"}, go=go), name="f", priority=1, restart="on_failure", backoff=QUICK)
    app.register(Proc(trace, "t"), name="t", priority=2, restart="never")
    with structlog.testing.capture_logs() as logs:
        async with running(app, timeout=10) as handle:
            await until(lambda: "f#2.run" in trace, 5)
            await anyio.sleep(0.1)
            assert handle.phase == "running"
            assert handle.states["t"] in ("finalized", "stopped"), handle.states
            assert "t#1.stop" in trace and "t#1.finalize" in trace and "t#2.init" not in trace
    assert any("stopped for good" in str(e.get("event")) and e.get("component") == "t" for e in logs), logs
    # the initializer is initialised again whatever its policy (only under one_for_all does it restart)
    if strategy == "one_for_all":
        assert "i#2.init.ok" in trace
    assert handle.status == 0 and app.errors == ()
    assert_finalized_once(trace)


async def test_never_process_failing_under_one_for_all_unwinds_the_app_without_a_group_restart() -> None:
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all")
    go = ready_go(app)
    app.register(Proc(trace, "s"), name="s", priority=1, restart="on_failure", backoff=QUICK)
    app.register(Proc(trace, "f", {1: "raise"}, go=go), name="f", priority=1)

    async def body() -> None:
        await until(lambda: "f#1.raise" in trace)

    assert await serve(app, body) == 1
    assert [(e.component, e.operation) for e in app.errors] == [("f", "run")]
    assert "s#2.init" not in trace
    assert_finalized_once(trace)


async def test_never_initializer_whose_reinit_fails_in_a_group_restart_unwinds_the_app() -> None:
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all")
    go = ready_go(app)
    app.register(Step(trace, "i", fail_inits=frozenset({2})), name="i", restart="never")
    app.register(Proc(trace, "f", {1: "raise"}, go=go), name="f", priority=1, restart="on_failure", backoff=QUICK)

    async def body() -> None:
        await until(lambda: "i#2.init" in trace)

    assert await serve(app, body) == 1
    assert any(e.component == "i" for e in app.errors), app.errors
    assert "f#2.init" not in trace
    assert_finalized_once(trace)


async def test_on_failure_initializer_whose_reinit_fails_in_a_group_restart_is_retried() -> None:
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all")
    go = ready_go(app)
    app.register(Step(trace, "i", fail_inits=frozenset({2})), name="i", restart="on_failure", backoff=QUICK)
    app.register(Proc(trace, "f", {1: "raise"}, go=go), name="f", priority=1, restart="on_failure", backoff=QUICK)
    async with running(app, timeout=10) as handle:
        await until(lambda: "f#2.run" in trace or "f#3.run" in trace, 5)
        assert handle.phase == "running"
    assert "i#3.init.ok" in trace
    assert handle.status == 0 and app.errors == ()
    assert_finalized_once(trace)


# -- policies -----------------------------------------------------------------------------------------


async def test_always_restarts_after_each_clean_return_and_escalates_with_run_returned() -> None:
    trace = Trace()
    app = test_app("t")
    go = ready_go(app)
    app.register(Proc(trace, "keep"), name="keep", priority=1)
    app.register(
        Proc(trace, "p", dict.fromkeys(range(1, 10), "return"), go=go),
        name="p",
        priority=1,
        restart="always",
        max_restarts=2,
        restart_window=30.0,
        backoff=QUICK,
    )

    async def body() -> None:
        await until(lambda: "p#3.return" in trace)

    with structlog.testing.capture_logs() as logs:
        assert await serve(app, body) == 1
    assert "p#4.init" not in trace
    [error] = [e for e in app.errors if e.operation == "restart"]
    assert error.component == "p"
    assert "restart intensity exceeded" in str(error) and "2" in str(error) and "returned" in str(error), str(error)
    assert [e.get("error") for e in restart_logs(logs, "p")] == ["run returned", "run returned"], restart_logs(logs)
    assert_finalized_once(trace)


async def test_on_failure_start_timeout_at_boot_restarts_a_still_running_process_stop_then_finalize() -> None:
    """on_failure = restarted when run times out at start: stop() (still running), finalize(), init, run."""
    trace = Trace()
    app = test_app("t")
    app.register(
        Proc(trace, "p", {1: "hang"}, key="p-key"),
        name="p",
        priority=1,
        restart="on_failure",
        backoff=QUICK,
        start_timeout=0.5,
        shutdown_timeout=2,
    )
    async with running(app, timeout=10) as handle:
        assert handle.health.healthy
    assert at(trace, "p#1.stop") < at(trace, "p#1.finalize") < at(trace, "p#2.init") < at(trace, "p#2.run")
    assert handle.status == 0 and app.errors == ()
    assert_finalized_once(trace)


async def test_never_start_timeout_with_two_unhealthy_owners_gives_each_its_own_error() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Proc(trace, "c0", {1: "hang"}, key="k0"), name="c0", priority=1, start_timeout=0.3)
    app.register(Proc(trace, "c1", {1: "hang"}, key="k1"), name="c1", priority=1, start_timeout=0.3)
    with pytest.raises(BootError):
        async with running(app, timeout=10):
            pass
    starts = [e for e in app.errors if e.operation == "start"]
    assert sorted(e.component for e in starts) == ["c0", "c1"], [str(e) for e in app.errors]
    assert all(e.component in ("c0", "c1") for e in app.errors), [e.component for e in app.errors]


async def test_boot_wait_of_a_crash_looping_run_is_bounded_by_start_timeout() -> None:
    """The boot's health wait waits for the restarted run *within its start_timeout*: by start_timeout + slack
    the group is up, or a start timeout has been dealt with (an error, or a restart caused by it)."""
    trace = Trace()
    app = test_app("t")
    app.register(
        Proc(trace, "p", dict.fromkeys(range(1, 10_000), "crash"), key="p-key"),
        name="p",
        priority=1,
        restart="on_failure",
        max_restarts=10_000,
        restart_window=60.0,
        backoff=(0.05, 0.05),
        start_timeout=1.0,
    )
    timed_out: list[bool] = []

    def start_timeout_seen(logs: list[dict[str, Any]]) -> bool:
        return any(e.operation == "start" for e in app.errors) or any(
            "start" in str(e.get("error", "")) or e.get("operation") == "start" for e in logs
        )

    with structlog.testing.capture_logs() as logs:

        async def body() -> None:
            with anyio.move_on_after(4):
                while not (app.errors or start_timeout_seen(logs)):
                    await anyio.sleep(0.02)
                timed_out.append(True)
            app.shutdown()

        await serve(app, body, limit=10)
    assert timed_out, "after 4 s (start_timeout=1 s) the boot still waits: no start timeout, no error"
    assert_finalized_once(trace)


async def test_a_crash_loop_at_boot_fails_the_boot_with_a_start_timeout_naming_the_component() -> None:
    # The decision the test above leaves open: a component restarted during the boot that still
    # holds its group up at the start timeout ends the boot (status 1) with a start-timeout error.
    trace = Trace()
    app = test_app("t")
    app.register(
        Proc(trace, "p", dict.fromkeys(range(1, 10_000), "crash"), key="p-key"),
        name="p",
        priority=1,
        restart="on_failure",
        max_restarts=10_000,
        restart_window=60.0,
        backoff=(0.05, 0.05),
        start_timeout=1.0,
    )
    started = time.monotonic()
    with anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    assert time.monotonic() - started < 5.0  # the start timeout, not the intensity, ended it
    # First the start timeout; the run that was up at that moment may crash again as it unwinds.
    assert (app.errors[0].component, app.errors[0].operation) == ("p", "start"), app.errors
    assert all((e.component, e.operation) == ("p", "run") for e in app.errors[1:]), app.errors
    assert "not healthy after 1s" in str(app.errors[0]) and "p-key" in str(app.errors[0])
    assert_finalized_once(trace)


# -- intensity ----------------------------------------------------------------------------------------


async def test_max_restarts_0_escalates_at_the_first_failure_naming_component_restarts_and_last_error() -> None:
    trace = Trace()
    app = test_app("t")
    go = ready_go(app)
    app.register(Proc(trace, "p", {1: "raise"}, go=go), name="p", priority=1, restart="on_failure", max_restarts=0)

    async def body() -> None:
        await until(lambda: "p#1.raise" in trace)

    assert await serve(app, body) == 1
    assert "p#2.init" not in trace
    [error] = [e for e in app.errors if e.operation == "restart"]
    assert error.component == "p"
    text = str(error)
    assert "restart intensity exceeded" in text and "p boom #1" in text and "0" in text, text
    assert_finalized_once(trace)


async def test_intensity_message_names_restarts_within_the_window_and_the_last_error() -> None:
    trace = Trace()
    app = test_app("t")
    go = ready_go(app)
    app.register(
        Proc(trace, "p", dict.fromkeys(range(1, 10), "raise"), go=go),
        name="p",
        priority=1,
        restart="on_failure",
        max_restarts=2,
        restart_window=30.0,
        backoff=QUICK,
    )

    async def body() -> None:
        await until(lambda: "p#3.raise" in trace)

    assert await serve(app, body) == 1
    assert "p#4.init" not in trace
    errors = [e for e in app.errors if e.operation == "restart"]
    assert len(errors) == 1 and errors[0].component == "p", app.errors
    text = str(errors[0])
    assert "restart intensity exceeded" in text and "p boom #3" in text and "2" in text, text
    assert [e.operation for e in app.errors] == ["restart"], [str(e) for e in app.errors]


async def test_a_sibling_caught_in_group_restarts_is_not_counted_against_its_intensity() -> None:
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all")
    go = ready_go(app)
    app.register(Proc(trace, "s"), name="s", priority=1, restart="on_failure", max_restarts=0, backoff=QUICK)
    app.register(
        Proc(trace, "f", {1: "raise", 2: "raise"}, go=go),
        name="f",
        priority=1,
        restart="on_failure",
        max_restarts=5,
        backoff=QUICK,
    )
    async with running(app, timeout=10) as handle:
        await until(lambda: "f#3.run" in trace and "s#3.run" in trace, 5)
        assert handle.phase == "running"
    assert handle.status == 0 and app.errors == ()
    assert_finalized_once(trace)


async def test_restart_init_failures_are_retried_and_count_toward_the_intensity() -> None:
    trace = Trace()
    app = test_app("t")
    go = ready_go(app)
    app.register(
        Proc(trace, "p", {1: "raise"}, go=go, fail_inits=frozenset(range(2, 20))),
        name="p",
        priority=1,
        restart="on_failure",
        max_restarts=3,
        restart_window=30.0,
        backoff=QUICK,
    )

    async def body() -> None:
        await until(lambda: "p#1.raise" in trace)

    assert await serve(app, body) == 1
    assert ops(trace, "init")[-1] == "p#4", trace.events  # 3 restarts, the 4th failure escalates
    [error] = [e for e in app.errors if e.operation == "restart"]
    assert "restart intensity exceeded" in str(error) and "p init boom #4" in str(error), str(error)
    assert not any(e.operation == "init" for e in app.errors), [str(e) for e in app.errors]
    assert_finalized_once(trace)


async def test_a_restart_init_timeout_counts_as_a_failure_and_is_retried() -> None:
    trace = Trace()
    app = test_app("t")
    go = ready_go(app)
    app.register(
        Proc(trace, "p", {1: "raise"}, go=go, slow_inits=frozenset({2})),
        name="p",
        priority=1,
        restart="on_failure",
        backoff=QUICK,
        init_timeout=0.3,
    )
    async with running(app, timeout=10) as handle:
        await until(lambda: "p#3.run" in trace, 5)
    assert handle.status == 0 and app.errors == ()
    assert "p#2.finalize" not in trace  # its init did not succeed
    assert_finalized_once(trace)


# -- what shows a restart -------------------------------------------------------------------------------


async def test_each_restart_logged_once_with_component_attempt_backoff_error_and_group_fields() -> None:
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all")
    go = ready_go(app)
    app.register(Proc(trace, "s"), name="s", priority=1, restart="on_failure", backoff=QUICK)
    app.register(
        Proc(trace, "f", {1: "raise", 2: "raise"}, go=go),
        name="f",
        priority=1,
        restart="on_failure",
        backoff=(0.04, 0.06),
    )
    with structlog.testing.capture_logs() as logs:
        async with running(app, timeout=10):
            await until(lambda: "f#3.run" in trace, 5)
            await anyio.sleep(0.1)
    found = restart_logs(logs)
    assert [e["component"] for e in found] == ["f", "f"], found
    assert all(e["log_level"] == "warning" for e in found)
    assert [e["attempt"] for e in found] == [1, 2]
    assert "f boom #1" in str(found[0]["error"]) and "f boom #2" in str(found[1]["error"]), found
    assert 0.02 - 1e-9 <= found[0]["backoff"] <= 0.04 + 1e-9, found  # half fixed, half random
    assert 0.03 - 1e-9 <= found[1]["backoff"] <= 0.06 + 1e-9, found  # doubled, capped at 0.06
    assert all(e["strategy"] == "one_for_all" and "s" in e["with"] for e in found), found
    assert sum(1 for e in logs if e.get("event") == "restarted" and e.get("component") == "f") == 2, logs


async def test_health_keys_are_restarting_during_the_backoff_and_a_keyless_component_gets_one() -> None:
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all")
    go = ready_go(app)
    app.register(Proc(trace, "keyed", key="keyed-key"), name="keyed", priority=1, restart="on_failure", backoff=QUICK)
    app.register(
        Proc(trace, "bare", {1: "raise"}, go=go), name="bare", priority=1, restart="on_failure", backoff=(2.0, 2.0)
    )
    async with running(app, timeout=10) as handle:
        await until(lambda: "bare#1.raise" in trace and handle.states["bare"] == "restarting", 5)
        for key in ("keyed-key", "bare"):
            status = handle.health.get(key)
            assert not status.healthy and status.reason == "restarting", (key, status)
        assert not handle.health.healthy
        await until(lambda: "bare#2.run" in trace and handle.health.healthy, 5)
    assert handle.status == 0


async def test_ops_endpoint_while_restarting_and_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz 503 naming the keys (reason restarting), state gauge, restarts_total (sibling too), /debug fields."""
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all", ops_addr="127.0.0.1:0")
    go = ready_go(app)
    gate = anyio.Event()

    class Gated(Proc):
        async def init(self) -> None:
            await super().init()
            if self.n == 2:
                await gate.wait()

    app.register(Proc(trace, "never"), name="quiet", priority=0)  # the default policy, never restarted
    app.register(Proc(trace, "s", key="s-key"), name="s", priority=1, restart="on_failure", backoff=QUICK)
    app.register(Gated(trace, "f", {1: "raise"}, go=go), name="f", priority=1, restart="always", backoff=QUICK)
    async with running(app, timeout=10) as handle, httpx.AsyncClient(timeout=5.0) as client:
        url = handle.ops_url
        assert url is not None
        await until(lambda: "f#2.init" in trace, 5)
        ready = await client.get(f"{url}/readyz")
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert "f" in body["unhealthy"] and body["reasons"]["f"] == "restarting", body
        assert "s-key" in body["unhealthy"], body  # the sibling's new incarnation may have registered it again
        metrics = (await client.get(f"{url}/metrics")).text
        states = {
            (s.labels["component"], s.labels["state"]): s.value
            for fam in text_string_to_metric_families(metrics)
            for s in fam.samples
            if s.name == "nacelle_component_state"
        }
        assert states[("f", "initializing")] == 1 or states[("f", "restarting")] == 1, states
        gate.set()
        await until(lambda: "f#2.run" in trace and "s#2.run" in trace and handle.health.healthy, 5)
        ready = await client.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
        metrics = (await client.get(f"{url}/metrics")).text
        restarts = {
            s.labels["component"]: s.value
            for fam in text_string_to_metric_families(metrics)
            for s in fam.samples
            if s.name == "nacelle_component_restarts_total"
        }
        assert restarts.get("f") == 1 and restarts.get("s") == 1, restarts
        debug = (await client.get(f"{url}/debug/components")).json()
        by_name = {c["name"]: c for c in debug["components"]}
        assert by_name["f"]["restart"] == "always" and by_name["f"]["restarts"] == 1, by_name["f"]
        assert "f boom #1" in str(by_name["f"]["last_error"]), by_name["f"]
        assert any("f boom #1" in str(e) for e in by_name["f"]["errors"]), by_name["f"]
        assert by_name["quiet"]["restart"] == "never", by_name["quiet"]
    assert handle.status == 0 and app.errors == ()


async def test_stop_and_finalize_failures_during_a_restart_are_warnings_not_app_errors() -> None:
    trace = Trace()
    app = test_app("t", restart_strategy="one_for_all")
    go = ready_go(app)
    app.register(Proc(trace, "s", fail_stops=frozenset({1})), name="s", priority=1, restart="on_failure", backoff=QUICK)
    app.register(Proc(trace, "f", {1: "raise"}, go=go), name="f", priority=1, restart="on_failure", backoff=QUICK)
    with structlog.testing.capture_logs() as logs:
        async with running(app, timeout=10) as handle:
            await until(lambda: "s#2.run" in trace and "f#2.run" in trace, 5)
    assert handle.status == 0 and app.errors == ()
    assert any(
        e.get("log_level") == "warning" and "s stop boom #1" in str(e) for e in logs if e.get("component") == "s"
    ), logs


# -- a shutdown and a signal during a backoff -------------------------------------------------------------


async def test_shutdown_during_a_long_backoff_is_prompt_clean_and_starts_nothing_again() -> None:
    trace = Trace()
    app = test_app("t")
    go = ready_go(app)
    app.register(Proc(trace, "keep"), name="keep", priority=1)
    app.register(
        Proc(trace, "p", {1: "raise"}, go=go), name="p", priority=1, restart="on_failure", backoff=(30.0, 30.0)
    )
    async with running(app, timeout=10) as handle:
        await until(lambda: "p#1.finalize" in trace and handle.states["p"] == "restarting")
        await anyio.sleep(0.05)
        started = time.monotonic()
        handle.shutdown()
        assert await handle.wait_stopped(timeout=5) == 0, app.errors
        assert time.monotonic() - started < 5
    assert "p#2.init" not in trace
    assert app.errors == ()
    assert handle.states["p"] == "stopped"  # restarting -> stopped: the app stopped before the restart was done
    assert_finalized_once(trace)


async def test_restarted_is_logged_only_once_the_new_incarnation_is_healthy() -> None:
    trace = Trace()
    app = test_app("t")
    go = ready_go(app)
    gate = anyio.Event()

    class LateHealthy(Proc):
        async def run(self) -> None:
            if self.n == 2:
                with anyio.fail_after(5):
                    await gate.wait()
            await super().run()

    app.register(
        LateHealthy(trace, "p", {1: "raise"}, go=go, key="p-key"), name="p", restart="on_failure", backoff=QUICK
    )
    with structlog.testing.capture_logs() as logs:
        async with running(app, timeout=10) as handle:
            await until(lambda: handle.states["p"] == "running" and "p#2.init.ok" in trace, 5)
            await anyio.sleep(0.1)
            assert not any(e.get("event") == "restarted" for e in logs), logs
            gate.set()
            await until(lambda: any(e.get("event") == "restarted" for e in logs), 5)
    assert handle.status == 0


SCRIPT = Path(__file__).resolve().parent / "scripts" / "qa_restart_backoff.py"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_during_a_long_backoff_exits_0_promptly(backend: str) -> None:
    import signal

    with AppProcess([str(SCRIPT), backend], clean_env()) as child:
        child.wait_event("restarting component", timeout=20, component="crasher")
        time.sleep(0.2)
        sent = time.monotonic()
        child.send(signal.SIGTERM)
        status = child.wait(timeout=10)
        took = time.monotonic() - sent
        assert status == 0, child.dump()
        assert took < 5, f"took {took:.1f}s\n{child.dump()}"
        assert child.count("restarted", component="crasher") == 0, child.dump()


# -- built-ins ------------------------------------------------------------------------------------------


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello\n"})


@pytest.fixture
def http_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    port = free_port()
    monkeypatch.setenv("HTTP_PORT", str(port))
    monkeypatch.setenv("HTTP_DRAIN_DELAY", "0")
    monkeypatch.setenv("HTTP_SHUTDOWN_TIMEOUT", "1")
    yield port


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_http_server_restarted_with_a_sibling_rebinds_its_port_and_serves(http_port: int, strategy: str) -> None:
    trace = Trace()
    app = test_app("t", restart_strategy=strategy)
    crash = anyio.Event()
    server = app.register(HTTPServer(hello), name="web", priority=2, restart="on_failure", backoff=QUICK)
    app.register(Proc(trace, "f", {1: "raise"}, go=crash), name="f", priority=1, restart="on_failure", backoff=QUICK)
    with structlog.testing.capture_logs() as logs:
        async with running(app, timeout=10) as handle, httpx.AsyncClient(timeout=5.0) as client:
            assert (await client.get(f"http://127.0.0.1:{http_port}/")).text == "hello\n"
            crash.set()
            await until(lambda: "f#2.run" in trace, 5)
            await until(
                lambda: (
                    sum(1 for e in logs if e.get("event") == "http server listening") == 2 and handle.health.healthy
                ),
                5,
            )
            assert server.address is not None and server.address[1] == http_port
            response = await client.get(f"http://127.0.0.1:{http_port}/")
            assert response.status_code == 200 and response.text == "hello\n"
    assert handle.status == 0 and app.errors == ()


# -- found by fault injection -------------------------------------------------------------------------------


async def test_shutdown_as_an_initializer_init_returns_is_a_clean_stop_every_time() -> None:
    """A stop arriving before run() began keeps the run from starting and counts as a clean stop."""

    class Stopper(Initializer):
        def __init__(self, app: App) -> None:
            self.app = app

        async def init(self) -> None:
            def later() -> None:
                time.sleep(0.0005)
                self.app.shutdown()

            threading.Thread(target=later, daemon=True).start()

    class Plain(Process):
        def __init__(self) -> None:
            self.event = threading.Event()

        def init(self) -> None:
            self.event = threading.Event()

        def run(self) -> None:
            self.event.wait(5)

        def stop(self) -> None:
            self.event.set()

    class Async(Process):
        async def init(self) -> None:
            self.event = anyio.Event()

        async def run(self) -> None:
            await self.event.wait()

        async def stop(self) -> None:
            self.event.set()

    bad: list[tuple[int, list[str]]] = []
    for _ in range(25):
        app = test_app("t")
        app.register(Stopper(app), name="stopper")
        app.register(Plain(), name="plain", shutdown_timeout=1)
        app.register(Async(), name="async", shutdown_timeout=1)
        with anyio.fail_after(10):
            status = await app.serve()
        if status != 0:
            bad.append((status, [str(e) for e in app.errors]))
    assert bad == []


async def test_an_abandoned_plain_def_that_raises_later_is_logged_once_as_a_warning() -> None:
    done = threading.Event()

    class SlowReload(Process):
        async def init(self) -> None:
            self.event = anyio.Event()

        async def run(self) -> None:
            await self.event.wait()

        async def stop(self) -> None:
            self.event.set()

        def reload(self) -> None:
            time.sleep(0.3)
            done.set()
            raise RuntimeError("late reload boom")

    app = test_app("t")
    app.register(SlowReload(), name="slow", reload_timeout=0.05)
    with structlog.testing.capture_logs() as logs:
        async with running(app, timeout=10):
            app.reload()
            await until(lambda: done.is_set(), 5)
            await until(lambda: any("abandoned plain def" in str(e.get("event")) for e in logs), 2)
            await anyio.sleep(0.1)
    found = [e for e in logs if "abandoned plain def" in str(e.get("event"))]
    assert len(found) == 1, found
    assert found[0]["log_level"] == "warning" and found[0]["component"] == "slow"
    assert found[0]["operation"] == "reload" and "late reload boom" in str(found[0]["error"]), found
