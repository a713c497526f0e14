"""Fault injection: generated apps whose components fail or hang in random phases, and the regressions it found.

The property test builds apps from the public API only (1-6 components at priorities 0-3,
initializers and processes, ``async def`` or plain ``def``), gives some of them a fault
(raise or hang in ``init``, ``run``, ``stop`` or ``finalize``, a ``run`` that returns, a health
key never reported healthy), shuts the app down at a random moment (from a task, from inside
a component's ``init`` or ``run``, or some time after it is ready) and checks, on the recorded
trace, the invariants that docs/lifecycle.md promises. Once restart policies exist (issue 13,
part B; detected at import) it also draws a restart strategy and per-component policies.

The explicit regressions at the end are the three bugs issue 13 lists under "Found by a
fault-injection pass".
"""

from __future__ import annotations

import threading
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import structlog
from _faults import (
    Boom,
    Fault,
    Lab,
    Mode,
    check_finalized_once,
    check_runs_before_finalize,
    check_stops_follow_runs,
    incarnations,
    parse,
    serve_until,
)
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from nacelle_py import ComponentError, ComponentTimeoutError, Initializer, Process
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio


def _restarts_supported() -> bool:
    """Whether ``register()`` takes the restart options of issue 13 (part B)."""
    try:
        test_app("probe").register(Initializer(), name="probe", restart="never")  # type: ignore[call-arg]
    except TypeError:
        return False
    return True


RESTARTS = _restarts_supported()
"""Draw restart strategies and policies too (the feature is detected, not assumed)."""

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
POLICIES = ("never", "on_failure", "always")
BACKOFF = (0.01, 0.05)
"""Restarts in generated apps back off briefly: examples stay fast."""


# -- generated apps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    """One component's restart options (issue 13, part B)."""

    restart: str
    max_restarts: int
    restart_window: float = 5.0
    backoff: tuple[float, float] = BACKOFF


@dataclass(frozen=True)
class Component:
    """One generated component: what it is, its bounds, its fault and (when supported) its restart policy."""

    name: str
    priority: int
    process: bool
    threaded: bool  # plain def methods, run in worker threads
    stop: bool  # processes only: has a stop(); without, its run is cancelled
    silent_exit: bool
    timeouts: tuple[tuple[str, float], ...]  # init/start/shutdown/finalize_timeout, all small
    fault: tuple[str, Fault] | None  # (operation, fault)
    restart: Restart | None = None

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = dict(self.timeouts, priority=self.priority)
        if self.process:
            options["silent_exit"] = self.silent_exit
        if self.restart is not None:
            options.update(
                restart=self.restart.restart,
                max_restarts=self.restart.max_restarts,
                restart_window=self.restart.restart_window,
                backoff=self.restart.backoff,
            )
        return options

    def build(self, lab: Lab) -> Initializer:
        faults = {} if self.fault is None else {self.fault[0]: self.fault[1]}
        if self.process:
            return lab.process(self.name, threaded=self.threaded, has_stop=self.stop, **faults)
        return lab.initializer(self.name, threaded=self.threaded, **faults)

    @property
    def bound(self) -> float:
        """The sum of this component's timeouts."""
        return sum(seconds for _, seconds in self.timeouts)


@dataclass(frozen=True)
class Shutdown:
    """When the app is asked to unwind.

    Always some time after it is ready (``after_ready`` seconds), and maybe earlier:
    ``("task", event)`` from a task woken as ``event`` is recorded, ``("inline", event)`` from
    inside the component recording ``event`` (its ``init`` or ``run``, maybe a worker thread),
    ``("delay", seconds)`` from a task that long after ``serve()`` began.
    """

    after_ready: float
    early: tuple[str, str | float] | None = None

    @property
    def delays(self) -> float:
        early = self.early[1] if self.early is not None and self.early[0] == "delay" else 0.0
        assert isinstance(early, float)
        return self.after_ready + early


@dataclass(frozen=True)
class Scenario:
    components: tuple[Component, ...]
    shutdown: Shutdown
    strategy: str | None = None  # None: the App's default (and no restart options at all)

    def by_name(self) -> dict[str, Component]:
        return {c.name: c for c in self.components}

    @property
    def bound(self) -> float:
        """How long ``serve()`` may take: every timeout, the shutdown delays, 1 s; and each restart again."""
        timeouts = sum(c.bound for c in self.components)
        bound = timeouts + self.shutdown.delays + 1.0
        restarts = sum(c.restart.max_restarts + 1 for c in self.components if c.restart is not None)
        return bound + restarts * (BACKOFF[1] + timeouts)


FAULTS_BY_OPERATION = {
    "init": (Mode.RAISE, Mode.HANG),
    "finalize": (Mode.RAISE, Mode.HANG),
    "health": (Mode.HANG,),
    "run": (Mode.RAISE, Mode.HANG, Mode.RETURN),
    "stop": (Mode.RAISE, Mode.HANG),
}


@st.composite
def faults(draw: st.DrawFn, process: bool, stop: bool, restarts: bool) -> tuple[str, Fault]:
    """One fault: an operation the component has, what goes wrong, when, and in which incarnations."""
    operations = ["init", "finalize", "health"] + (["run"] if process else []) + (["stop"] if stop else [])
    operation = draw(st.sampled_from(operations))
    mode = draw(st.sampled_from(FAULTS_BY_OPERATION[operation]))
    after = draw(st.sampled_from([None, 0.05, 0.2])) if operation == "run" else None
    upto = draw(st.sampled_from([1, 2, None])) if restarts else 1
    return operation, Fault(mode, upto=upto, after=after)


@st.composite
def components(draw: st.DrawFn, index: int, restarts: bool) -> Component:
    """One component; about a third of them get a fault."""
    process = draw(st.booleans())
    stop = process and draw(st.booleans())
    return Component(
        name=f"c{index}",
        priority=draw(st.integers(0, 3)),
        process=process,
        threaded=draw(st.booleans()),
        stop=stop,
        silent_exit=process and draw(st.booleans()),
        timeouts=(
            ("init_timeout", draw(st.sampled_from([0.2, 0.3]))),
            ("start_timeout", 0.5),
            ("shutdown_timeout", draw(st.sampled_from([0.2, 0.3]))),
            ("finalize_timeout", draw(st.sampled_from([0.2, 0.3]))),
        ),
        fault=draw(st.one_of(st.none(), st.none(), faults(process, stop, restarts))),
        restart=Restart(draw(st.sampled_from(POLICIES)), draw(st.integers(0, 2))) if restarts else None,
    )


@st.composite
def scenarios(draw: st.DrawFn, restarts: bool = RESTARTS) -> Scenario:
    """An app of 1-6 components, when to shut it down, and (with restarts) its strategy."""
    count = draw(st.integers(1, 6))
    parts = tuple(draw(components(i, restarts)) for i in range(count))
    moments = [f"{c.name}#1.{what}" for c in parts for what in ("init", "init.ok") + (("run",) if c.process else ())]
    early = draw(
        st.one_of(
            st.none(),
            st.tuples(st.sampled_from(["task", "inline"]), st.sampled_from(moments)),
            st.tuples(st.just("delay"), st.sampled_from([0.0, 0.005, 0.02, 0.1])),
        )
    )
    shutdown = Shutdown(after_ready=draw(st.sampled_from([0.0, 0.05, 0.2])), early=early)
    strategy = draw(st.sampled_from(STRATEGIES)) if restarts else None
    return Scenario(parts, shutdown, strategy)


# -- one run of a generated app ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What one served scenario left: its status and errors, the trace as serve() returned, how long it took."""

    status: int
    errors: tuple[ComponentError, ...]
    events: list[str]
    elapsed: float
    async_calls_left: int  # async lifecycle calls of the components still going when serve() returned
    app_name: str = "prop"


async def play(scenario: Scenario) -> Outcome:
    """Serve the scenario's app once, shutting it down as the scenario says."""
    lab = Lab()
    kwargs: dict[str, Any] = {} if scenario.strategy is None else {"restart_strategy": scenario.strategy}
    app = test_app("prop", **kwargs)
    for spec in scenario.components:
        app.register(spec.build(lab), name=spec.name, **spec.options())
    loop_thread = threading.get_ident()
    ready, early = anyio.Event(), anyio.Event()
    app.on_ready(ready.set)

    async def after_ready() -> None:
        await ready.wait()
        await anyio.sleep(scenario.shutdown.after_ready)
        lab.shutdown(app)

    async def from_task() -> None:
        await early.wait()
        lab.shutdown(app)

    def woken() -> None:  # on the thread that recorded the event
        if threading.get_ident() == loop_thread:
            early.set()
        else:
            lab.shutdown(app)  # from a worker thread: the thread-safe path

    async def after_delay(seconds: float) -> None:
        await anyio.sleep(seconds)
        lab.shutdown(app)

    with structlog.testing.capture_logs():
        async with anyio.create_task_group() as tg:
            tg.start_soon(after_ready)
            match scenario.shutdown.early:
                case ("task", str(event)):
                    lab.trace.on(event, woken)
                    tg.start_soon(from_task)
                case ("inline", str(event)):
                    lab.trace.on(event, lambda: lab.shutdown(app))
                case ("delay", float(seconds)):
                    tg.start_soon(after_delay, seconds)
            started = time.monotonic()
            with anyio.fail_after(scenario.bound + 5):
                status = await app.serve()
            elapsed = time.monotonic() - started
            tg.cancel_scope.cancel()
        outcome = Outcome(status, app.errors, lab.trace.events, elapsed, lab.activity.in_async)
        await lab.activity.drain_threads()
    return outcome


# -- what must hold --------------------------------------------------------------------------------


def check_order(events: Sequence[str], scenario: Scenario, names: set[str]) -> list[str]:
    """Finalize runs in exact reverse order of successful init, for the incarnations of ``names``.

    Within one priority the order in which two plain ``def`` inits finished is their threads'
    race, not something the trace can know: such pairs are not compared.
    """
    spec = scenario.by_name()
    parsed = [e for e in parse(events) if e.name in names]
    inited = [e for e in parsed if e.op == "init" and e.outcome == "ok"]
    position = {e.key: i for i, e in enumerate(inited)}
    finalized = [e.key for e in parsed if e.op == "finalize" and e.outcome is None and e.key in position]
    problems = []
    for i, first in enumerate(finalized):
        for later in finalized[i + 1 :]:
            a, b = spec[first[0]], spec[later[0]]
            if a.priority == b.priority and (a.threaded or b.threaded):
                continue
            if position[first] < position[later]:
                problems.append(f"{first[0]}#{first[1]} finalized before {later[0]}#{later[1]}, initialised later")
    return problems


def fired(events: Sequence[str]) -> list[tuple[str, int, str, str | None]]:
    """The faults that happened: (component, incarnation, operation, outcome)."""
    return [
        (e.name, e.incarnation, e.op, e.outcome)
        for e in parse(events)
        if e.outcome in ("fail", "hang") or (e.op, e.outcome) == ("run", "return")
    ]


def check_status(outcome: Outcome, scenario: Scenario) -> list[str]:
    """The exit status is 1 iff something failed; an error always has a cause among the faults.

    Without restarts: the status is 1 exactly when ``app.errors`` is not empty; a failure
    raised by an ``async def`` method the runner was waiting for is among them; no error
    without a fault. With restarts: a run that raised or returned and was restarted (within
    the intensity, before any shutdown) does not make the status 1; a failure that is not
    restarted (a boot init, a ``never`` run) or too many restarts do.
    """
    spec = scenario.by_name()
    problems = []
    registered = set(spec) | {outcome.app_name}
    for error in outcome.errors:
        if not isinstance(error, ComponentError) or error.component not in registered:
            problems.append(f"error not about a registered component: {error!r} (component={error.component!r})")
        elif error.component in spec and spec[error.component].fault is None:
            problems.append(f"error for a component without a fault: {error}")
    faults = fired(outcome.events)
    real = [f for f in faults if f[3] != "return"]
    if not real and (outcome.status != 0 or outcome.errors):
        problems.append(f"no fault happened, yet status {outcome.status}, errors {outcome.errors}")
    if scenario.strategy is None:
        if (outcome.status == 1) != bool(outcome.errors):
            problems.append(f"status {outcome.status} with errors {outcome.errors}")
        recorded = {(e.component, e.operation) for e in outcome.errors}
        for name, _, op, what in real:
            if what == "fail" and not spec[name].threaded and (name, op) not in recorded:
                problems.append(f"{name}.{op} raised, yet no such error in {sorted(recorded)}")
        return problems
    fatal, benign = _restart_expectation(outcome, scenario)
    if fatal and outcome.status != 1:
        problems.append(f"status 0, yet {fatal}")
    if benign and outcome.status != 0:
        problems.append(f"status 1, yet every failure was restarted: {outcome.errors}")
    if outcome.status == 1 and not outcome.errors:
        problems.append("status 1 without an error")
    return problems


def _restart_expectation(outcome: Outcome, scenario: Scenario) -> tuple[str, bool]:
    """With restarts: (why the status must be 1, or ""; whether it must be 0)."""
    spec = scenario.by_name()
    events = outcome.events
    cut = events.index("shutdown") if "shutdown" in events else len(events)
    counts: dict[str, int] = {}
    benign = scenario.strategy == "one_for_one"
    for e in parse(events):
        policy = spec[e.name].restart
        assert policy is not None
        if e.outcome not in ("fail", "hang", "return"):
            continue
        if e.op == "init" and e.outcome == "fail" and e.incarnation == 1 and not spec[e.name].threaded:
            return f"{e.name}'s init failed at boot", False
        restartable = e.op == "run" and (
            e.outcome == "fail" and policy.restart != "never" or e.outcome == "return" and policy.restart == "always"
        )
        if e.op == "run" and e.outcome == "fail" and policy.restart == "never" and not spec[e.name].threaded:
            return f"{e.name}'s run raised and its policy is never", False
        if restartable and e.index < cut:
            counts[e.name] = counts.get(e.name, 0) + 1
            if counts[e.name] > policy.max_restarts:
                return f"{e.name} failed {counts[e.name]} times, max_restarts={policy.max_restarts}", False
        elif not (e.op == "run" and e.outcome == "return"):
            benign = False  # a failure the expectation does not cover: no claim
    return "", benign


def check_restart_counts(events: Sequence[str], scenario: Scenario) -> list[str]:
    """One-for-one: no component is initialised more than ``max_restarts + 1`` times."""
    if scenario.strategy != "one_for_one":
        return []
    problems = []
    for c in scenario.components:
        assert c.restart is not None
        if incarnations(events, c.name) > c.restart.max_restarts + 1:
            problems.append(f"{c.name} initialised {incarnations(events, c.name)} times")
    return problems


def violations(outcome: Outcome, scenario: Scenario) -> list[str]:
    """Every invariant the outcome breaks, in words."""
    events = outcome.events
    async_names = {c.name for c in scenario.components if not c.threaded}
    problems = check_finalized_once(events) + check_stops_follow_runs(events)
    problems += check_runs_before_finalize(events, async_names)
    problems += check_status(outcome, scenario)
    if outcome.elapsed > scenario.bound:
        problems.append(f"serve() took {outcome.elapsed:.2f}s, more than {scenario.bound:.2f}s")
    if outcome.async_calls_left:
        problems.append(f"{outcome.async_calls_left} async lifecycle call(s) still going after serve() returned")
    if scenario.strategy is None:
        problems += check_order(events, scenario, {c.name for c in scenario.components})
    else:
        problems += check_restart_counts(events, scenario)
        if scenario.strategy == "one_for_one":  # no group restart touches a never component
            assert all(c.restart is not None for c in scenario.components)
            problems += check_order(
                events,
                scenario,
                {c.name for c in scenario.components if c.restart is not None and c.restart.restart == "never"},
            )
    return problems


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(scenario=scenarios())
async def test_generated_apps_keep_the_lifecycle_invariants(scenario: Scenario) -> None:
    """Random apps with random faults and a shutdown at a random moment keep every lifecycle invariant.

    Every successful init (per incarnation) is finalized exactly once, in reverse order;
    stop() only after that incarnation's run() began; an async run has ended before its
    finalize; the status is 1 iff something failed (with restarts: without being restarted,
    or too often); every error names a registered component; serve() returns within the sum
    of the timeouts plus 1 s; no async lifecycle call is still going when it returns.
    """
    outcome = await play(scenario)
    note(f"status={outcome.status} elapsed={outcome.elapsed:.3f}s errors={outcome.errors!r}")
    note(f"events={outcome.events!r}")
    problems = violations(outcome, scenario)
    assert not problems, problems


# -- regressions: the three bugs issue 13 lists -------------------------------------------------------

ATTEMPTS = 30
"""How often the racy scenario is repeated: on trio it went wrong in about 25-30% of attempts."""


@pytest.mark.parametrize(
    ("caller", "threaded"),
    [("task", False), ("task", True), ("sibling-init", False), ("sibling-init", True), ("own-init", False)],
    ids=["task-async", "task-plain-def", "sibling-init-async", "sibling-init-plain-def", "own-init-async"],
)
async def test_a_shutdown_as_a_group_finishes_init_never_stops_a_run_that_has_not_begun(
    caller: str,
    threaded: bool,
) -> None:
    """Issue 13, bug 1: stop() must not be called before run() has begun.

    A group's last init returns and, at that very moment, ``app.shutdown()`` is called: from
    another task woken as an initializer's init returns (``task``), from inside that
    initializer's init (``sibling-init``), or from inside the process's own init when it is
    the only one of its group (``own-init``). The group's runs may then be scheduled without
    having taken a step. Either the run never starts (and is not stopped), or it starts and
    is stopped: never stop() first. The unwind is clean: status 0, no error, no stop timeout.
    (A plain def process calling shutdown from its own init is the case of the next test.)
    """
    bad = []
    for attempt in range(ATTEMPTS):
        lab = Lab()
        app = test_app("t")
        app.register(lab.process("p", threaded=threaded), name="p", shutdown_timeout=0.3)
        if caller != "own-init":
            app.register(lab.initializer("i", init=Fault(Mode.PAUSE, after=0.01)), name="i")
        woken = anyio.Event()
        if caller == "task":
            lab.trace.on("i#1.init.ok", woken.set)
        else:
            lab.trace.on("i#1.init.ok" if caller == "sibling-init" else "p#1.init.ok", lambda: lab.shutdown(app))

        async def stopper() -> None:
            await woken.wait()
            lab.shutdown(app)

        with structlog.testing.capture_logs():
            async with anyio.create_task_group() as tg:
                tg.start_soon(stopper)
                status = await serve_until(app, lab, limit=5)
                tg.cancel_scope.cancel()
        await lab.activity.drain_threads()
        events = lab.trace.events
        problems = check_stops_follow_runs(events) + check_finalized_once(events)
        if status != 0 or app.errors or problems:
            bad.append((attempt, status, [str(e) for e in app.errors], problems, events))
    assert not bad, f"{len(bad)}/{ATTEMPTS} attempts went wrong; the first: {bad[0]}"


@pytest.mark.parametrize("caller", ["own-init", "task"])
async def test_plain_def_init_that_returns_soon_after_a_shutdown_during_boot_is_finalized(caller: str) -> None:
    """Found by the property: a plain ``def`` init that succeeds is finalized, even if boot was abandoned meanwhile.

    A worker thread cannot be cancelled: when a shutdown arrives while a plain def init
    runs (here: called from inside that init, or from a task while the init still works),
    the init still returns successfully, 0.1 s later. Whatever it acquired must be finalized
    once, as for any successful init (issue 13: "every successful init is finalized exactly
    once"); the siblings of a failed init get 0.5 s to finish for the same reason.
    """
    lab = Lab()
    app = test_app("t")
    app.register(lab.initializer("slow", threaded=True, init=Fault(Mode.PAUSE, after=0.1)), name="slow")
    if caller == "own-init":
        lab.trace.on("slow#1.init", lambda: lab.shutdown(app))
        event = None
    else:
        event = "slow#1.init"
    with structlog.testing.capture_logs():
        status = await serve_until(app, lab, event, limit=5)
    await lab.trace.wait_for("slow#1.init.ok")  # the thread finished its work (perhaps after serve() returned)
    await lab.activity.drain_threads()
    events = lab.trace.events
    assert status == 0 and app.errors == ()
    assert check_finalized_once(events) == [], events


class _Late:
    """A component whose one plain ``def`` method blocks until ``gate`` is set, then raises.

    By then the runner has abandoned the method (a timeout, or a cancelled run).
    """

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def late(self) -> None:
        self.gate.wait(5)
        raise Boom("late boom")


class LateInit(_Late, Initializer):
    def init(self) -> None:
        self.late()


class LateFinalize(_Late, Initializer):
    def finalize(self) -> None:
        self.late()


class LateRun(_Late, Process):
    """No stop(): its run is cancelled at shutdown, and the thread abandoned."""

    def run(self) -> None:
        self.late()


class LateStop(_Late, Process):
    async def run(self) -> None:
        await anyio.sleep_forever()

    def stop(self) -> None:
        self.late()


Log = MutableMapping[str, Any]

LATE: dict[str, tuple[type[_Late], dict[str, Any]]] = {
    "init": (LateInit, {"init_timeout": 0.2}),
    "run": (LateRun, {}),
    "stop": (LateStop, {"shutdown_timeout": 0.2}),
    "finalize": (LateFinalize, {"finalize_timeout": 0.2}),
}


def _mentions(entry: Log, text: str) -> bool:
    return any(text in str(value) for value in entry.values())


class Keeper(Initializer):
    """Finalized last: releases the late method, then waits (bounded) for the warning about it.

    So the late exception happens while the app is still serving.
    """

    def __init__(self, gate: threading.Event, logs: list[Log], op: str) -> None:
        self.gate, self.logs, self.op = gate, logs, op
        self.released_at = -1

    async def finalize(self) -> None:
        self.released_at = len(self.logs)
        self.gate.set()
        with anyio.move_on_after(2):
            while not late_warnings(self.logs[self.released_at :], self.op):
                await anyio.sleep(0.005)
        await anyio.sleep(0.2)  # room for a (wrong) second warning


def late_warnings(logs: Sequence[Log], op: str) -> list[Log]:
    """Warnings that name the component ``tardy``, the operation and the exception."""
    return [
        e
        for e in logs
        if e.get("log_level") == "warning"
        and _mentions(e, "tardy")
        and _mentions(e, op)
        and (bool(e.get("exc_info")) or _mentions(e, "late boom"))
    ]


@pytest.mark.parametrize("op", list(LATE))
async def test_b_an_abandoned_plain_def_method_that_raises_later_is_logged_once(op: str) -> None:
    """Issue 13, bug 2: the later exception of an abandoned plain ``def`` method is not silently dropped.

    The method (init or finalize past its timeout, a run without stop() cancelled at
    shutdown, a stop past its shutdown_timeout) raises after the runner stopped waiting for
    it; one warning names the component and the operation.
    """
    gate = threading.Event()
    cls, options = LATE[op]
    app = test_app("t")
    try:
        with structlog.testing.capture_logs() as logs:
            keeper = app.register(Keeper(gate, logs, op), name="keeper", priority=-1)
            tardy = cls(gate)
            assert isinstance(tardy, Initializer)
            app.register(tardy, name="tardy", **options)
            app.on_ready(app.shutdown)
            with anyio.fail_after(10):
                await app.serve()
    finally:
        gate.set()
    assert keeper.released_at >= 0, "the keeper was not finalized"
    warnings = late_warnings(logs[keeper.released_at :], op)
    assert len(warnings) == 1, logs[keeper.released_at :]


async def test_c_a_start_timeout_names_each_unhealthy_owner_as_a_registered_component() -> None:
    """Issue 13, bug 3: ``ComponentError.component`` is always a registered name, never ``"a, b"``.

    Two initializers own health keys never reported healthy; the start timeout names each
    owner, either in an error of its own or alongside; every error's component is registered.
    """
    lab = Lab()
    app = test_app("t")
    owners = ("owner-a", "owner-b")
    for name in owners:
        app.register(lab.initializer(name, health=Fault(Mode.HANG)), name=name, start_timeout=0.2)
    app.register(lab.process("worker"), name="worker", start_timeout=0.2)
    with structlog.testing.capture_logs():
        assert await serve_until(app, lab, limit=5) == 1
    starts = [e for e in app.errors if e.operation == "start"]
    assert starts and all(isinstance(e, ComponentTimeoutError) for e in starts)
    registered = {"owner-a", "owner-b", "worker"}
    assert [e.component for e in app.errors if e.component not in registered] == []
    named = {e.component for e in starts} | {o for o in owners if any(o in str(e) for e in starts)}
    assert set(owners) <= named
    assert check_finalized_once(lab.trace.events) == []
