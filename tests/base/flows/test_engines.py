"""The shared suite: every engine runs the same flows with the same semantics.

Each test takes ``flow_engine`` (see conftest.py) and keeps to what every
engine can carry: JSON data in stores and results, side effects in lists of
the test. Concurrency is shown with events and barriers (bounded waits),
never with timings.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog

from nacelle_py.base import flows

from ._tasks import ALWAYS, Moves, Step
from .conftest import EngineUnderTest

pytestmark = pytest.mark.anyio

LIMIT = 10  # seconds: the bound of every test that could hang


# Order ---------------------------------------------------------------------------------------------


async def test_linear_runs_in_order_and_returns_every_value(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    names = ["reserve", "charge", "pack", "ship", "notify"]
    flow = flows.linear("checkout", *(Step(n, trace, provides=f"{n}d") for n in names))
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow, store={"order_id": "o-1"})
    assert trace == [f"execute {n}" for n in names]
    assert values == {"order_id": "o-1", **{f"{n}d": f"{n}-result" for n in names}}


async def test_nested_linear_flows_keep_their_order(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear(
        "outer",
        Step("a", trace),
        flows.linear("inner", Step("b", trace), Step("c", trace)),
        flows.unordered("one", Step("d", trace)),
        Step("e", trace),
    )
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow)
    assert trace == ["execute a", "execute b", "execute c", "execute d", "execute e"]


# Concurrency -------------------------------------------------------------------------------------


class Meeting:
    """``count`` tasks meet: each arrives, then waits (bounded) until every one has arrived."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.arrived: list[str] = []
        self.all_here = anyio.Event()

    async def arrive(self, name: str) -> None:
        self.arrived.append(name)
        if len(self.arrived) == self.count:
            self.all_here.set()
        with anyio.fail_after(5):
            await self.all_here.wait()


class Meet(flows.Task):
    """Meets its siblings: ends only once all of them have started (so they overlapped)."""

    def __init__(self, name: str, meeting: Meeting) -> None:
        super().__init__(name, provides=name)
        self.meeting = meeting

    async def execute(self) -> str:
        await self.meeting.arrive(self.name)
        return self.name


class InFlight:
    """Counts the tasks running at once, and the most there ever were."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.order: list[str] = []


class Busy(flows.Task):
    """Stays running for a few turns of the loop, counted in ``flight``."""

    def __init__(self, name: str, flight: InFlight) -> None:
        super().__init__(name)
        self.flight = flight

    async def execute(self) -> None:
        self.flight.now += 1
        self.flight.most = max(self.flight.most, self.flight.now)
        self.flight.order.append(f"start {self.name}")
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        self.flight.order.append(f"end {self.name}")
        self.flight.now -= 1


async def test_unordered_tasks_overlap_on_concurrent_engines_and_not_on_serial(flow_engine: EngineUnderTest) -> None:
    if flow_engine.concurrent:
        meeting = Meeting(3)
        flow = flows.unordered("fanout", *(Meet(n, meeting) for n in ("email", "sms", "push")))
        with anyio.fail_after(LIMIT):
            values = await flow_engine.run(flow)
        assert sorted(meeting.arrived) == ["email", "push", "sms"]
        assert values == {"email": "email", "sms": "sms", "push": "push"}
    else:
        flight = InFlight()
        flow = flows.unordered("fanout", *(Busy(n, flight) for n in ("email", "sms", "push")))
        with anyio.fail_after(LIMIT):
            await flow_engine.run(flow)
        assert flight.most == 1
        assert flight.order == ["start email", "end email", "start sms", "end sms", "start push", "end push"]


class MeetOnThread(flows.Task):
    """A plain ``def`` task that waits (bounded) on a thread barrier for its sibling."""

    def __init__(self, name: str, barrier: threading.Barrier) -> None:
        super().__init__(name, provides=name)
        self.barrier = barrier

    def execute(self) -> int:  # type: ignore[override]  # a plain def task runs on a thread
        return self.barrier.wait()


async def test_plain_def_tasks_overlap_on_threads_on_concurrent_engines(flow_engine: EngineUnderTest) -> None:
    if not flow_engine.concurrent:
        pytest.skip("the serial engine runs one task at a time")
    barrier = threading.Barrier(2, timeout=5)
    flow = flows.unordered("threads", MeetOnThread("left", barrier), MeetOnThread("right", barrier))
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow)
    assert sorted([values["left"], values["right"]]) == [0, 1]


async def test_concurrency_bounds_the_tasks_running_at_once(flow_engine: EngineUnderTest) -> None:
    flight = InFlight()
    flow = flows.unordered("bounded", *(Busy(f"t{i}", flight) for i in range(6)))
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow, concurrency=2)
    assert 1 <= flight.most <= 2
    assert len(flight.order) == 12


# Graphs ------------------------------------------------------------------------------------------


async def test_graph_order_follows_the_data_not_the_writing(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.graph(
        "checkout",
        Step("ship", trace, requires=("charged",), provides="shipped"),
        Step("charge", trace, requires=("reserved",), provides="charged"),
        Step("reserve", trace, requires=("order_id",), provides="reserved"),
    )
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow, store={"order_id": "o-1"})
    assert trace == ["execute reserve", "execute charge", "execute ship"]
    assert values == {
        "order_id": "o-1",
        "reserved": "reserve-result",
        "charged": "charge-result",
        "shipped": "ship-result",
    }


async def test_graph_diamond_and_explicit_link(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    join = Step("join", trace, requires=("left", "right"))
    audit = Step("audit", trace)  # needs nothing: only the link orders it after join
    flow = flows.graph(
        "diamond",
        audit,
        join,
        Step("left", trace, requires=("root",), provides="left"),
        Step("right", trace, requires=("root",), provides="right"),
        Step("start", trace, provides="root"),
        links=[(join, "audit")],
    )
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow)
    assert trace[0] == "execute start"
    assert sorted(trace[1:3]) == ["execute left", "execute right"]
    assert trace[3:] == ["execute join", "execute audit"]


# Revert ------------------------------------------------------------------------------------------


async def test_failure_reverts_what_ran_in_reverse_including_the_failed_task(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear(
        "checkout",
        Step("reserve", trace, provides="reservation"),
        Step("charge", trace, provides="payment"),
        Step("ship", trace, fails=ALWAYS),
        Step("notify", trace),
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow, store={"order_id": "o-1"})
    assert trace == [
        "execute reserve",
        "execute charge",
        "execute ship",
        "revert ship Failure ValueError",
        "revert charge charge-result",
        "revert reserve reserve-result",
    ]
    failed = caught.value
    assert failed.state is flows.REVERTED
    assert failed.flow == "checkout"
    assert [(f.task, f.operation, f.type) for f in failed.failures] == [("ship", "execute", "ValueError")]
    assert failed.failures[0].check(ValueError)
    assert "ship.execute: ValueError: ship broke on run 1" in str(failed)
    assert failed.values["order_id"] == "o-1"


async def test_graph_reverts_in_reverse_dependency_order(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.graph(
        "g",
        Step("ship", trace, requires=("charged",), fails=ALWAYS),
        Step("charge", trace, requires=("reserved",), provides="charged"),
        Step("reserve", trace, provides="reserved"),
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flow_engine.run(flow)
    assert [t for t in trace if t.startswith("revert")] == [
        "revert ship Failure ValueError",
        "revert charge charge-result",
        "revert reserve reserve-result",
    ]


async def test_reverts_follow_the_reverse_of_completion_in_unordered_flows(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    moves = Moves()
    flow = flows.linear(
        "f",
        flows.unordered("u", Step("a", trace), Step("b", trace), Step("c", trace)),
        Step("boom", trace, fails=ALWAYS),
        Step("never", trace),
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flow_engine.run(flow, listeners=[moves])
    reverted = [t.split()[1] for t in trace if t.startswith("revert")]
    assert reverted == list(reversed(moves.completed()))
    assert reverted[0] == "boom" and sorted(reverted[1:]) == ["a", "b", "c"]
    assert "execute never" not in trace


class Hold(flows.Task):
    """Waits (bounded) until ``go`` is set, then succeeds: still running when its sibling fails."""

    def __init__(self, name: str, trace: list[str], go: anyio.Event) -> None:
        super().__init__(name)
        self.trace = trace
        self.go = go

    async def execute(self) -> None:
        self.trace.append(f"execute {self.name}")
        with anyio.fail_after(5):
            await self.go.wait()
        self.trace.append(f"done {self.name}")

    async def revert(self) -> None:
        self.trace.append(f"revert {self.name}")


class FailAndRelease(flows.Task):
    """Fails, and lets its sibling finish only once the failure is on its way."""

    def __init__(self, name: str, trace: list[str], go: anyio.Event) -> None:
        super().__init__(name)
        self.trace = trace
        self.go = go

    async def execute(self) -> None:
        self.trace.append(f"execute {self.name}")
        self.go.set()
        raise ValueError("no stock")

    async def revert(self, result: flows.Failure) -> None:
        self.trace.append(f"revert {self.name} {result.type}")


async def test_a_failure_lets_running_siblings_finish_then_reverts_them_too(flow_engine: EngineUnderTest) -> None:
    if not flow_engine.concurrent:
        pytest.skip("needs two tasks running at once")
    trace: list[str] = []
    go = anyio.Event()
    flow = flows.linear(
        "f",
        flows.unordered("u", Hold("slow", trace, go), FailAndRelease("fail", trace, go)),
        Step("after", trace),
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert "done slow" in trace and "revert slow" in trace and "revert fail ValueError" in trace
    assert "execute after" not in trace
    if flow_engine.name != "worker-based":
        # slow completed last. (The worker-based engine orders by when the orchestrator learns of each
        # outcome: two that end within milliseconds of each other in the workers may be seen either way.)
        assert trace.index("revert slow") < trace.index("revert fail ValueError")
    assert caught.value.state is flows.REVERTED


async def test_tasks_that_never_ran_are_not_reverted(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.graph(
        "g",
        Step("first", trace, fails=ALWAYS, provides="x"),
        Step("second", trace, requires=("x",), provides="y"),
        Step("third", trace, requires=("y",)),
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flow_engine.run(flow)
    assert trace == ["execute first", "revert first Failure ValueError"]


async def test_a_raising_revert_stops_the_reverts_and_the_flow_ends_failed(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear(
        "checkout",
        Step("reserve", trace),
        Step("charge", trace, revert_fails=True),
        Step("ship", trace),
        Step("notify", trace, fails=ALWAYS),
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert trace[-3:] == ["revert notify Failure ValueError", "revert ship ship-result", "revert charge charge-result"]
    assert "revert reserve reserve-result" not in trace
    failed = caught.value
    assert failed.state is flows.FAILED
    assert [(f.task, f.operation, f.type) for f in failed.failures] == [
        ("notify", "execute", "ValueError"),
        ("charge", "revert", "RuntimeError"),
    ]
    text = str(failed)
    assert "notify.execute: ValueError: notify broke on run 1" in text
    assert "charge.revert: RuntimeError: charge cannot be undone" in text


# Retry -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 3])
async def test_times_n_means_n_attempts_in_all(flow_engine: EngineUnderTest, attempts: int) -> None:
    trace: list[str] = []
    flaky = Step("flaky", trace, fails=ALWAYS)
    flow = flows.linear("f", Step("before", trace), flows.linear("sub", flaky, retry=flows.Times(attempts)))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert flaky.runs() == attempts
    assert trace.count("revert flaky Failure ValueError") == attempts
    assert trace[-1] == "revert before before-result"
    assert caught.value.state is flows.REVERTED


async def test_a_retry_that_succeeds_keeps_what_ran_before_the_subflow(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flaky = Step("flaky", trace, fails=2, provides="got")
    before = Step("before", trace)
    flow = flows.linear("f", before, flows.unordered("sub", flaky, retry=flows.Times(3, provides="attempt")))
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow)
    assert flaky.runs() == 3 and before.runs() == 1
    assert values["got"] == "flaky-result"
    assert values["attempt"] == 3
    assert "revert before before-result" not in trace


async def test_retry_provides_the_attempt_number(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flaky = Step("flaky", trace, fails=2, requires=("attempt",), show=("attempt",))
    flow = flows.graph("f", flaky, retry=flows.Times(3, provides="attempt"))
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow)
    assert [t for t in trace if t.startswith("execute")] == [
        "execute flaky attempt=1",
        "execute flaky attempt=2",
        "execute flaky attempt=3",
    ]


def nested(trace: list[str], inner: flows.Retry, outer: flows.Retry) -> tuple[flows.Flow, Step, Step, Step]:
    first, second, broken = Step("first", trace), Step("second", trace), Step("broken", trace, fails=ALWAYS)
    flow = flows.linear(
        "root",
        flows.linear("outer", first, flows.linear("inner", second, broken, retry=inner), retry=outer),
        Step("last", trace),
    )
    return flow, first, second, broken


async def test_revert_passes_the_failure_to_the_enclosing_controller(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow, first, second, broken = nested(trace, flows.Times(2), flows.Times(2))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    # inner: 2 attempts, then REVERT to outer; outer retries once: 2 more inner attempts.
    assert (first.runs(), second.runs(), broken.runs()) == (2, 4, 4)
    assert trace.count("revert first first-result") == 2
    assert caught.value.state is flows.REVERTED
    assert "execute last" not in trace


async def test_a_nested_controller_starts_over_with_each_outer_attempt(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    broken = Step("broken", trace, fails=3, requires=("inner_try", "outer_try"), show=("outer_try", "inner_try"))
    flow = flows.linear(
        "root",
        flows.linear(
            "outer",
            flows.linear("inner", broken, retry=flows.Times(2, provides="inner_try")),
            retry=flows.Times(2, provides="outer_try"),
        ),
    )
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow)
    assert [t for t in trace if t.startswith("execute")] == [
        "execute broken outer_try=1 inner_try=1",
        "execute broken outer_try=1 inner_try=2",
        "execute broken outer_try=2 inner_try=1",
        "execute broken outer_try=2 inner_try=2",
    ]
    assert (values["outer_try"], values["inner_try"]) == (2, 2)


async def test_revert_all_skips_the_enclosing_controllers(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow, first, second, broken = nested(trace, flows.Times(2, revert_all=True), flows.Times(5))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert (first.runs(), second.runs(), broken.runs()) == (1, 2, 2)
    assert trace[-1] == "revert first first-result"
    assert caught.value.state is flows.REVERTED


class UntilPermanent(flows.Retry):
    """Retries while the failure says "transient"; reverts the whole flow on anything else."""

    def __init__(self, seen: list[list[Any]]) -> None:
        super().__init__(name="judge")
        self.seen = seen

    def on_failure(self, failures: flows.Failures, attempt: int) -> flows.Decision:
        message = failures["picky"].message
        decision = flows.RETRY if "transient" in message else flows.REVERT_ALL
        self.seen.append([attempt, sorted(failures), message, str(decision)])
        return decision


class Picky(flows.Task):
    """Fails with "transient" twice, then with "permanent"."""

    def __init__(self, runs: list[int]) -> None:
        super().__init__("picky")
        self.runs = runs

    async def execute(self) -> None:
        self.runs.append(len(self.runs) + 1)
        raise ConnectionError("transient" if len(self.runs) <= 2 else "permanent")


async def test_a_custom_controller_decides_from_the_failures(flow_engine: EngineUnderTest) -> None:
    seen: list[list[Any]] = []
    runs: list[int] = []
    trace: list[str] = []
    flow = flows.linear(
        "f",
        flows.linear(
            "outer",
            Step("first", trace),
            flows.linear("inner", Picky(runs), retry=UntilPermanent(seen)),
            retry=flows.Times(3),
        ),
    )
    moves = Moves()
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow, listeners=[moves])
    assert runs == [1, 2, 3]
    assert seen == [
        [1, ["picky"], "transient", "RETRY"],
        [2, ["picky"], "transient", "RETRY"],
        [3, ["picky"], "permanent", "REVERT_ALL"],
    ]
    assert trace == ["execute first", "revert first first-result"]  # the outer Times(3) was skipped
    assert caught.value.state is flows.REVERTED
    assert "judge" in {t.atom for t in moves.seen}  # the controller's own name


class Connect(flows.Task):
    provides = "connection"

    def __init__(self, tried: list[str], good: str) -> None:
        super().__init__()
        self.tried = tried
        self.good = good

    async def execute(self, server: str) -> str:
        self.tried.append(server)
        if server != self.good:
            raise ConnectionRefusedError(f"{server} refused")
        return f"connected to {server}"


async def test_for_each_tries_each_value_until_one_works(flow_engine: EngineUnderTest) -> None:
    tried: list[str] = []
    flow = flows.linear(
        "f", flows.linear("connect", Connect(tried, "b"), retry=flows.ForEach(["a", "b", "c"], provides="server"))
    )
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow)
    assert tried == ["a", "b"]
    assert values["server"] == "b"
    assert values["connection"] == "connected to b"


async def test_for_each_reverts_when_every_value_failed(flow_engine: EngineUnderTest) -> None:
    tried: list[str] = []
    flow = flows.linear(
        "f", flows.linear("connect", Connect(tried, "z"), retry=flows.ForEach(["a", "b", "c"], provides="server"))
    )
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert tried == ["a", "b", "c"]
    assert caught.value.state is flows.REVERTED
    assert caught.value.failures[-1].check(ConnectionRefusedError)


async def test_backoff_is_asked_with_the_failed_attempts_and_waited(flow_engine: EngineUnderTest) -> None:
    asked: list[int] = []

    def backoff(failed: int) -> float:
        asked.append(failed)
        return 0.05

    trace: list[str] = []
    moves = Moves()
    flow = flows.linear("f", flows.linear("sub", Step("flaky", trace, fails=2), retry=flows.Times(3, backoff=backoff)))
    with anyio.fail_after(LIMIT):
        started = anyio.current_time()
        await flow_engine.run(flow, listeners=[moves])
        took = anyio.current_time() - started
    assert asked == [1, 2]
    assert took >= 0.1  # two waits of 0.05 s (a lower bound: sleeps never end early)
    assert moves.of(None).count("RETRYING") == 2
    assert moves.of("sub.retry") == ["PENDING", "RUNNING", "RETRYING", "RUNNING", "RETRYING", "RUNNING", "SUCCESS"]


async def test_backoff_first_and_cap(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear("sub", Step("flaky", trace, fails=3), retry=flows.Times(4, backoff=(0.01, 0.02)))
    with anyio.fail_after(LIMIT):
        started = anyio.current_time()
        await flow_engine.run(flow)
        took = anyio.current_time() - started
    assert trace.count("execute flaky") == 4
    assert took >= 0.01 + 0.02 + 0.02  # 0.01, then doubled, then capped


# Timeouts ----------------------------------------------------------------------------------------


class Hang(flows.Task):
    timeout = 0.05

    async def execute(self) -> None:
        await anyio.sleep(60)


class HangOnThread(flows.Task):
    def __init__(self, release: threading.Event) -> None:
        super().__init__(timeout=0.05)
        self.release = release

    def execute(self) -> None:  # type: ignore[override]  # a plain def task runs on a thread
        self.release.wait(30)


async def test_an_async_task_past_its_timeout_fails_with_timeout_error(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear("f", Step("before", trace), Hang())
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    failure = caught.value.failures[0]
    assert (failure.task, failure.operation, failure.type) == ("Hang", "execute", "TimeoutError")
    assert "0.05" in failure.message
    assert trace == ["execute before", "revert before before-result"]


async def test_a_plain_def_task_past_its_timeout_fails_with_timeout_error(flow_engine: EngineUnderTest) -> None:
    release = threading.Event()
    try:
        with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
            await flow_engine.run(flows.linear("f", HangOnThread(release)))
    finally:
        release.set()  # the abandoned thread ends now
    assert caught.value.failures[0].type == "TimeoutError"
    assert caught.value.state is flows.REVERTED


class SlowUndo(flows.Task):
    timeout = 0.05

    async def execute(self) -> str:
        return "done"

    async def revert(self) -> None:
        await anyio.sleep(60)


async def test_a_revert_past_its_timeout_fails_the_flow(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear("f", SlowUndo(), Step("boom", trace, fails=ALWAYS))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert caught.value.state is flows.FAILED
    assert [(f.task, f.operation, f.type) for f in caught.value.failures] == [
        ("boom", "execute", "ValueError"),
        ("SlowUndo", "revert", "TimeoutError"),
    ]


# Suspend and resume ------------------------------------------------------------------------------


async def test_suspend_from_a_listener_then_run_again(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    steps = [Step(n, trace, provides=n) for n in ("a", "b", "c", "d")]
    engine = await flow_engine.load(flows.linear("f", *steps))

    def pause_after_b(event: flows.Transition) -> None:
        if event.atom == "b" and event.new is flows.SUCCESS:
            engine.suspend()

    engine.listen(pause_after_b)
    with anyio.fail_after(LIMIT):
        with pytest.raises(flows.FlowSuspended) as caught:
            await engine.run()
        assert caught.value.flow_id == engine.flow_id
        assert engine.state is flows.SUSPENDED
        assert engine.atom_states == {"a": "SUCCESS", "b": "SUCCESS", "c": "PENDING", "d": "PENDING"}
        assert trace == ["execute a", "execute b"]
        values = await engine.run()
    assert trace == ["execute a", "execute b", "execute c", "execute d"]
    assert values == {n: f"{n}-result" for n in "abcd"}
    assert engine.state is flows.SUCCESS


class SuspendsItsFlow(flows.Task):
    """Asks the run it is part of (``holder[0]``) to suspend, and succeeds."""

    def __init__(self, holder: list[flows.FlowEngine]) -> None:
        super().__init__("pause")
        self.holder = holder

    async def execute(self) -> str:
        self.holder[0].suspend()
        return "paused"


async def test_suspend_from_a_task(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    holder: list[flows.FlowEngine] = []
    flow = flows.linear("f", Step("a", trace), SuspendsItsFlow(holder), Step("b", trace))
    engine = await flow_engine.load(flow)
    holder.append(engine)
    with anyio.fail_after(LIMIT):
        with pytest.raises(flows.FlowSuspended):
            await engine.run()
        assert trace == ["execute a"]
        assert engine.atom_states["pause"] is flows.SUCCESS
        await engine.run()
    assert trace == ["execute a", "execute b"]


async def test_suspend_lets_running_siblings_finish(flow_engine: EngineUnderTest) -> None:
    if not flow_engine.concurrent:
        pytest.skip("needs two tasks running at once")
    trace: list[str] = []
    holder: list[flows.FlowEngine] = []
    meeting = Meeting(2)
    flow = flows.linear(
        "f",
        flows.unordered("u", Meet("left", meeting), flows.linear("l", Meet("right", meeting), SuspendsItsFlow(holder))),
        Step("after", trace),
    )
    engine = await flow_engine.load(flow)
    holder.append(engine)
    with anyio.fail_after(LIMIT):
        with pytest.raises(flows.FlowSuspended):
            await engine.run()
        assert engine.atom_states["left"] is flows.SUCCESS
        assert trace == []
        await engine.run()
    assert trace == ["execute after"]


# Task shapes -------------------------------------------------------------------------------------


class Add(flows.Task):
    """A plain def task (on a thread) with a plain def revert."""

    provides = "total"

    def __init__(self, undone: list[int], **options: Any) -> None:
        super().__init__(**options)
        self.undone = undone

    def execute(self, a: int, b: int) -> int:  # type: ignore[override]  # plain def: run on a thread
        return a + b

    def revert(self, result: int, a: int) -> None:  # type: ignore[override]
        self.undone.append(result - a)


async def test_plain_def_tasks_execute_and_revert(flow_engine: EngineUnderTest) -> None:
    undone: list[int] = []
    trace: list[str] = []
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flows.linear("f", Add(undone)), store={"a": 2, "b": 3})
        assert values["total"] == 5
        with pytest.raises(flows.FlowFailed):
            await flow_engine.run(
                flows.linear("f", Add(undone), Step("boom", trace, fails=ALWAYS)), store={"a": 2, "b": 3}
            )
    assert undone == [3]


class Split(flows.Task):
    provides = ("first", "rest")

    async def execute(self, text: str) -> list[Any]:
        head, _, tail = text.partition(" ")
        return [head, tail]


class Join(flows.Task):
    provides = "joined"

    async def execute(self, first: str, rest: str) -> str:
        return f"{rest} {first}"


async def test_multiple_provides_unpack_the_result(flow_engine: EngineUnderTest) -> None:
    flow = flows.linear("f", Split(), Join())
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow, store={"text": "hello big world"})
    assert values == {"text": "hello big world", "first": "hello", "rest": "big world", "joined": "big world hello"}


class BadSplit(flows.Task):
    provides = ("first", "rest")

    async def execute(self) -> list[str]:
        return ["only one"]


async def test_a_result_that_does_not_unpack_is_the_tasks_failure(flow_engine: EngineUnderTest) -> None:
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flows.linear("f", BadSplit()))
    failure = caught.value.failures[0]
    assert (failure.task, failure.type) == ("BadSplit", "TypeError")
    assert "('first', 'rest')" in failure.message


class Greet(flows.Task):
    provides = "greeting"

    async def execute(self, name: str, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"


class Punctuate(flows.Task):
    provides = "punctuation"

    async def execute(self) -> str:
        return "?"


async def test_optional_requirements_take_the_value_when_there_is_one(flow_engine: EngineUnderTest) -> None:
    with anyio.fail_after(LIMIT):
        plain = await flow_engine.run(flows.linear("f", Greet()), store={"name": "ann"})
        given = await flow_engine.run(flows.linear("f", Greet()), store={"name": "ann", "punctuation": "."})
        provided = await flow_engine.run(flows.linear("f", Punctuate(), Greet()), store={"name": "ann"})
    assert plain["greeting"] == "hello ann!"
    assert given["greeting"] == "hello ann."
    assert provided["greeting"] == "hello ann?"


class GreetRest(flows.Task):
    """An optional requirement beside ``**kwargs``: its default stands when the flow lacks it."""

    provides = "greeting"

    async def execute(self, name: str, punctuation: str = "!", **rest: Any) -> str:
        return f"hello {name}{punctuation}"


async def test_an_optional_requirement_keeps_its_default_beside_kwargs(flow_engine: EngineUnderTest) -> None:
    with anyio.fail_after(LIMIT):
        plain = await flow_engine.run(flows.linear("f", GreetRest()), store={"name": "ann"})
        given = await flow_engine.run(flows.linear("f", GreetRest()), store={"name": "ann", "punctuation": "."})
    assert (plain["greeting"], given["greeting"]) == ("hello ann!", "hello ann.")


class Remember(flows.Task):
    """Takes every requirement through ``**kwargs`` (rebind and requires=)."""

    def __init__(self, seen: list[dict[str, Any]], **options: Any) -> None:
        super().__init__(**options)
        self.seen = seen

    async def execute(self, name: str, **rest: Any) -> str:
        self.seen.append({"name": name, **rest})
        return name.upper()


async def test_rebind_reads_a_parameter_from_another_value(flow_engine: EngineUnderTest) -> None:
    seen: list[dict[str, Any]] = []
    flow = flows.linear(
        "f",
        Greet(rebind={"name": "customer"}),
        Remember(seen, name="r", rebind={"name": "greeting"}, requires=("order_id",), provides="shout"),
    )
    with anyio.fail_after(LIMIT):
        values = await flow_engine.run(flow, store={"customer": "bob", "order_id": "o-7"})
    assert values["greeting"] == "hello bob!"
    assert values["shout"] == "HELLO BOB!"
    assert seen == [{"name": "hello bob!", "order_id": "o-7"}]


# Listeners ---------------------------------------------------------------------------------------


async def test_listeners_see_every_transition_in_order(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    moves = Moves()
    flow = flows.linear("f", Step("a", trace, provides="x"), Step("b", trace))
    engine = await flow_engine.load(flow, listeners=[moves], flow_id="run-1")
    with anyio.fail_after(LIMIT):
        await engine.run()
    assert [(t.atom, str(t.old), str(t.new)) for t in moves.seen] == [
        (None, "PENDING", "RUNNING"),
        ("a", "PENDING", "RUNNING"),
        ("a", "RUNNING", "SUCCESS"),
        ("b", "PENDING", "RUNNING"),
        ("b", "RUNNING", "SUCCESS"),
        (None, "RUNNING", "SUCCESS"),
    ]
    assert {(t.flow, t.flow_id) for t in moves.seen} == {("f", "run-1")}
    assert moves.seen[2].result == "a-result"
    assert str(moves.seen[2]) == "f/a: RUNNING -> SUCCESS"


async def test_every_atoms_transitions_chain_and_end_in_its_final_state(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    moves = Moves()
    flow = flows.linear(
        "f",
        flows.unordered("u", Step("a", trace), Step("b", trace)),
        flows.linear("sub", Step("flaky", trace, fails=1), retry=flows.Times(2)),
        Step("boom", trace, fails=ALWAYS),
    )
    engine = await flow_engine.load(flow, listeners=[moves])
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await engine.run()
    last: dict[str | None, str] = {}
    for t in moves.seen:
        assert last.get(t.atom, "PENDING") == t.old, f"{t} does not follow {last.get(t.atom)}"
        last[t.atom] = str(t.new)
    assert last.pop(None) == engine.state
    assert last == dict(engine.atom_states)
    failures = [t.failure for t in moves.seen if t.failure is not None]
    assert [(f.task, f.operation) for f in failures] == [("flaky", "execute"), ("boom", "execute")]


async def test_a_raising_listener_is_logged_and_ignored(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    moves = Moves()

    def broken(event: flows.Transition) -> None:
        raise RuntimeError("listener bug")

    with structlog.testing.capture_logs() as logs:
        with anyio.fail_after(LIMIT):
            values = await flow_engine.run(flows.linear("f", Step("a", trace, provides="x")), listeners=[broken, moves])
    assert values == {"x": "a-result"}
    assert len(moves.seen) == 4  # the listener after the broken one heard everything
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 4
    assert "broken" in warnings[0]["listener"]
    assert warnings[0]["error"] == "RuntimeError: listener bug"
    assert warnings[0]["flow"] == "f"


# Persistence -------------------------------------------------------------------------------------


async def test_sqlite_records_every_state_and_an_ended_run_resumes_as_it_ended(
    flow_engine: EngineUnderTest, tmp_path: Path
) -> None:
    trace: list[str] = []
    store = flows.SQLiteStore(tmp_path / "flows.db")
    flow = flows.linear("f", Step("a", trace, provides="x"), Step("b", trace, provides="y"))
    try:
        with anyio.fail_after(LIMIT):
            values = await flow_engine.run(flow, store={"order": {"id": 1}}, persistence=store, flow_id="ok")
            assert store.states("ok") == {"a": "SUCCESS", "b": "SUCCESS", "flow": "SUCCESS"}
            assert store.unfinished() == []
            again = await flow_engine.resume(flow, "ok", persistence=store)
        assert again == values == {"order": {"id": 1}, "x": "a-result", "y": "b-result"}
        assert trace == ["execute a", "execute b"]  # nothing ran again
    finally:
        store.close()


async def test_sqlite_a_failed_run_resumes_to_the_same_failure(flow_engine: EngineUnderTest, tmp_path: Path) -> None:
    trace: list[str] = []
    path = tmp_path / "flows.db"
    store = flows.SQLiteStore(path)
    flow = flows.linear("f", Step("a", trace, revert_fails=True), Step("b", trace, fails=ALWAYS))
    try:
        with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as first:
            await flow_engine.run(flow, persistence=store, flow_id="bad")
        assert store.states("bad") == {"a": "FAILURE", "b": "REVERTED", "flow": "FAILURE"}
    finally:
        store.close()
    reopened = flows.SQLiteStore(path)
    try:
        with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as again:
            await flow_engine.resume(flow, "bad", persistence=reopened)
    finally:
        reopened.close()
    assert again.value.state is flows.FAILED
    assert str(again.value) == str(first.value)
    assert [f.check(RuntimeError) for f in again.value.failures] == [False, True]
    assert trace.count("execute a") == 1


async def test_sqlite_resume_of_a_suspended_run_with_a_new_engine(flow_engine: EngineUnderTest, tmp_path: Path) -> None:
    trace: list[str] = []
    path = tmp_path / "flows.db"
    flow = flows.linear("f", *(Step(n, trace, provides=n) for n in ("a", "b", "c")))
    store = flows.SQLiteStore(path)
    try:
        engine = await flow_engine.load(flow, store={"order_id": "o-1"}, persistence=store, flow_id="paused")
        engine.listen(lambda t: engine.suspend() if t.atom == "a" and t.new is flows.SUCCESS else None)
        with anyio.fail_after(LIMIT), pytest.raises(flows.FlowSuspended):
            await engine.run()
        assert store.unfinished() == ["paused"]
        assert store.unfinished("f") == ["paused"] and store.unfinished("other") == []
        assert store.states("paused") == {"a": "SUCCESS", "flow": "SUSPENDED"}
    finally:
        store.close()
    reopened = flows.SQLiteStore(path)
    try:
        with anyio.fail_after(LIMIT):
            values = await flow_engine.resume(flow, "paused", persistence=reopened)
        assert reopened.states("paused") == {"a": "SUCCESS", "b": "SUCCESS", "c": "SUCCESS", "flow": "SUCCESS"}
        assert reopened.unfinished() == []
    finally:
        reopened.close()
    assert trace == ["execute a", "execute b", "execute c"]
    assert values == {"order_id": "o-1", "a": "a-result", "b": "b-result", "c": "c-result"}


class Unstorable(flows.Task):
    async def execute(self) -> object:
        return object()


async def test_sqlite_refuses_a_result_that_is_not_json_as_the_tasks_failure(
    flow_engine: EngineUnderTest, tmp_path: Path
) -> None:
    store = flows.SQLiteStore(tmp_path / "flows.db")
    try:
        with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
            await flow_engine.run(flows.linear("f", Unstorable()), persistence=store)
    finally:
        store.close()
    failure = caught.value.failures[0]
    assert (failure.task, failure.type) == ("Unstorable", "TypeError")
    assert "JSON" in failure.message


# More shapes ---------------------------------------------------------------------------------------


async def test_a_graph_orders_whole_subflows_by_their_data(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.graph(
        "g",
        flows.linear("use", Step("consume", trace, requires=("made",))),
        flows.linear("make", Step("prepare", trace, provides="ready"), Step("build", trace, provides="made")),
    )
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow)
    assert trace == ["execute prepare", "execute build", "execute consume"]


class SeesFailures(flows.Task):
    def __init__(self, seen: list[dict[str, str]]) -> None:
        super().__init__("watcher")
        self.seen = seen

    async def execute(self) -> str:
        return "ok"

    async def revert(self, failures: flows.Failures, result: str) -> None:
        self.seen.append({name: str(failure) for name, failure in failures.items()} | {"result": result})


async def test_revert_gets_the_failures_so_far(flow_engine: EngineUnderTest) -> None:
    seen: list[dict[str, str]] = []
    flow = flows.linear("f", SeesFailures(seen), Step("boom", [], fails=ALWAYS))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await flow_engine.run(flow)
    assert seen == [{"boom": "boom.execute: ValueError: boom broke on run 1", "result": "ok"}]


async def test_two_retry_scopes_failing_together_both_retry(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    left, right = Step("left", trace, fails=1), Step("right", trace, fails=1)
    flow = flows.unordered(
        "u",
        flows.linear("l", left, retry=flows.Times(2)),
        flows.linear("r", right, retry=flows.Times(2)),
    )
    with anyio.fail_after(LIMIT):
        await flow_engine.run(flow)
    assert (left.runs(), right.runs()) == (2, 2)


async def test_suspend_during_a_backoff_then_resume(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flaky = Step("flaky", trace, fails=1)
    flow = flows.linear("f", flows.linear("sub", flaky, retry=flows.Times(2, backoff=0.01)), Step("after", trace))
    engine = await flow_engine.load(flow)
    engine.listen(lambda t: engine.suspend() if t.atom is None and t.new is flows.RETRYING else None)
    with anyio.fail_after(LIMIT):
        with pytest.raises(flows.FlowSuspended):
            await engine.run()
        assert flaky.runs() == 1
        await engine.run()
    assert trace[-2:] == ["execute flaky", "execute after"]
    assert flaky.runs() == 2


class Gate(flows.Task):
    """Waits for ``open`` (bounded), counting its starts."""

    def __init__(self, starts: list[int], open_: anyio.Event) -> None:
        super().__init__("gate", provides="gate")
        self.starts = starts
        self.open = open_

    async def execute(self) -> str:
        self.starts.append(1)
        with anyio.fail_after(5):
            await self.open.wait()
        return "opened"


async def test_a_run_cancelled_from_outside_runs_again_from_where_it_was(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    starts: list[int] = []
    open_ = anyio.Event()
    flow = flows.linear("f", Step("a", trace), Gate(starts, open_), Step("b", trace))
    engine = await flow_engine.load(flow)
    with anyio.fail_after(LIMIT):
        with anyio.move_on_after(0.05):
            await engine.run()
        assert starts == [1] and trace == ["execute a"]
        open_.set()
        values = await engine.run()
    assert values["gate"] == "opened"
    assert starts == [1, 1] and trace == ["execute a", "execute b"]


async def test_sqlite_resume_of_a_run_suspended_between_for_each_attempts(
    flow_engine: EngineUnderTest, tmp_path: Path
) -> None:
    tried: list[str] = []
    trace: list[str] = []
    path = tmp_path / "flows.db"

    def build() -> flows.Flow:
        return flows.linear(
            "f",
            Step("first", trace),
            flows.linear("connect", Connect(tried, "c"), retry=flows.ForEach(["a", "b", "c"], provides="server")),
            Step("last", trace, requires=("connection",), show=("connection",)),
        )

    store = flows.SQLiteStore(path)
    try:
        engine = await flow_engine.load(build(), persistence=store, flow_id="fe")
        engine.listen(lambda t: engine.suspend() if t.atom is None and t.new is flows.RETRYING else None)
        with anyio.fail_after(LIMIT), pytest.raises(flows.FlowSuspended):
            await engine.run()
        assert tried == ["a"]
    finally:
        store.close()
    reopened = flows.SQLiteStore(path)
    try:
        with anyio.fail_after(LIMIT):
            values = await flow_engine.resume(build(), "fe", persistence=reopened)
        assert reopened.states("fe")["flow"] == "SUCCESS"
    finally:
        reopened.close()
    assert tried == ["a", "b", "c"]
    assert trace == ["execute first", "execute last connection='connected to c'"]
    assert values["server"] == "c"


class Broken(flows.Retry):
    def on_failure(self, failures: flows.Failures, attempt: int) -> flows.Decision:
        raise KeyError("bug in the controller")


async def test_a_raising_controller_is_logged_and_its_failure_goes_outward(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flaky = Step("flaky", trace, fails=1)
    flow = flows.linear("f", flows.linear("outer", flows.linear("inner", flaky, retry=Broken()), retry=flows.Times(2)))
    with structlog.testing.capture_logs() as logs:
        with anyio.fail_after(LIMIT):
            await flow_engine.run(flow)
    assert flaky.runs() == 2  # the outer controller retried
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["controller"], e["error"]) for e in errors] == [("inner.retry", "KeyError: 'bug in the controller'")]


class PlainUndoFails(flows.Task):
    def execute(self) -> str:  # type: ignore[override]  # plain def: run on a thread
        return "done"

    def revert(self) -> None:  # type: ignore[override]
        raise OSError("disk gone")


async def test_a_plain_def_revert_that_raises_fails_the_flow(flow_engine: EngineUnderTest) -> None:
    flow = flows.linear("f", PlainUndoFails(), Step("boom", [], fails=ALWAYS))
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed) as caught:
        await flow_engine.run(flow)
    assert caught.value.state is flows.FAILED
    assert "PlainUndoFails.revert: OSError: disk gone" in str(caught.value)
