"""A black-box QA pass over Flows: the issue's contract and docs/flows.md, scenario by scenario.

Written from the issue text and the user docs only. Tests that take ``flow_engine`` run on
every engine (serial, parallel, worker-based on a real Redis).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import structlog

from nacelle_py import App
from nacelle_py.base import FlowRunner, flows
from nacelle_py.testing import BootError, running

from .conftest import EngineUnderTest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import qa_flows_crash as crash  # noqa: E402
from harness import AppProcess, clean_env  # noqa: E402

pytestmark = pytest.mark.anyio

LIMIT = 15  # seconds: the bound of every wait
CRASH_SCRIPT = str(Path(crash.__file__).resolve())


# The contract block, literally ------------------------------------------------------------------

ledger: list[str] = []


class Reserve(flows.Task):
    provides = "reservation"

    async def execute(self, order_id: str) -> str:
        ledger.append(f"reserve {order_id}")
        return f"r-{order_id}"

    async def revert(self, order_id: str, result: object, failures: flows.Failures) -> None:
        kind = "Failure" if isinstance(result, flows.Failure) else repr(result)
        ledger.append(f"release {order_id} {kind} {sorted(failures)}")


class Charge(flows.Task):
    provides = "charge"

    async def execute(self, reservation: str, amount: int = 10) -> str:
        ledger.append(f"charge {reservation} {amount}")
        if amount > 100:
            raise ValueError(f"card declined for {amount}")
        return f"ch-{reservation}"

    async def revert(self, order_id: str, result: object, failures: flows.Failures) -> None:
        kind = "Failure" if isinstance(result, flows.Failure) else repr(result)
        ledger.append(f"uncharge {kind}")


class Email(flows.Task):
    provides = "emailed"

    async def execute(self, charge: str) -> str:
        ledger.append("email")
        return "e"


class Sms(flows.Task):
    provides = "texted"

    def execute(self, charge: str) -> str:
        ledger.append("sms")
        return "s"


def checkout() -> flows.Flow:
    return flows.linear("checkout", Reserve(), Charge(), flows.unordered("notify", Email(), Sms()))


async def test_contract_block_returns_every_provided_value_and_the_store(flow_engine: EngineUnderTest) -> None:
    ledger.clear()
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(checkout(), store={"order_id": "o-1"})
    assert values == {
        "order_id": "o-1",
        "reservation": "r-o-1",
        "charge": "ch-r-o-1",
        "emailed": "e",
        "texted": "s",
    }
    assert ledger[:2] == ["reserve o-1", "charge r-o-1 10"] and sorted(ledger[2:]) == ["email", "sms"]


async def test_contract_literal_parallel_call() -> None:
    ledger.clear()
    with anyio.fail_after(LIMIT):
        values = await flows.run(checkout(), store={"order_id": "o-1"}, engine="parallel")
    assert values["order_id"] == "o-1" and values["charge"] == "ch-r-o-1"


async def test_contract_failure_reverts_with_failure_result_and_str_names_task_type_message(
    flow_engine: EngineUnderTest,
) -> None:
    ledger.clear()
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(checkout(), store={"order_id": "o-2", "amount": 500})
    failed = caught.value
    assert failed.state is flows.REVERTED
    assert [(f.task, f.operation, f.type, f.message) for f in failed.failures] == [
        ("Charge", "execute", "ValueError", "card declined for 500")
    ]
    text = str(failed)
    assert "Charge" in text and "ValueError" in text and "card declined for 500" in text
    # the failed task is reverted with its Failure, then Reserve; notify never ran
    assert ledger == [
        "reserve o-2",
        "charge r-o-2 500",
        "uncharge Failure",
        "release o-2 'r-o-2' ['Charge']",
    ]


async def test_flow_failed_failures_include_the_revert_error_and_str_names_both(flow_engine: EngineUnderTest) -> None:
    class BadUndo(flows.Task):
        provides = "x"

        async def execute(self) -> str:
            return "x"

        async def revert(self) -> None:
            raise OSError("undo broke")

    class Boom(flows.Task):
        async def execute(self, x: str) -> None:
            raise KeyError("nope")

    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flows.linear("nasty", BadUndo(), Boom()))
    failed = caught.value
    assert failed.state is flows.FAILED
    assert failed.state is flows.FAILURE  # FAILED is an alias
    assert [(f.task, f.operation, f.type) for f in failed.failures] == [
        ("Boom", "execute", "KeyError"),
        ("BadUndo", "revert", "OSError"),
    ]
    text = str(failed)
    for part in ("Boom", "KeyError", "nope", "BadUndo", "OSError", "undo broke"):
        assert part in text, text


# FLOWS_ENGINE from the configuration --------------------------------------------------------------


class Rendezvous(flows.Task):
    """Ends only once its partner has started too (bounded): proves the two overlapped."""

    def __init__(self, name: str, here: dict[str, anyio.Event], partner: str) -> None:
        super().__init__(name, provides=name)
        self.here = here
        self.partner = partner

    async def execute(self) -> str:
        self.here[self.name].set()
        with anyio.move_on_after(2):
            await self.here[self.partner].wait()
            return "met"
        return "alone"


def pair() -> tuple[flows.Flow, dict[str, anyio.Event]]:
    here = {"a": anyio.Event(), "b": anyio.Event()}
    return flows.unordered("pair", Rendezvous("a", here, "b"), Rendezvous("b", here, "a")), here


async def test_flows_engine_env_picks_parallel_when_engine_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_ENGINE", "parallel")
    flow, _ = pair()
    with anyio.fail_after(LIMIT):
        values = await flows.run(flow)
    assert values == {"a": "met", "b": "met"}


async def test_without_flows_engine_the_default_is_serial() -> None:
    flow, _ = pair()
    with anyio.fail_after(LIMIT):
        values = await flows.run(flow)
    assert values["a"] == "alone"  # serial: a ran alone, b after it


async def test_engine_keyword_beats_flows_engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_ENGINE", "parallel")
    flow, _ = pair()
    with anyio.fail_after(LIMIT):
        values = await flows.run(flow, engine="serial")
    assert values["a"] == "alone"


async def test_an_invalid_flows_engine_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_ENGINE", "turbo")
    ran: list[str] = []

    class T(flows.Task):
        async def execute(self) -> None:
            ran.append("t")

    with anyio.fail_after(LIMIT), pytest.raises(Exception) as caught:
        await flows.run(flows.linear("f", T()))
    assert "FLOWS_ENGINE" in str(caught.value) and "turbo" in str(caught.value)
    assert ran == []


class Add(flows.Task):
    provides = "total"

    async def execute(self, a: int, b: int) -> int:
        return a + b


def runner_app(runner: FlowRunner, name: str = "shop") -> App:
    app = App(name, parse_args=False, ops_addr="127.0.0.1:0")
    app.register(runner, name="flows", priority=1)
    return app


@pytest.mark.parametrize("variable", ["FLOWS_ENGINE", "SHOP_FLOWS_ENGINE"])
async def test_flowrunner_reads_flows_engine_with_and_without_the_app_prefix(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "parallel")
    runner = FlowRunner([flows.linear("sum", Add())], engine="serial")
    async with running(runner_app(runner)):
        assert runner.engine == "parallel"
        flow_id = await runner.submit("sum", {"a": 1, "b": 2})
        assert await runner.result(flow_id, timeout=LIMIT) == {"a": 1, "b": 2, "total": 3}


async def test_the_prefixed_setting_wins_over_the_bare_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_ENGINE", "serial")
    monkeypatch.setenv("SHOP_FLOWS_ENGINE", "parallel")
    runner = FlowRunner([flows.linear("sum", Add())])
    async with running(runner_app(runner)):
        assert runner.engine == "parallel"


@pytest.mark.parametrize("variable", ["FLOWS_ENGINE", "SHOP_FLOWS_ENGINE"])
async def test_flowrunner_with_an_invalid_engine_setting_fails_boot_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "turbo")
    runner = FlowRunner([flows.linear("sum", Add())])
    with pytest.raises(BootError) as caught:
        async with running(runner_app(runner)):
            pass
    text = str(caught.value) + str(caught.value.errors)
    assert "FLOWS_ENGINE" in text and "turbo" in text, text


async def test_flowrunner_max_running_setting_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_FLOWS_MAX_RUNNING", "0")
    runner = FlowRunner([flows.linear("sum", Add())])
    with pytest.raises(BootError) as caught:
        async with running(runner_app(runner)):
            pass
    text = str(caught.value) + str(caught.value.errors)
    assert "FLOWS_MAX_RUNNING" in text, text


# Order and concurrency ---------------------------------------------------------------------------


class Sleepy(flows.Task):
    """Takes longer the earlier it is written: a linear flow must still run it first."""

    def __init__(self, name: str, trace: list[str], turns: int) -> None:
        super().__init__(name, provides=name)
        self.trace = trace
        self.turns = turns

    async def execute(self) -> str:
        self.trace.append(f"start {self.name}")
        for _ in range(self.turns):
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.001 * self.turns)
        self.trace.append(f"end {self.name}")
        return self.name


async def test_linear_keeps_order_even_when_earlier_tasks_are_slower(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    names = ["t1", "t2", "t3", "t4"]
    flow = flows.linear("slow-first", *(Sleepy(n, trace, 40 - 10 * i) for i, n in enumerate(names)))
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow)
    assert trace == [x for n in names for x in (f"start {n}", f"end {n}")]


async def test_unordered_really_overlaps_on_parallel_and_worker_based(flow_engine: EngineUnderTest) -> None:
    if not flow_engine.concurrent:
        pytest.skip("serial runs one atom at a time")
    flow, _ = pair()
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow)
    assert values == {"a": "met", "b": "met"}


async def test_plain_def_tasks_of_unordered_overlap_on_threads(flow_engine: EngineUnderTest) -> None:
    if not flow_engine.concurrent:
        pytest.skip("serial runs one atom at a time")
    import threading

    barrier = threading.Barrier(3, timeout=5)

    class Meet(flows.Task):
        def execute(self) -> str:
            barrier.wait()
            return "ok"

    flow = flows.unordered("meet", *(Meet(name=f"m{i}", provides=f"m{i}") for i in range(3)))
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow)
    assert values == {"m0": "ok", "m1": "ok", "m2": "ok"}


# Graphs ------------------------------------------------------------------------------------------


class Rec(flows.Task):
    """Records its execute and revert; requirements through ``requires=`` and a ``**values`` execute."""

    def __init__(self, name: str, trace: list[str], *, fail: bool = False, **options: Any) -> None:
        super().__init__(name, **options)
        self.trace = trace
        self.fail = fail

    async def execute(self, **values: Any) -> str:
        self.trace.append(f"execute {self.name}")
        await anyio.lowlevel.checkpoint()
        if self.fail:
            raise ValueError(f"{self.name} failed")
        return f"{self.name}!"

    async def revert(self, result: object, **values: Any) -> None:
        self.trace.append(f"revert {self.name}")


class NeedsX(flows.Task):
    provides = "y"

    async def execute(self, x: str) -> str:
        return x + "y"


class MakesX(flows.Task):
    provides = "x"

    async def execute(self) -> str:
        return "x"


class NeedsY(flows.Task):
    provides = "z"

    async def execute(self, y: str) -> str:
        return y + "z"


async def test_graph_infers_edges_from_execute_parameter_names(flow_engine: EngineUnderTest) -> None:
    seen: list[str] = []

    def on(t: flows.Transition) -> None:
        if t.atom and t.new is flows.RUNNING:
            seen.append(t.atom)

    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flows.graph("g", NeedsY(), NeedsX(), MakesX()), listeners=[on])
    assert seen == ["MakesX", "NeedsX", "NeedsY"]
    assert values == {"x": "x", "y": "xy", "z": "xyz"}


async def test_graph_explicit_links_order_independent_atoms(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    a, b, c = Rec("a", trace), Rec("b", trace), Rec("c", trace)
    flow = flows.graph("g", a, b, c, links=[(c, b), (b, a)])
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow)
    assert trace == ["execute c", "execute b", "execute a"]


async def test_graph_link_method_orders_atoms(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    a, b = Rec("a", trace), Rec("b", trace)
    flow = flows.graph("g", a, b)
    flow.link(b, a)
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow)
    assert trace == ["execute b", "execute a"]


def test_a_cycle_is_refused_naming_its_atoms() -> None:
    class P(flows.Task):
        provides = "p"

        async def execute(self, q: str) -> str:
            return q

    class Q(flows.Task):
        provides = "q"

        async def execute(self, p: str) -> str:
            return p

    with pytest.raises(flows.FlowError) as caught:
        flows.graph("loop", P(), Q())
    assert isinstance(caught.value, ValueError)
    text = str(caught.value)
    assert "loop" in text and "P" in text and "Q" in text and "cycle" in text.lower(), text


def test_a_cycle_through_explicit_links_is_refused() -> None:
    trace: list[str] = []
    a, b = Rec("a", trace), Rec("b", trace)
    with pytest.raises(flows.FlowError, match="cycle") as caught:
        flows.graph("g", a, b, links=[(a, b), (b, a)])
    assert "'a'" in str(caught.value) or " a" in str(caught.value)


async def test_a_cycle_added_with_link_later_is_refused_before_anything_runs() -> None:
    trace: list[str] = []
    a, b = Rec("a", trace), Rec("b", trace)
    g = flows.graph("g", a, b, links=[(a, b)])
    with pytest.raises(flows.FlowError, match="cycle: 'a' -> 'b' -> 'a'"):
        g.link(b, a)  # refused here or, at the latest, by run below
        await flows.run(g)
    assert trace == []


def test_ambiguous_providers_are_refused_naming_the_value_and_both_providers() -> None:
    trace: list[str] = []
    with pytest.raises(flows.FlowError) as caught:
        flows.graph(
            "amb",
            Rec("one", trace, provides="v"),
            Rec("two", trace, provides="v"),
            Rec("user", trace, requires=("v",)),
        )
    text = str(caught.value)
    assert "amb" in text and "'v'" in text and "one" in text and "two" in text, text


async def test_a_missing_requirement_is_refused_before_anything_runs(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear("needy", Rec("first", trace), Rec("second", trace, requires=("ghost",)))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowError) as caught:
        await flow_engine.run(flow)
    assert "ghost" in str(caught.value) and "second" in str(caught.value)
    assert trace == []


async def test_a_requirement_from_a_later_sibling_in_linear_is_refused_before_running() -> None:
    # docs/flows.md: a provider later in a linear flow does not count; flows.run refuses the
    # flow before its first task, saying the value must be provided earlier in the flow.
    trace: list[str] = []
    flow = flows.linear("backwards", Rec("user", trace, requires=("late",)), Rec("maker", trace, provides="late"))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowError) as caught:
        await flows.run(flow)
    assert "late" in str(caught.value) and "earlier in the flow" in str(caught.value)
    assert trace == []


def test_unordered_siblings_that_depend_on_each_other_are_refused() -> None:
    with pytest.raises(flows.FlowError) as caught:
        flows.unordered("race", MakesX(), NeedsX())
    text = str(caught.value)
    assert "race" in text and "MakesX" in text and "NeedsX" in text, text


def test_two_atoms_with_one_name_are_refused() -> None:
    with pytest.raises(flows.FlowError, match="Add"):
        flows.linear("dup", Add(), flows.unordered("inner", Add()))


# Reverts -----------------------------------------------------------------------------------------


async def test_unordered_reverts_in_reverse_order_of_completion(flow_engine: EngineUnderTest) -> None:
    if not flow_engine.concurrent:
        pytest.skip("completion order differs from writing order only on concurrent engines")
    trace: list[str] = []
    slow_done = anyio.Event()

    class Slow(flows.Task):
        async def execute(self) -> None:
            trace.append("execute slow")
            await anyio.sleep(0.05)
            trace.append("done slow")

        async def revert(self) -> None:
            trace.append("revert slow")

    class Fast(flows.Task):
        async def execute(self) -> None:
            trace.append("done fast")

        async def revert(self) -> None:
            trace.append("revert fast")

    class Late(flows.Task):
        async def execute(self) -> None:
            with anyio.fail_after(5):
                await slow_done.wait()
            trace.append("done late")
            raise ValueError("late broke")

        async def revert(self, result: object) -> None:
            trace.append(f"revert late {type(result).__name__}")

    def recorded(t: flows.Transition) -> None:  # the engine's own completion order, not the worker's
        if t.atom == "Slow" and t.new is flows.SUCCESS:
            slow_done.set()

    flow = flows.unordered("u", Slow(), Fast(), Late())  # completes: fast, slow, late
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flow_engine.run(flow, listeners=[recorded])
    reverts = [t for t in trace if t.startswith("revert")]
    assert reverts == ["revert late Failure", "revert slow", "revert fast"], trace


async def test_graph_reverts_in_reverse_dependency_order(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.graph(
        "g",
        Rec("d", trace, requires=("c_out",), fail=True),
        Rec("c", trace, requires=("b_out",), provides="c_out"),
        Rec("b", trace, requires=("a_out",), provides="b_out"),
        Rec("a", trace, provides="a_out"),
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert caught.value.state is flows.REVERTED
    assert [t for t in trace if t.startswith("revert")] == ["revert d", "revert c", "revert b", "revert a"]


async def test_never_run_tasks_are_not_reverted_and_a_raising_revert_stops_further_reverts(
    flow_engine: EngineUnderTest,
) -> None:
    trace: list[str] = []

    class StuckUndo(Rec):
        async def revert(self, result: object, **values: Any) -> None:
            trace.append(f"revert {self.name}")
            raise RuntimeError("cannot undo")

    flow = flows.linear(
        "f",
        Rec("a", trace),
        StuckUndo("b", trace),
        Rec("c", trace, fail=True),
        Rec("never", trace),
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert trace == ["execute a", "execute b", "execute c", "revert c", "revert b"]
    assert caught.value.state is flows.FAILED
    assert [(f.task, f.operation) for f in caught.value.failures] == [("c", "execute"), ("b", "revert")]


async def test_the_failed_tasks_revert_gets_its_failure_with_details(flow_engine: EngineUnderTest) -> None:
    got: list[Any] = []

    class Broken(flows.Task):
        async def execute(self) -> None:
            raise ZeroDivisionError("div by zero here")

        async def revert(self, result: object, failures: flows.Failures) -> None:
            assert isinstance(result, flows.Failure)
            got.append((result.task, result.operation, result.type, result.message, bool(result.traceback)))
            got.append(sorted(failures))

    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flow_engine.run(flows.linear("f", Broken()))
    assert got == [("Broken", "execute", "ZeroDivisionError", "div by zero here", True), ["Broken"]]


# Retry controllers -------------------------------------------------------------------------------


class Flaky(flows.Task):
    """Fails its first ``fails`` executes (``-1``: always)."""

    def __init__(self, name: str, trace: list[str], fails: int, **options: Any) -> None:
        super().__init__(name, **options)
        self.trace = trace
        self.fails = fails

    async def execute(self) -> str:
        self.trace.append(f"execute {self.name}")
        runs = self.trace.count(f"execute {self.name}")
        if self.fails < 0 or runs <= self.fails:
            raise ValueError(f"{self.name} run {runs}")
        return "ok"

    async def revert(self, result: object) -> None:
        self.trace.append(f"revert {self.name}")


@pytest.mark.parametrize("pattern", ["linear", "unordered", "graph"])
async def test_times_retries_each_pattern(flow_engine: EngineUnderTest, pattern: str) -> None:
    trace: list[str] = []
    make = {"linear": flows.linear, "unordered": flows.unordered, "graph": flows.graph}[pattern]
    sub = make("sub", Flaky("flaky", trace, fails=2), retry=flows.Times(3))
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flows.linear("top", sub))
    assert trace.count("execute flaky") == 3
    assert trace.count("revert flaky") == 2  # each failed attempt is reverted before the retry


async def test_times_exhausted_reverts_everything_and_raises(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear("top", Rec("before", trace), flows.linear("sub", Flaky("f", trace, -1), retry=flows.Times(2)))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert caught.value.state is flows.REVERTED
    assert trace.count("execute f") == 2
    assert trace[-1] == "revert before"


async def test_revert_defers_to_the_outer_controller(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    inner = flows.linear("inner", Flaky("f", trace, -1), retry=flows.Times(2))
    outer = flows.linear("outer", Rec("o", trace), inner, retry=flows.Times(3))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flow_engine.run(flows.linear("top", outer))
    assert trace.count("execute f") == 6  # 3 outer attempts x 2 inner
    assert trace.count("execute o") == 3


async def test_revert_all_ignores_the_outer_controller(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    inner = flows.linear("inner", Flaky("f", trace, -1), retry=flows.Times(2, revert_all=True))
    outer = flows.linear("outer", Rec("o", trace), inner, retry=flows.Times(5))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flows.linear("top", Rec("first", trace), outer))
    assert caught.value.state is flows.REVERTED
    assert trace.count("execute f") == 2
    assert trace.count("execute o") == 1
    assert trace[-2:] == ["revert o", "revert first"]


class Decider(flows.Retry):
    """A custom controller: RETRY once, then the decision it was given."""

    def __init__(self, final: flows.Decision, **options: Any) -> None:
        super().__init__(**options)
        self.final = final

    def on_failure(self, failures: flows.Failures, attempt: int) -> flows.Decision:
        return flows.RETRY if attempt < 2 else self.final

    def value(self, attempt: int) -> Any:
        return attempt


async def test_custom_revert_all_controller_skips_outer_retry(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    inner = flows.linear("inner", Flaky("f", trace, -1), retry=Decider(flows.REVERT_ALL))
    outer = flows.linear("outer", inner, retry=flows.Times(4))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flow_engine.run(flows.linear("top", outer))
    assert trace.count("execute f") == 2


async def test_a_controller_whose_on_failure_raises_is_taken_as_revert(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []

    class Broken(flows.Retry):
        def on_failure(self, failures: flows.Failures, attempt: int) -> flows.Decision:
            raise RuntimeError("controller bug")

    inner = flows.linear("inner", Flaky("f", trace, -1), retry=Broken())
    outer = flows.linear("outer", inner, retry=flows.Times(2))
    with structlog.testing.capture_logs() as logs, anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flow_engine.run(flows.linear("top", outer))
    assert trace.count("execute f") == 2  # REVERT: the outer controller retried once
    assert any("controller bug" in str(e) for e in logs), logs


async def test_for_each_provides_each_value_in_turn(flow_engine: EngineUnderTest) -> None:
    seen: list[Any] = []

    class Try(flows.Task):
        provides = "picked"

        async def execute(self, value: str) -> str:
            seen.append(value)
            if value != "c":
                raise LookupError(value)
            return value

    flow = flows.linear("top", flows.linear("each", Try(), retry=flows.ForEach(["a", "b", "c", "d"])))
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow)
    assert seen == ["a", "b", "c"] and values["picked"] == "c"


async def test_times_provides_the_attempt_number(flow_engine: EngineUnderTest) -> None:
    seen: list[int] = []

    class T(flows.Task):
        async def execute(self, attempt: int) -> None:
            seen.append(attempt)
            if attempt < 3:
                raise ValueError("again")

    flow = flows.linear("top", flows.linear("sub", T(), retry=flows.Times(5, provides="attempt")))
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow)
    assert seen == [1, 2, 3]


async def test_backoff_seconds_is_waited_between_attempts() -> None:
    trace: list[str] = []
    flow = flows.linear("top", flows.linear("sub", Flaky("f", trace, 1), retry=flows.Times(2, backoff=0.3)))
    started = time.monotonic()
    with anyio.fail_after(LIMIT):
        await flows.run(flow, engine="parallel")
    assert time.monotonic() - started >= 0.29


async def test_backoff_function_gets_failed_attempts() -> None:
    trace: list[str] = []
    asked: list[int] = []

    def backoff(failed: int) -> float:
        asked.append(failed)
        return 0.0

    flow = flows.linear("top", flows.linear("sub", Flaky("f", trace, 2), retry=flows.Times(3, backoff=backoff)))
    with anyio.fail_after(LIMIT):
        await flows.run(flow)
    assert asked == [1, 2]


async def test_the_controller_is_an_atom_moving_running_retrying_running() -> None:
    trace: list[str] = []
    moves: list[tuple[str | None, str, str]] = []
    flow = flows.linear("top", flows.linear("sub", Flaky("f", trace, 1), retry=flows.Times(2)))
    with anyio.fail_after(LIMIT):
        await flows.run(flow, listeners=[lambda t: moves.append((t.atom, str(t.old), str(t.new)))])
    ctl = [(o, n) for a, o, n in moves if a == "sub.retry"]
    assert ("RUNNING", "RETRYING") in ctl and ("RETRYING", "RUNNING") in ctl, ctl


@pytest.mark.parametrize(
    "make",
    [
        lambda: flows.Times(0),
        lambda: flows.Times(-2),
        lambda: flows.Times(2, backoff=-1.0),
        lambda: flows.Times(2, backoff=(1.0,)),  # type: ignore[arg-type]
        lambda: flows.Times(2, backoff=(2.0, 1.0)),  # the cap below the first wait
        lambda: flows.Times("3"),  # type: ignore[arg-type]
        lambda: flows.ForEach([]),
    ],
    ids=["zero", "negative", "neg-backoff", "short-tuple", "cap-below-first", "str-attempts", "empty-foreach"],
)
def test_bad_retry_arguments_are_refused_clearly(make: Any) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        make()
    text = str(caught.value)
    assert "Times" in text or "ForEach" in text or "attempts" in text or "backoff" in text or "values" in text, text


def test_retry_must_be_a_controller() -> None:
    with pytest.raises((TypeError, ValueError, flows.FlowError)) as caught:
        flows.linear("sub", Add(), retry=3)  # type: ignore[arg-type]
    assert "retry" in str(caught.value)


@pytest.mark.parametrize("engine", ["serial", "parallel"])
def test_a_retry_loop_of_a_task_that_fails_at_once_can_be_cancelled(anyio_backend: str, engine: str) -> None:
    script = str(Path(__file__).resolve().parents[2] / "scripts" / "qa_flows_spin.py")
    env = clean_env(LOG_LEVEL="error")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
    try:
        done = subprocess.run(
            [sys.executable, script, anyio_backend, engine], env=env, capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        pytest.fail("fail_after(1) did not cancel the flow within 10 s: the event loop was never given back")
    assert done.stdout.strip() == "cancelled", done.stdout + done.stderr


# States and listeners ----------------------------------------------------------------------------

ATOM_MOVES = {
    "PENDING": {"RUNNING"},
    "RUNNING": {"SUCCESS", "FAILURE", "PENDING", "RETRYING", "REVERTING"},
    "SUCCESS": {"REVERTING"},
    "FAILURE": {"REVERTING"},
    "REVERTING": {"REVERTED", "FAILURE", "REVERTING"},
    "REVERTED": {"PENDING"},
    "RETRYING": {"RUNNING", "REVERTING"},
}
FLOW_MOVES = {
    "PENDING": {"RUNNING"},
    "RUNNING": {"SUCCESS", "REVERTING", "SUSPENDED", "RETRYING"},
    "RETRYING": {"RUNNING", "SUSPENDED", "REVERTING"},
    "SUSPENDED": {"RUNNING", "REVERTING"},
    "REVERTING": {"REVERTED", "FAILURE"},
}


def check_chains(seen: list[flows.Transition]) -> dict[str | None, list[str]]:
    """Every move is in the docs' table and continues where that atom was; returns each path."""
    paths: dict[str | None, list[str]] = {}
    for t in seen:
        table = FLOW_MOVES if t.atom is None else ATOM_MOVES
        old, new = str(t.old), str(t.new)
        assert new in table.get(old, set()), f"{t.atom}: {old} -> {new} not in the docs' table"
        path = paths.setdefault(t.atom, [old])
        assert path[-1] == old, f"{t.atom}: {path} then {old} -> {new}"
        path.append(new)
    return paths


async def test_listeners_get_every_transition_of_a_success_and_a_revert(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    seen: list[flows.Transition] = []
    flow = flows.linear(
        "f",
        Rec("a", trace, provides="ax"),
        flows.unordered("u", Rec("b", trace), Rec("c", trace, fail=True)),
        Rec("never", trace),
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow, listeners=[seen.append])
    paths = check_chains(seen)
    assert paths[None] == ["PENDING", "RUNNING", "REVERTING", "REVERTED"]
    assert paths["a"] == ["PENDING", "RUNNING", "SUCCESS", "REVERTING", "REVERTED"]
    assert paths["c"] == ["PENDING", "RUNNING", "FAILURE", "REVERTING", "REVERTED"]
    assert "never" not in paths or paths["never"] == ["PENDING"]
    flow_ids = {t.flow_id for t in seen}
    assert flow_ids == {caught.value.flow_id}
    assert all(t.flow == "f" for t in seen)
    a_success = next(t for t in seen if t.atom == "a" and t.new is flows.SUCCESS)
    assert a_success.result == "a!"
    c_failure = next(t for t in seen if t.atom == "c" and t.new is flows.FAILURE)
    assert c_failure.failure is not None and c_failure.failure.type == "ValueError"


async def test_a_retried_flow_moves_only_by_the_table(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    seen: list[flows.Transition] = []
    flow = flows.linear("top", flows.unordered("sub", Flaky("f", trace, 1), Rec("g", trace), retry=flows.Times(2)))
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow, listeners=[seen.append])
    paths = check_chains(seen)
    assert paths[None][-1] == "SUCCESS"
    assert paths["f"][-1] == "SUCCESS" and "REVERTED" in paths["f"]


async def test_a_raising_listener_never_breaks_the_flow_nor_its_revert(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []

    def angry(t: flows.Transition) -> None:
        raise RuntimeError("listener exploded")

    with structlog.testing.capture_logs() as logs:
        with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
            await flow_engine.run(flows.linear("f", Rec("a", trace), Rec("b", trace, fail=True)), listeners=[angry])
    assert caught.value.state is flows.REVERTED
    assert trace == ["execute a", "execute b", "revert b", "revert a"]
    warnings = [e for e in logs if e.get("log_level") == "warning" and "listener exploded" in str(e)]
    assert warnings, logs


def test_an_async_listener_is_refused() -> None:
    async def alistener(t: flows.Transition) -> None: ...

    with pytest.raises((TypeError, ValueError)):
        flows.load(flows.linear("f", Add()), store={"a": 1, "b": 2}, listeners=[alistener])


def test_states_are_all_there() -> None:
    names = {"PENDING", "RUNNING", "SUCCESS", "FAILURE", "REVERTING", "REVERTED", "RETRYING", "SUSPENDED"}
    assert {s.name for s in flows.State} >= names
    for n in names:
        assert getattr(flows, n) is flows.State[n]


# Timeouts ----------------------------------------------------------------------------------------


async def test_an_async_task_past_its_timeout_fails_and_the_flow_reverts(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []

    class Hang(flows.Task):
        timeout = 0.3

        async def execute(self) -> None:
            trace.append("hang")
            await anyio.sleep(30)

    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flows.linear("f", Rec("a", trace), Hang(), Rec("z", trace)))
    assert caught.value.state is flows.REVERTED
    assert [(f.task, f.type) for f in caught.value.failures] == [("Hang", "TimeoutError")]
    assert trace == ["execute a", "hang", "revert a"]


async def test_a_thread_task_past_its_timeout_keyword_fails(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    release = __import__("threading").Event()

    class Block(flows.Task):
        def execute(self) -> None:
            release.wait(5)

    try:
        with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
            await flow_engine.run(flows.linear("f", Rec("a", trace), Block(timeout=0.3)))
    finally:
        release.set()
    assert [(f.task, f.type) for f in caught.value.failures] == [("Block", "TimeoutError")]
    assert trace == ["execute a", "revert a"]


async def test_a_timeout_inside_unordered_stops_the_siblings_and_reverts(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []

    class Hang(flows.Task):
        async def execute(self) -> None:
            await anyio.sleep(30)

    flow = flows.linear("f", flows.unordered("u", Rec("a", trace), Hang(timeout=0.2)), Rec("z", trace))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert caught.value.state is flows.REVERTED
    assert "execute z" not in trace and "revert a" in trace


@pytest.mark.parametrize("bad", [0, -1, "soon", float("nan"), float("inf")])
def test_a_bad_timeout_is_refused_naming_the_task(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        Add(timeout=bad)
    assert "timeout" in str(caught.value)


def test_a_bad_class_timeout_is_refused() -> None:
    class T(flows.Task):
        timeout = -5

        async def execute(self) -> None: ...

    with pytest.raises((ValueError, TypeError)) as caught:
        flows.linear("f", T())
    assert "timeout" in str(caught.value) and "T" in str(caught.value)


# Suspend and resume ------------------------------------------------------------------------------


async def test_suspend_then_run_again_runs_only_what_had_not_finished(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    seen: list[flows.Transition] = []
    flow = flows.linear("f", Rec("a", trace, provides="ax"), Rec("b", trace, provides="bx"), Rec("c", trace))
    engine = await flow_engine.load(flow, listeners=[seen.append])

    def stop_after_a(t: flows.Transition) -> None:
        if t.atom == "a" and t.new is flows.SUCCESS:
            engine.suspend()

    engine.listen(stop_after_a)
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowSuspended) as caught:
        await engine.run()
    assert caught.value.state is flows.SUSPENDED
    assert trace == ["execute a"]
    with anyio.fail_after(LIMIT):
        values = await engine.run()
    assert trace == ["execute a", "execute b", "execute c"]
    assert values["ax"] == "a!" and values["bx"] == "b!"
    check_chains(seen)


async def test_suspend_from_outside_while_a_task_runs(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    entered = anyio.Event()
    leave = anyio.Event()

    class Wait(flows.Task):
        async def execute(self) -> None:
            entered.set()
            with anyio.fail_after(5):
                await leave.wait()
            trace.append("wait done")

    engine = await flow_engine.load(flows.linear("f", Wait(), Rec("next", trace)))
    outcome: list[BaseException] = []

    async def runner() -> None:
        try:
            await engine.run()
        except flows.FlowSuspended as e:
            outcome.append(e)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner)
            await entered.wait()
            engine.suspend()
            leave.set()
    assert len(outcome) == 1 and trace == ["wait done"]
    with anyio.fail_after(LIMIT):
        await engine.run()
    assert trace == ["wait done", "execute next"]


# Persistence: kill -9 a real subprocess, then resume ---------------------------------------------


def start_crash(
    backend: str, mode: str, shape: str, tmp: Path, engine: str, flow_id: str, hang: str, fail: str = "-"
) -> AppProcess:
    """The crash script in a subprocess on ``backend`` (asyncio or trio, as the test)."""
    args = [CRASH_SCRIPT, mode, shape, str(tmp / "flows.db"), str(tmp / "effects.db"), engine, flow_id, hang, fail]
    return AppProcess(args, clean_env(BACKEND=backend))


async def wait_call(proc: AppProcess, event: str, call: str, timeout: float = 30.0) -> None:
    await anyio.to_thread.run_sync(
        lambda: proc.wait_for(lambda e: e.get("event") == event and e.get("call") == call, timeout, f"{event} {call}")
    )


def kill9(proc: AppProcess) -> None:
    proc.send(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


@pytest.fixture
def reset_control() -> Any:
    crash.CONTROL["hang"] = set()
    crash.CONTROL["fail"] = set()
    yield crash.CONTROL
    crash.CONTROL["hang"] = set()
    crash.CONTROL["fail"] = set()


@pytest.mark.parametrize("engine", ["serial", "parallel"])
async def test_sigkill_mid_task_then_resume_runs_only_the_unfinished(
    tmp_path: Path, engine: str, reset_control: Any, anyio_backend: str
) -> None:
    with start_crash(anyio_backend, "run", "linear", tmp_path, engine, "run-1", "C.execute") as proc:
        await wait_call(proc, "hang", "C.execute")
        kill9(proc)
    assert crash.effects(str(tmp_path / "effects.db")) == ["A.execute", "B.execute"]
    store = flows.SQLiteStore(tmp_path / "flows.db")
    assert "run-1" in list(store.unfinished())
    with anyio.fail_after(LIMIT):
        values = await flows.resume(crash.build("linear"), "run-1", persistence=store, engine=engine)
    assert values == {
        "effects": str(tmp_path / "effects.db"),
        "A_out": "A-done",
        "B_out": "B-done",
        "C_out": "C-done",
        "D_out": "D-done",
    }
    assert crash.effects(str(tmp_path / "effects.db")) == ["A.execute", "B.execute", "C.execute", "D.execute"]
    assert "run-1" not in list(store.unfinished())


async def test_sigkill_in_unordered_on_parallel_then_resume_on_serial(
    tmp_path: Path, reset_control: Any, anyio_backend: str
) -> None:
    with start_crash(anyio_backend, "run", "fan", tmp_path, "parallel", "run-2", "C.execute") as proc:
        await wait_call(proc, "hang", "C.execute")
        await wait_call(proc, "done", "B.execute")
        await anyio.sleep(0.3)  # B's SUCCESS recorded after its effect: give the store a moment
        kill9(proc)
    store = flows.SQLiteStore(tmp_path / "flows.db")
    with anyio.fail_after(LIMIT):
        await flows.resume(crash.build("fan"), "run-2", persistence=store, engine="serial")
    got = crash.effects(str(tmp_path / "effects.db"))
    assert sorted(got) == ["A.execute", "B.execute", "C.execute", "D.execute"], got


async def test_a_resumed_flow_that_fails_reverts_atoms_completed_before_the_crash(
    tmp_path: Path, reset_control: Any, anyio_backend: str
) -> None:
    with start_crash(anyio_backend, "run", "linear", tmp_path, "serial", "run-3", "C.execute") as proc:
        await wait_call(proc, "hang", "C.execute")
        kill9(proc)
    reset_control["fail"] = {"D.execute"}
    store = flows.SQLiteStore(tmp_path / "flows.db")
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flows.resume(crash.build("linear"), "run-3", persistence=store)
    assert caught.value.state is flows.REVERTED
    assert [(f.task, f.operation) for f in caught.value.failures] == [("D", "execute")]
    assert crash.effects(str(tmp_path / "effects.db")) == [
        "A.execute",
        "B.execute",
        "C.execute",
        "D.revert",
        "C.revert",
        "B.revert",
        "A.revert",
    ]
    # resumed again: the ended run raises the same failure, running nothing
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flows.resume(crash.build("linear"), "run-3", persistence=flows.SQLiteStore(tmp_path / "flows.db"))
    assert len(crash.effects(str(tmp_path / "effects.db"))) == 7


async def test_sigkill_mid_revert_then_resume_reverts_each_once(
    tmp_path: Path, reset_control: Any, anyio_backend: str
) -> None:
    with start_crash(anyio_backend, "run", "linear", tmp_path, "serial", "run-4", "B.revert", "D.execute") as proc:
        await wait_call(proc, "hang", "B.revert")
        kill9(proc)
    assert crash.effects(str(tmp_path / "effects.db")) == [
        "A.execute",
        "B.execute",
        "C.execute",
        "D.revert",
        "C.revert",
    ]
    store = flows.SQLiteStore(tmp_path / "flows.db")
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flows.resume(crash.build("linear"), "run-4", persistence=store, engine="parallel")
    assert caught.value.state is flows.REVERTED
    assert crash.effects(str(tmp_path / "effects.db"))[5:] == ["B.revert", "A.revert"]


# FlowRunner --------------------------------------------------------------------------------------


class Gate(flows.Task):
    def __init__(self, gate: anyio.Event, inside: list[int]) -> None:
        super().__init__("Gate")
        self.gate = gate
        self.inside = inside

    async def execute(self) -> None:
        self.inside[0] += 1
        self.inside[1] = max(self.inside[1], self.inside[0])
        with anyio.fail_after(LIMIT):
            await self.gate.wait()
        self.inside[0] -= 1


class Fail(flows.Task):
    async def execute(self) -> None:
        raise ValueError("nope")


class UndoFails(flows.Task):
    provides = "u"

    async def execute(self) -> str:
        return "u"

    async def revert(self) -> None:
        raise RuntimeError("stuck")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"nacelle_flowrunner_{name}{{") and 'component="flows"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no nacelle_flowrunner_{name} in\n{text}")


async def test_flowrunner_bounds_concurrency_and_reports_every_outcome(tmp_path: Path) -> None:
    gate = anyio.Event()
    inside = [0, 0]
    gated = flows.linear("gated", Gate(gate, inside))
    bad = flows.linear("bad", Fail())
    worse = flows.linear("worse", UndoFails(), Fail())
    runner = FlowRunner([gated, bad, worse], engine="parallel", max_running=3)
    async with running(runner_app(runner)) as handle:
        assert handle.ops_url is not None
        ids = [await runner.submit("gated") for _ in range(7)]
        with anyio.fail_after(LIMIT):
            while inside[0] < 3:
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        async with httpx.AsyncClient() as client:
            text = (await client.get(handle.ops_url + "/metrics")).text
        assert metric(text, "running") == 3 and metric(text, "waiting") == 4
        states = sorted(str(runner.state(i)) for i in ids)
        assert states == ["PENDING"] * 4 + ["RUNNING"] * 3, states
        gate.set()
        for flow_id in ids:
            await runner.result(flow_id, timeout=LIMIT)
        b = await runner.submit("bad")
        w = await runner.submit(worse)
        with pytest.raises(flows.FlowFailed) as reverted:
            await runner.result(b, timeout=LIMIT)
        with pytest.raises(flows.FlowFailed) as failed:
            await runner.result(w, timeout=LIMIT)
        assert reverted.value.state is flows.REVERTED and failed.value.state is flows.FAILED
        stats = runner.stats()
        assert (stats.running, stats.waiting, stats.succeeded, stats.reverted, stats.failed) == (0, 0, 7, 1, 1)
        async with httpx.AsyncClient() as client:
            text = (await client.get(handle.ops_url + "/metrics")).text
        assert metric(text, "succeeded_total") == 7
        assert metric(text, "reverted_total") == 1
        assert metric(text, "failed_total") == 1
        assert metric(text, "running") == 0
    assert inside[1] == 3


async def test_flowrunner_starts_waiting_flows_in_submission_order() -> None:
    order: list[int] = []

    class Note(flows.Task):
        async def execute(self, n: int) -> None:
            order.append(n)
            await anyio.sleep(0.01)

    runner = FlowRunner([flows.linear("note", Note())], max_running=1)
    async with running(runner_app(runner)):
        ids = [await runner.submit("note", {"n": i}) for i in range(6)]
        for flow_id in ids:
            await runner.result(flow_id, timeout=LIMIT)
    assert order == list(range(6))


async def test_flowrunner_result_timeout_is_a_timeout_error() -> None:
    gate = anyio.Event()
    runner = FlowRunner([flows.linear("gated", Gate(gate, [0, 0]))])
    async with running(runner_app(runner)):
        flow_id = await runner.submit("gated")
        with anyio.fail_after(LIMIT), pytest.raises(TimeoutError):
            await runner.result(flow_id, timeout=0.2)
        gate.set()
        await runner.result(flow_id, timeout=LIMIT)


async def test_flowrunner_resumes_a_sigkilled_apps_flow_at_the_next_boot(
    tmp_path: Path, reset_control: Any, anyio_backend: str
) -> None:
    with start_crash(anyio_backend, "app", "linear", tmp_path, "serial", "order-9", "C.execute") as proc:
        await wait_call(proc, "hang", "C.execute")
        kill9(proc)
    assert crash.effects(str(tmp_path / "effects.db")) == ["A.execute", "B.execute"]
    runner = FlowRunner([crash.build("linear")], store=tmp_path / "flows.db")
    async with running(runner_app(runner, "qaapp")):
        values = await runner.result("order-9", timeout=LIMIT)
        assert values["D_out"] == "D-done"
        assert runner.stats().resumed == 1 and runner.stats().succeeded == 1
    assert crash.effects(str(tmp_path / "effects.db")) == ["A.execute", "B.execute", "C.execute", "D.execute"]
    conn = sqlite3.connect(tmp_path / "flows.db")
    try:
        assert flows.SQLiteStore(tmp_path / "flows.db").unfinished() in ([], (), set()) or not list(
            flows.SQLiteStore(tmp_path / "flows.db").unfinished()
        )
    finally:
        conn.close()


async def test_flowrunner_stop_starts_no_waiting_flow_and_the_next_start_runs_them(tmp_path: Path) -> None:
    log: list[str] = []

    class First(flows.Task):
        async def execute(self, n: int) -> None:
            log.append(f"first {n}")
            await anyio.sleep(0.2)

    class Second(flows.Task):
        async def execute(self, n: int) -> None:
            log.append(f"second {n}")

    flow = flows.linear("two", First(), Second())
    runner = FlowRunner([flow], store=tmp_path / "f.db", max_running=1)
    async with running(runner_app(runner)):
        ids = [await runner.submit("two", {"n": i}, flow_id=f"s{i}") for i in range(4)]
        with anyio.fail_after(LIMIT):
            while "first 0" not in log:
                await anyio.sleep(0.01)
    assert log == ["first 0"], log  # shutdown started no waiting flow
    again = FlowRunner([flow], store=tmp_path / "f.db", max_running=1)
    async with running(runner_app(again)):
        for flow_id in ids:
            assert await again.result(flow_id, timeout=LIMIT) == {"n": int(flow_id[1:])}
    assert sorted(log) == sorted([f"{step} {n}" for n in range(4) for step in ("first", "second")])  # each once


async def test_flowrunner_leaves_a_stored_run_of_an_unknown_flow_alone(
    tmp_path: Path, reset_control: Any, anyio_backend: str
) -> None:
    with start_crash(anyio_backend, "app", "linear", tmp_path, "serial", "order-1", "B.execute") as proc:
        await wait_call(proc, "hang", "B.execute")
        kill9(proc)
    stranger = FlowRunner([flows.linear("sum", Add())], store=tmp_path / "flows.db")
    async with running(runner_app(stranger, "qaapp")):
        assert stranger.stats().resumed == 0
    assert "order-1" in list(flows.SQLiteStore(tmp_path / "flows.db").unfinished())
    knows = FlowRunner([crash.build("linear")], store=tmp_path / "flows.db")
    async with running(runner_app(knows, "qaapp")):
        assert (await knows.result("order-1", timeout=LIMIT))["D_out"] == "D-done"
    assert crash.effects(str(tmp_path / "effects.db")) == ["A.execute", "B.execute", "C.execute", "D.execute"]


# Bad input ---------------------------------------------------------------------------------------


async def test_a_bad_engine_name_is_refused_naming_it_and_the_choices() -> None:
    ran: list[str] = []

    class T(flows.Task):
        async def execute(self) -> None:
            ran.append("t")

    with pytest.raises(Exception) as caught:
        await flows.run(flows.linear("f", T()), engine="fast")
    text = str(caught.value)
    assert "fast" in text and "serial" in text and "parallel" in text, text
    assert ran == []


async def test_worker_based_without_a_dispatcher_is_refused_clearly() -> None:
    with pytest.raises(Exception) as caught:
        await flows.run(flows.linear("f", Add()), store={"a": 1, "b": 1}, engine="worker-based")
    assert "dispatcher" in str(caught.value).lower()


@pytest.mark.parametrize("atom", [lambda x: x, "Reserve", Reserve, 42, None], ids=["fn", "str", "class", "int", "none"])
def test_non_task_atoms_are_refused_naming_them(atom: Any) -> None:
    with pytest.raises((TypeError, flows.FlowError)) as caught:
        flows.linear("f", atom)
    text = str(caught.value)
    assert "'f'" in text or "f:" in text or "flow f" in text or " f " in text, text


def test_a_task_without_execute_is_refused() -> None:
    class NoExec(flows.Task):
        pass

    with pytest.raises((TypeError, flows.FlowError)) as caught:
        flows.linear("f", NoExec())
    assert "NoExec" in str(caught.value)


def test_a_flow_name_must_be_a_string() -> None:
    with pytest.raises((TypeError, ValueError)):
        flows.linear(Add(), Add(name="b"))  # type: ignore[arg-type]


def test_an_empty_flow_name_is_refused() -> None:
    with pytest.raises((TypeError, ValueError)):
        flows.linear("", Add())


async def test_a_non_mapping_store_is_refused() -> None:
    with pytest.raises((TypeError, ValueError)):
        await flows.run(flows.linear("f", Add()), store=[("a", 1), ("b", 2)])  # type: ignore[arg-type]


async def test_a_listener_that_is_not_callable_is_refused() -> None:
    with pytest.raises((TypeError, ValueError)):
        await flows.run(flows.linear("f", Add()), store={"a": 1, "b": 2}, listeners=["nope"])  # type: ignore[list-item]


async def test_bad_concurrency_is_refused() -> None:
    with pytest.raises((TypeError, ValueError)) as caught:
        await flows.run(flows.linear("f", Add()), store={"a": 1, "b": 2}, engine="parallel", concurrency=0)
    assert "concurrency" in str(caught.value)


def test_flowrunner_bad_max_running_and_engine_are_registration_errors() -> None:
    from nacelle_py import RegistrationError

    with pytest.raises(RegistrationError, match="max_running"):
        FlowRunner(max_running=-1)
    with pytest.raises(RegistrationError, match="fast"):
        FlowRunner(engine="fast")


async def test_resume_of_an_unknown_id_is_a_lookup_error(tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="nope"):
        await flows.resume(flows.linear("f", Add()), "nope", persistence=flows.SQLiteStore(tmp_path / "x.db"))


async def test_sqlite_store_with_non_json_store_values_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises((TypeError, ValueError, flows.FlowError)):
        await flows.run(
            flows.linear("f", Add()),
            store={"a": 1, "b": 2, "odd": object()},
            persistence=flows.SQLiteStore(tmp_path / "f.db"),
        )
