"""Restart policies (issue 13, part B): Erlang/OTP's supervisor semantics as scenarios, on asyncio and trio.

``App(name, restart_strategy=...)`` picks one_for_one (the default), one_for_all or
rest_for_one; ``register(..., restart=..., max_restarts=..., restart_window=..., backoff=...)``
gives each component a policy: ``never`` (temporary: its failure unwinds the app, as
before), ``on_failure`` (transient) or ``always`` (permanent). Order is asserted on the
recorded trace (``<name>#<incarnation>.<operation>``, see tests/_faults.py); sleeps only
give the runner a chance to do something it must not do, and every wait is bounded.

Left open by the issue, and not tested here: what ``restart="never"`` means for a sibling
caught in a group restart (every component of the group scenarios is ``on_failure``), and
the finalize order of the final unwind after a one_for_one restart of a low priority.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import pytest
import structlog
from _faults import (
    Fault,
    Lab,
    Mode,
    check_finalized_once,
    check_stops_follow_runs,
    incarnations,
    parse,
    serve_until,
)
from prometheus_client.parser import text_string_to_metric_families

from nacelle_py import App, ComponentError, Options, RegistrationError
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio

QUICK = (0.01, 0.05)
"""A backoff that keeps scenarios fast."""
TRANSIENT: dict[str, Any] = {"restart": "on_failure", "backoff": QUICK, "start_timeout": 5, "shutdown_timeout": 2}


# -- helpers ----------------------------------------------------------------------------------------

LADDER = (("a", 0, False), ("b", 0, True), ("c", 1, True), ("d", 1, True), ("e", 2, False), ("f", 2, True))
"""(name, priority, is a process), in registration order: initializers a and e, processes b, c, d, f."""
PRIORITY = {name: priority for name, priority, _ in LADDER}
PROCESSES = {name for name, _, process in LADDER if process}


def ladder(lab: Lab, strategy: str | None, failing: str) -> App:
    """The ladder, every component transient; ``failing``'s first run raises once the app is ready."""
    app = test_app("t") if strategy is None else test_app("t", restart_strategy=strategy)
    go = anyio.Event()
    for name, priority, process in LADDER:
        faults = {"run": Fault(Mode.RAISE, after=go)} if name == failing else {}
        component = lab.process(name, **faults) if process else lab.initializer(name)
        app.register(component, name=name, priority=priority, **TRANSIENT)
    app.on_ready(go.set)
    return app


def named(events: Sequence[str], op: str, incarnation: int | None = None, outcome: str | None = None) -> list[str]:
    """The names of the components with ``op`` events (begun, unless ``outcome``), in order."""
    return [
        e.name
        for e in parse(events)
        if e.op == op and e.outcome == outcome and (incarnation is None or e.incarnation == incarnation)
    ]


def assert_sound(events: Sequence[str]) -> None:
    """The invariants every scenario keeps: finalized once per successful init; stop only after run began."""
    assert check_finalized_once(events) == [], events
    assert check_stops_follow_runs(events) == [], events


def assert_group_restart(events: list[str], failed: str, restarted: Sequence[str]) -> None:
    """``restarted`` (in registration order) went down and came up again as issue 13 says; nothing else moved.

    Between the failure and the test's shutdown: the restarted processes still running are
    stopped in descending priority, a priority fully stopped before the next lower one starts
    stopping; the failed one is not stopped (its run already ended); the restarted components
    are finalized in exact reverse order of their first init, all before any of them is
    initialised again; they are initialised again in ascending priority, each priority's runs
    started (and healthy) before the next priority's inits. The final unwind finalizes what
    lives in reverse order of init.
    """
    window = events[events.index(f"{failed}#1.run.fail") : events.index("shutdown")]
    untouched = [name for name, _, _ in LADDER if name not in restarted]
    assert [e for e in window if e.split("#")[0] in untouched] == []
    assert {name for name, _, _ in LADDER if incarnations(events, name) == 2} == set(restarted)

    stops = named(window, "stop", 1)
    assert sorted(stops) == sorted(n for n in restarted if n in PROCESSES and n != failed)
    assert [PRIORITY[n] for n in stops] == sorted((PRIORITY[n] for n in stops), reverse=True)
    for higher, lower in zip(stops, stops[1:]):
        if PRIORITY[higher] > PRIORITY[lower]:
            assert window.index(f"{higher}#1.run.ok") < window.index(f"{lower}#1.stop")

    first_inits = [n for n in named(events, "init", 1, "ok") if n in restarted]
    assert named(window, "finalize", 1) == first_inits[::-1]
    last_finalize = max(window.index(f"{n}#1.finalize.ok") for n in restarted)
    assert last_finalize < min(window.index(f"{n}#2.init") for n in restarted)

    levels = sorted({PRIORITY[n] for n in restarted})
    for low, high in zip(levels, levels[1:]):
        up = [f"{n}#2.init.ok" for n in restarted if PRIORITY[n] == low]
        up += [f"{n}#2.run" for n in restarted if PRIORITY[n] == low and n in PROCESSES]
        next_inits = [f"{n}#2.init" for n in restarted if PRIORITY[n] == high]
        assert max(window.index(e) for e in up) < min(window.index(e) for e in next_inits), window

    final = events[events.index("shutdown") :]
    alive = [
        e
        for e in parse(events)
        if e.op == "init" and e.outcome == "ok" and e.incarnation == incarnations(events, e.name)
    ]
    assert named(final, "finalize") == [e.name for e in alive][::-1]
    assert_sound(events)


async def wait_until(predicate: Any, limit: float = 5.0) -> None:
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.002)


def pair(lab: Lab, **options: Any) -> App:
    """A steady process (priority 0, default policy) and ``p`` (priority 1) with ``options`` and faults.

    ``options`` holds register() keywords and, as ``Fault`` values, p's faults by operation.
    """
    app = test_app("t")
    faults = {k: v for k, v in options.items() if isinstance(v, Fault)}
    settings = {k: v for k, v in options.items() if not isinstance(v, Fault)}
    app.register(lab.process("steady"), name="steady", start_timeout=5, shutdown_timeout=2)
    app.register(lab.process("p", **faults), name="p", priority=1, start_timeout=5, shutdown_timeout=2, **settings)
    return app


def intensity_errors(app: App) -> list[ComponentError]:
    return [e for e in app.errors if "restart intensity exceeded" in str(e)]


# -- strategies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [None, "one_for_one"], ids=["default", "one_for_one"])
async def test_one_for_one_restarts_only_the_failed_component(strategy: str | None) -> None:
    """one_for_one (the default): the failed process is finalized and initialised and run again; nobody else moves."""
    lab = Lab()
    app = ladder(lab, strategy, failing="c")
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "c#2.run") == 0, app.errors
    events = lab.trace.events
    window = events[events.index("c#1.run.fail") : events.index("shutdown")]
    assert [e for e in window if not e.startswith("c#")] == []
    assert "c#1.stop" not in events  # its run had ended: nothing to stop
    assert window.index("c#1.finalize.ok") < window.index("c#2.init") < window.index("c#2.run")
    assert {n: incarnations(events, n) for n, _, _ in LADDER} == {"a": 1, "b": 1, "c": 2, "d": 1, "e": 1, "f": 1}
    assert_sound(events)


async def test_one_for_all_reboots_every_component_in_place() -> None:
    """one_for_all: every component, initializers included, is stopped, finalized and booted again in order."""
    lab = Lab()
    app = ladder(lab, "one_for_all", failing="c")
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "f#2.run") == 0, app.errors
    assert_group_restart(lab.trace.events, "c", ["a", "b", "c", "d", "e", "f"])


@pytest.mark.parametrize(
    ("failing", "restarted"),
    [("c", ["c", "d", "e", "f"]), ("d", ["d", "e", "f"])],
    ids=["first-of-its-priority", "later-in-its-priority"],
)
async def test_rest_for_one_restarts_the_failed_component_and_everything_started_after_it(
    failing: str,
    restarted: list[str],
) -> None:
    """rest_for_one: the failed component, the later ones of its priority and every higher priority restart.

    "Later in its group" is registration order: d was registered after c.
    The initializer e is among those restarted; a, b (and c when d fails) are not touched.
    """
    lab = Lab()
    app = ladder(lab, "rest_for_one", failing=failing)
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "f#2.run") == 0, app.errors
    assert_group_restart(lab.trace.events, failing, restarted)


# -- transient, permanent, temporary -----------------------------------------------------------------


async def test_transient_run_that_raises_is_restarted() -> None:
    """on_failure (transient): a run that raises is finalized and restarted; the app keeps running, status 0."""
    lab = Lab()
    app = pair(lab, restart="on_failure", backoff=QUICK, run=Fault(Mode.RAISE, after=0.05))
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "p#2.run") == 0, app.errors
    events = lab.trace.events
    assert events.index("p#1.run.fail") < events.index("p#1.finalize") < events.index("p#2.init")
    assert events.index("shutdown") < events.index("steady#1.stop")  # untouched until the end
    assert_sound(events)


async def test_transient_clean_return_unwinds_the_app_as_before() -> None:
    """on_failure: a run that returns (no silent_exit) is not restarted; the app unwinds gracefully, status 0."""
    lab = Lab()
    app = pair(lab, restart="on_failure", backoff=QUICK, run=Fault(Mode.RETURN, upto=None, after=0.05))
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab) == 0, app.errors
    events = lab.trace.events
    assert incarnations(events, "p") == 1
    assert events.index("p#1.run.return") < events.index("steady#1.stop")
    assert_sound(events)


async def test_transient_clean_return_with_silent_exit_is_neither_restarted_nor_an_unwind() -> None:
    """on_failure with silent_exit: a clean return is logged, not restarted, and the app keeps running."""
    lab = Lab()
    app = pair(lab, restart="on_failure", backoff=QUICK, silent_exit=True, run=Fault(Mode.RETURN, upto=None))

    async def later() -> None:
        await lab.trace.wait_for("p#1.run.return")
        await anyio.sleep(0.3)  # room for a (wrong) restart after the 0.01-0.05 s backoff
        lab.shutdown(app)

    with structlog.testing.capture_logs():
        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            assert await serve_until(app, lab) == 0, app.errors
    events = lab.trace.events
    assert incarnations(events, "p") == 1
    assert events.index("shutdown") < events.index("steady#1.stop")
    assert_sound(events)


@pytest.mark.parametrize("mode", [Mode.RETURN, Mode.RAISE])
async def test_permanent_is_restarted_after_a_clean_return_too(mode: Mode) -> None:
    """always (permanent): restarted whether its run returns or raises; the app keeps running, status 0."""
    lab = Lab()
    app = pair(lab, restart="always", backoff=QUICK, run=Fault(mode, upto=2, after=0.05))
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "p#3.run") == 0, app.errors
    events = lab.trace.events
    assert events.index("p#1.finalize.ok") < events.index("p#2.init")
    assert events.index("p#2.finalize.ok") < events.index("p#3.init")
    assert events.index("shutdown") < events.index("steady#1.stop")
    assert_sound(events)


@pytest.mark.parametrize("restart", [None, "never"], ids=["default", "never"])
async def test_temporary_run_failure_unwinds_the_app_as_before(restart: str | None) -> None:
    """never (temporary, the default): a run that raises is not restarted; the app unwinds, status 1."""
    lab = Lab()
    options: dict[str, Any] = {} if restart is None else {"restart": restart}
    app = pair(lab, run=Fault(Mode.RAISE, upto=None, after=0.05), **options)
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab) == 1
    events = lab.trace.events
    assert [(e.component, e.operation) for e in app.errors] == [("p", "run")]
    assert incarnations(events, "p") == 1
    assert events.index("p#1.run.fail") < events.index("steady#1.stop")
    assert_sound(events)


# -- intensity ---------------------------------------------------------------------------------------


async def test_more_than_max_restarts_within_the_window_escalates() -> None:
    """Intensity: more than max_restarts restarts within restart_window unwind the app with status 1.

    With max_restarts=2 the component runs three times; the third failure is one restart too
    many. The error says ``restart intensity exceeded``, names the component and its last error.
    """
    lab = Lab()
    app = pair(
        lab,
        restart="on_failure",
        max_restarts=2,
        restart_window=5.0,
        backoff=QUICK,
        run=Fault(Mode.RAISE, upto=None, after=0.05),
    )
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab) == 1
    events = lab.trace.events
    assert incarnations(events, "p") == 3
    [error] = intensity_errors(app)
    assert isinstance(error, ComponentError) and error.component == "p"
    assert "p run boom #3" in str(error)  # its last error
    assert events.index("p#3.run.fail") < events.index("steady#1.stop")
    assert_sound(events)


async def test_restarts_spread_wider_than_the_window_do_not_escalate() -> None:
    """Intensity counts restarts within restart_window only: one failure every 0.4 s never exceeds 1 per 0.3 s."""
    lab = Lab()
    app = pair(
        lab,
        restart="on_failure",
        max_restarts=1,
        restart_window=0.3,
        backoff=QUICK,
        run=Fault(Mode.RAISE, upto=3, after=0.4),
    )
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "p#4.run") == 0, app.errors
    assert intensity_errors(app) == []
    assert_sound(lab.trace.events)


async def test_a_failing_init_during_a_restart_is_retried_not_a_boot_failure() -> None:
    """An init that raises during a restart counts as a failure of the component: backoff, retry, status 0."""
    lab = Lab()
    app = pair(
        lab,
        restart="on_failure",
        max_restarts=3,
        backoff=QUICK,
        run=Fault(Mode.RAISE, after=0.05),
        init=Fault(Mode.RAISE, since=2, upto=2),
    )
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "p#3.run") == 0, app.errors
    events = lab.trace.events
    assert "p#2.init.fail" in events and "p#2.finalize" not in events
    assert events.index("p#2.init.fail") < events.index("p#3.init")
    assert events.index("shutdown") < events.index("steady#1.stop")
    assert_sound(events)


async def test_failing_inits_during_restarts_count_toward_the_intensity() -> None:
    """Restart inits that keep failing escalate like runs that keep failing; the last error is the init's."""
    lab = Lab()
    app = pair(
        lab,
        restart="on_failure",
        max_restarts=2,
        backoff=QUICK,
        run=Fault(Mode.RAISE, after=0.05),
        init=Fault(Mode.RAISE, since=2, upto=None),
    )
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab) == 1
    events = lab.trace.events
    assert incarnations(events, "p") == 3
    [error] = intensity_errors(app)
    assert error.component == "p" and "p init boom #3" in str(error)
    assert_sound(events)


async def test_each_restart_is_logged_once_as_a_warning_with_its_cause() -> None:
    """Each restart is logged once, at warning level, with the component and the error that caused it."""
    lab = Lab()
    app = pair(lab, restart="on_failure", backoff=QUICK, run=Fault(Mode.RAISE, upto=2, after=0.05))
    with structlog.testing.capture_logs() as logs:
        assert await serve_until(app, lab, "p#3.run") == 0, app.errors
    warnings = [e for e in logs if e.get("log_level") == "warning"]
    for n in (1, 2):
        cause = f"p run boom #{n}"
        about = [e for e in warnings if any(cause in str(value) for value in e.values())]
        assert len(about) == 1, (cause, warnings)
        assert any(value == "p" or "p:" in str(value) for value in about[0].values()), about[0]


# -- restarts during boot, backoff, health, shutdown --------------------------------------------------


async def test_a_run_that_fails_during_boot_is_restarted_and_boot_completes() -> None:
    """A run failing before its priority is healthy is restarted; the health wait waits for the new run."""
    lab = Lab()
    app = test_app("t")
    app.register(
        lab.process("p", run=Fault(Mode.RAISE), health=Fault(Mode.HANG)),
        name="p",
        priority=0,
        restart="on_failure",
        backoff=QUICK,
        start_timeout=5,
    )
    app.register(lab.process("q"), name="q", priority=1, start_timeout=5)
    app.on_ready(lambda: lab.trace.add("ready"))
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "ready") == 0, app.errors
    events = lab.trace.events
    order = ["p#1.run.fail", "p#2.init", "p#2.run", "q#1.init", "q#1.run", "ready"]
    assert [events.index(e) for e in order] == sorted(events.index(e) for e in order)
    assert_sound(events)


async def test_backoff_grows_exponentially_from_its_initial_wait() -> None:
    """Backoff: the waits before restarts grow from ``initial`` (loose lower bounds; jitter may shorten a wait by half)."""
    initial = 0.2
    lab = Lab()
    app = pair(
        lab,
        restart="on_failure",
        max_restarts=5,
        restart_window=60.0,
        backoff=(initial, 5.0),
        run=Fault(Mode.RAISE, upto=3, after=0.01),
    )
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "p#4.run", limit=20) == 0, app.errors
    trace = lab.trace
    waits = [trace.time(f"p#{n + 1}.init") - trace.time(f"p#{n}.run.fail") for n in (1, 2, 3)]
    assert all(wait >= 0.5 * initial for wait in waits), waits
    assert waits[2] >= initial, waits  # nominally 4 * initial


async def test_backoff_is_capped() -> None:
    """Backoff: capped at its second value; eight restarts from 0.05 s capped at 0.1 s take well under 12 s."""
    lab = Lab()
    app = pair(
        lab,
        restart="on_failure",
        max_restarts=10,
        restart_window=60.0,
        backoff=(0.05, 0.1),
        run=Fault(Mode.RAISE, upto=8, after=0.01),
    )
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, "p#9.run", limit=20) == 0, app.errors
    trace = lab.trace
    assert trace.time("p#9.run") - trace.time("p#1.run.fail") < 4.0  # uncapped: 0.05 * (2**8 - 1) = 12.75 s


async def test_health_keys_of_a_restarting_component_are_unhealthy_with_reason_restarting() -> None:
    """While a component restarts, its health keys are unhealthy, reason ``restarting``; healthy again once it runs."""
    lab = Lab()
    gate = anyio.Event()
    app = pair(
        lab,
        restart="on_failure",
        backoff=QUICK,
        run=Fault(Mode.RAISE, after=0.05),
        init=Fault(Mode.PAUSE, since=2, upto=2, after=gate),
    )

    async def observe() -> None:
        await lab.trace.wait_for("p#2.init")  # the restart's init holds until the gate opens
        key = app.health.get("p")
        assert not key.healthy and key.reason == "restarting"
        assert [(s.key, s.reason) for s in app.health.unhealthy()] == [("p", "restarting")]
        assert app.health.get("steady").healthy
        gate.set()
        await lab.trace.wait_for("p#2.run")
        await wait_until(lambda: app.health.get("p").healthy)
        lab.shutdown(app)

    with structlog.testing.capture_logs():
        async with anyio.create_task_group() as tg:
            tg.start_soon(observe)
            assert await serve_until(app, lab) == 0, app.errors
    assert_sound(lab.trace.events)


async def test_a_shutdown_during_a_long_backoff_ends_it_at_once() -> None:
    """app.shutdown() during a backoff wait ends the wait at once and unwinds cleanly, status 0."""
    lab = Lab()
    app = pair(lab, restart="on_failure", backoff=(5.0, 10.0), run=Fault(Mode.RAISE, after=0.05))
    asked = 0.0

    async def stopper() -> None:
        nonlocal asked
        await lab.trace.wait_for("p#1.run.fail")
        await wait_until(lambda: app.health.get("p").reason == "restarting")
        asked = time.monotonic()
        lab.shutdown(app)

    with structlog.testing.capture_logs():
        async with anyio.create_task_group() as tg:
            tg.start_soon(stopper)
            assert await serve_until(app, lab, limit=8) == 0, app.errors
    assert time.monotonic() - asked < 1.0  # the wait was at least 2.5 s
    events = lab.trace.events
    assert incarnations(events, "p") == 1
    assert_sound(events)


# -- bad input and defaults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("restart", "sometimes"),
        ("restart", "permanent"),  # OTP's word; ours is "always"
        ("max_restarts", -1),
        ("restart_window", 0),
        ("restart_window", -1.0),
        ("backoff", 0.1),
        ("backoff", (0.1,)),
        ("backoff", (0.1, 1.0, 2.0)),
        ("backoff", (0, 1.0)),
        ("backoff", (-0.1, 1.0)),
        ("backoff", (2.0, 1.0)),
    ],
)
def test_bad_restart_options_raise_a_registration_error_naming_the_option(option: str, value: object) -> None:
    """Unknown restart names, max_restarts < 0, a non-positive window, a bad backoff pair: RegistrationError."""
    lab = Lab()
    with pytest.raises(RegistrationError, match=option):
        test_app("t").register(lab.process("p"), name="p", **{option: value})


@pytest.mark.parametrize("strategy", ["one_for_some", "simple_one_for_one"])
def test_an_unknown_restart_strategy_raises_a_registration_error(strategy: str) -> None:
    with pytest.raises(RegistrationError, match="restart_strategy"):
        test_app("t", restart_strategy=strategy)


def restart_options(options: Options) -> dict[str, Any]:
    return {field: getattr(options, field) for field in ("restart", "max_restarts", "restart_window", "backoff")}


def test_restart_options_default_to_never_3_in_5_seconds_and_a_tenth_to_ten_seconds() -> None:
    """Defaults: restart="never", max_restarts=3, restart_window=5.0, backoff=(0.1, 10.0)."""
    app = test_app("t")
    app.register(Lab().process("p"), name="p")
    [(_, options)] = app.registrations
    found = restart_options(options)
    found["backoff"] = tuple(found["backoff"])
    assert found == {"restart": "never", "max_restarts": 3, "restart_window": 5.0, "backoff": (0.1, 10.0)}


@pytest.mark.parametrize(
    "given",
    [
        {"restart": "on_failure", "max_restarts": 0, "restart_window": 0.001, "backoff": (1.0, 1.0)},
        {"restart": "always", "max_restarts": 5, "restart_window": 60.0, "backoff": (0.2, 3.0)},
    ],
)
def test_valid_restart_options_are_kept(given: dict[str, Any]) -> None:
    """Boundary values are accepted (max_restarts=0, initial == cap) and read back from the registration."""
    app = test_app("t", restart_strategy="rest_for_one")
    app.register(Lab().process("p"), name="p", **given)
    [(_, options)] = app.registrations
    found = restart_options(options)
    found["backoff"] = tuple(found["backoff"])
    assert found == given


# -- the ops endpoint ---------------------------------------------------------------------------------


@pytest.fixture
def ops_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ops endpoint on any free port of 127.0.0.1."""
    monkeypatch.setenv("OPS_ADDR", "127.0.0.1:0")


def base_url(app: App) -> str:
    address = app.ops_address
    assert address is not None, "the ops endpoint is not listening"
    return f"http://{address[0]}:{address[1]}"


async def test_ops_endpoint_counts_restarts_and_shows_the_last_error(ops_on: None) -> None:
    """/metrics counts restarts (nacelle_component_restarts_total); /debug/components shows them and the last error."""
    lab = Lab()
    app = pair(lab, restart="on_failure", backoff=QUICK, run=Fault(Mode.RAISE, upto=2, after=0.05))

    async def scrape() -> None:
        await lab.trace.wait_for("p#3.run")
        await wait_until(lambda: app.health.get("p").healthy)
        async with httpx.AsyncClient(timeout=5.0) as client:
            metrics = (await client.get(base_url(app) + "/metrics")).text
            body = (await client.get(base_url(app) + "/debug/components")).json()
        restarts = [
            s.value
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
            if s.name == "nacelle_component_restarts_total" and s.labels == {"component": "p"}
        ]
        assert restarts == [2], metrics
        [p] = [c for c in body["components"] if c["name"] == "p"]
        assert p["restarts"] == 2
        assert "p run boom #2" in json.dumps(p)  # the last error
        lab.shutdown(app)

    with structlog.testing.capture_logs():
        async with anyio.create_task_group() as tg:
            tg.start_soon(scrape)
            assert await serve_until(app, lab) == 0, app.errors


async def test_readyz_says_a_restarting_component_is_restarting(ops_on: None) -> None:
    """/readyz answers 503 while a component restarts, naming its key with reason ``restarting``; 200 after."""
    lab = Lab()
    gate = anyio.Event()
    app = pair(
        lab,
        restart="on_failure",
        backoff=QUICK,
        run=Fault(Mode.RAISE, after=0.05),
        init=Fault(Mode.PAUSE, since=2, upto=2, after=gate),
    )

    async def probe() -> None:
        await lab.trace.wait_for("p#2.init")
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(base_url(app) + "/readyz")
            assert response.status_code == 503, response.text
            body = response.json()
            assert "p" in body["unhealthy"] and body["reasons"]["p"] == "restarting"
            gate.set()
            with anyio.fail_after(5):
                while (await client.get(base_url(app) + "/readyz")).status_code != 200:
                    await anyio.sleep(0.005)
        lab.shutdown(app)

    with structlog.testing.capture_logs():
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            assert await serve_until(app, lab) == 0, app.errors
