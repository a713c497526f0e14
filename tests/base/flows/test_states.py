"""The states of flows and atoms: the transition tables, and the sequences each outcome goes through.

Every sequence is read from a listener (every transition, in order) and
checked against the tables, so a history no table allows fails here even
when the flow's outcome looks right.
"""

from __future__ import annotations

import anyio
import pytest

from nacelle_py.base import flows
from nacelle_py.base._flows._states import ATOM_MOVES, FLOW_MOVES, IllegalMove, check

from ._tasks import ALWAYS, Moves, Step
from .conftest import EngineUnderTest

pytestmark = pytest.mark.anyio

S = flows.State
LIMIT = 10


# The tables --------------------------------------------------------------------------------------


def test_the_public_state_names() -> None:
    assert flows.FAILED is flows.FAILURE is S.FAILURE
    assert [str(s) for s in S] == [
        "PENDING",
        "RUNNING",
        "SUCCESS",
        "FAILURE",
        "REVERTING",
        "REVERTED",
        "RETRYING",
        "SUSPENDED",
    ]
    for name in ("PENDING", "RUNNING", "SUCCESS", "REVERTING", "REVERTED", "RETRYING", "SUSPENDED"):
        assert getattr(flows, name) is getattr(S, name)


def test_every_state_has_a_row_in_both_tables() -> None:
    assert set(ATOM_MOVES) == set(FLOW_MOVES) == set(S)
    for table in (ATOM_MOVES, FLOW_MOVES):
        assert all(set(moves) <= set(S) for moves in table.values())


def test_a_flows_ends_have_no_way_out() -> None:
    for end in (S.SUCCESS, S.REVERTED, S.FAILURE):
        assert FLOW_MOVES[end] == frozenset()


@pytest.mark.parametrize(
    ("table", "old", "new"),
    [
        (ATOM_MOVES, S.PENDING, S.SUCCESS),  # never ran
        (ATOM_MOVES, S.PENDING, S.REVERTING),  # nothing to revert
        (ATOM_MOVES, S.SUCCESS, S.RUNNING),  # a success is reverted before it runs again
        (ATOM_MOVES, S.SUCCESS, S.PENDING),
        (ATOM_MOVES, S.REVERTED, S.RUNNING),
        (ATOM_MOVES, S.FAILURE, S.RUNNING),
        (ATOM_MOVES, S.SUSPENDED, S.RUNNING),  # atoms are never suspended, only flows
        (FLOW_MOVES, S.PENDING, S.SUCCESS),
        (FLOW_MOVES, S.SUCCESS, S.RUNNING),
        (FLOW_MOVES, S.REVERTED, S.RUNNING),
        (FLOW_MOVES, S.FAILURE, S.REVERTING),
        (FLOW_MOVES, S.RUNNING, S.REVERTED),  # a flow reverts through REVERTING
        (FLOW_MOVES, S.SUSPENDED, S.SUCCESS),
    ],
)
def test_illegal_moves_are_rejected(table: dict[S, frozenset[S]], old: S, new: S) -> None:
    with pytest.raises(IllegalMove, match=f"thing: {old} -> {new} is not a legal move"):
        check(table, "thing", old, new)


def test_legal_moves_pass() -> None:
    for table in (ATOM_MOVES, FLOW_MOVES):
        for old, moves in table.items():
            for new in moves:
                check(table, "thing", old, new)


# The sequences -----------------------------------------------------------------------------------


def assert_legal(moves: Moves) -> None:
    """Every transition is allowed by its table and starts where the last one of its atom ended."""
    last: dict[str | None, S] = {}
    for t in moves.seen:
        assert last.get(t.atom, S.PENDING) is t.old, f"{t} does not follow {last.get(t.atom)}"
        check(FLOW_MOVES if t.atom is None else ATOM_MOVES, str(t), t.old, t.new)
        last[t.atom] = t.new


async def test_success(flow_engine: EngineUnderTest) -> None:
    moves = Moves()
    engine = await flow_engine.load(flows.linear("f", Step("a", []), Step("b", [])), listeners=[moves])
    before = engine.state  # (read once: mypy would narrow engine.state for the check below)
    assert before is S.PENDING
    assert engine.atom_states == {"a": S.PENDING, "b": S.PENDING}
    with anyio.fail_after(LIMIT):
        await engine.run()
    assert_legal(moves)
    assert moves.of(None) == ["PENDING", "RUNNING", "SUCCESS"]
    assert moves.of("a") == moves.of("b") == ["PENDING", "RUNNING", "SUCCESS"]
    assert engine.state is S.SUCCESS
    assert engine.atom_states == {"a": S.SUCCESS, "b": S.SUCCESS}


async def test_revert(flow_engine: EngineUnderTest) -> None:
    moves = Moves()
    trace: list[str] = []
    flow = flows.linear("f", Step("a", trace), Step("b", trace, fails=ALWAYS), Step("c", trace))
    engine = await flow_engine.load(flow, listeners=[moves])
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await engine.run()
    assert_legal(moves)
    assert moves.of(None) == ["PENDING", "RUNNING", "REVERTING", "REVERTED"]
    assert moves.of("a") == ["PENDING", "RUNNING", "SUCCESS", "REVERTING", "REVERTED"]
    assert moves.of("b") == ["PENDING", "RUNNING", "FAILURE", "REVERTING", "REVERTED"]
    assert moves.of("c") == []  # never moved
    assert engine.state is S.REVERTED
    assert engine.atom_states == {"a": S.REVERTED, "b": S.REVERTED, "c": S.PENDING}
    failed = [t for t in moves.seen if t.new is S.FAILURE]
    assert failed[0].failure is not None and failed[0].failure.task == "b"


async def test_failed_revert(flow_engine: EngineUnderTest) -> None:
    moves = Moves()
    trace: list[str] = []
    flow = flows.linear("f", Step("a", trace), Step("b", trace, revert_fails=True), Step("c", trace, fails=ALWAYS))
    engine = await flow_engine.load(flow, listeners=[moves])
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await engine.run()
    assert_legal(moves)
    assert moves.of(None) == ["PENDING", "RUNNING", "REVERTING", "FAILURE"]
    assert moves.of("a") == ["PENDING", "RUNNING", "SUCCESS"]  # left as it was: no revert after one raised
    assert moves.of("b") == ["PENDING", "RUNNING", "SUCCESS", "REVERTING", "FAILURE"]
    assert moves.of("c") == ["PENDING", "RUNNING", "FAILURE", "REVERTING", "REVERTED"]
    assert engine.state is flows.FAILED
    assert [(f.task, f.operation) for f in engine.failures] == [("c", "execute"), ("b", "revert")]


async def test_retry(flow_engine: EngineUnderTest) -> None:
    moves = Moves()
    trace: list[str] = []
    flow = flows.linear("f", Step("a", trace), flows.linear("sub", Step("flaky", trace, fails=1), retry=flows.Times(2)))
    engine = await flow_engine.load(flow, listeners=[moves])
    assert engine.atom_states == {"a": S.PENDING, "flaky": S.PENDING, "sub.retry": S.PENDING}
    with anyio.fail_after(LIMIT):
        await engine.run()
    assert_legal(moves)
    assert moves.of(None) == ["PENDING", "RUNNING", "RETRYING", "RUNNING", "SUCCESS"]
    assert moves.of("a") == ["PENDING", "RUNNING", "SUCCESS"]
    assert moves.of("flaky") == [
        "PENDING",
        "RUNNING",
        "FAILURE",
        "REVERTING",
        "REVERTED",
        "PENDING",
        "RUNNING",
        "SUCCESS",
    ]
    assert moves.of("sub.retry") == ["PENDING", "RUNNING", "RETRYING", "RUNNING", "SUCCESS"]
    assert engine.atom_states == {"a": S.SUCCESS, "flaky": S.SUCCESS, "sub.retry": S.SUCCESS}


async def test_retries_exhausted(flow_engine: EngineUnderTest) -> None:
    moves = Moves()
    trace: list[str] = []
    flow = flows.linear(
        "f", Step("a", trace), flows.linear("sub", Step("bad", trace, fails=ALWAYS), retry=flows.Times(2))
    )
    engine = await flow_engine.load(flow, listeners=[moves])
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await engine.run()
    assert_legal(moves)
    assert moves.of(None) == ["PENDING", "RUNNING", "RETRYING", "RUNNING", "REVERTING", "REVERTED"]
    assert moves.of("sub.retry") == ["PENDING", "RUNNING", "RETRYING", "RUNNING", "REVERTING", "REVERTED"]
    assert moves.of("a") == ["PENDING", "RUNNING", "SUCCESS", "REVERTING", "REVERTED"]
    assert engine.atom_states == {"a": S.REVERTED, "bad": S.REVERTED, "sub.retry": S.REVERTED}


async def test_suspend(flow_engine: EngineUnderTest) -> None:
    moves = Moves()
    engine = await flow_engine.load(flows.linear("f", Step("a", []), Step("b", [])), listeners=[moves])
    engine.listen(lambda t: engine.suspend() if t.atom == "a" and t.new is S.SUCCESS else None)
    with anyio.fail_after(LIMIT):
        with pytest.raises(flows.FlowSuspended) as caught:
            await engine.run()
        assert caught.value.state is S.SUSPENDED
        assert engine.state is S.SUSPENDED
        await engine.run()
    assert_legal(moves)
    assert moves.of(None) == ["PENDING", "RUNNING", "SUSPENDED", "RUNNING", "SUCCESS"]
    assert moves.of("b") == ["PENDING", "RUNNING", "SUCCESS"]


async def test_an_ended_run_moves_no_more(flow_engine: EngineUnderTest) -> None:
    moves = Moves()
    engine = await flow_engine.load(flows.linear("f", Step("a", [], fails=ALWAYS)), listeners=[moves])
    with anyio.fail_after(LIMIT):
        with pytest.raises(flows.FlowFailed):
            await engine.run()
        seen = len(moves.seen)
        with pytest.raises(flows.FlowFailed) as again:
            await engine.run()
    assert len(moves.seen) == seen
    assert again.value.state is S.REVERTED


async def test_a_failed_revert_inside_a_retry_scope_leaves_no_controller_running(flow_engine: EngineUnderTest) -> None:
    moves = Moves()
    trace: list[str] = []
    flow = flows.linear(
        "f",
        flows.linear(
            "outer",
            flows.linear(
                "sub", Step("a", trace, revert_fails=True), Step("b", trace, fails=ALWAYS), retry=flows.Times(2)
            ),
            retry=flows.Times(2),
        ),
    )
    engine = await flow_engine.load(flow, listeners=[moves])
    with anyio.fail_after(LIMIT), pytest.raises(flows.FlowFailed):
        await engine.run()
    assert_legal(moves)
    assert engine.state is flows.FAILED
    assert engine.atom_states == {"a": S.FAILURE, "b": S.REVERTED, "sub.retry": S.FAILURE, "outer.retry": S.FAILURE}
    assert moves.of("sub.retry") == ["PENDING", "RUNNING", "REVERTING", "FAILURE"]


def test_str_of_flow_failed_names_each_failure_once_with_how_often_it_happened() -> None:
    # A retried task fails the same way on every attempt: the message counts them instead of
    # repeating one line per attempt.
    boom = flows.Failure("charge", "execute", "ValueError", "card declined")
    undo = flows.Failure("reserve", "revert", "OSError", "disk full")
    failed = flows.FlowFailed("checkout", flows.FAILED, (boom, boom, boom, undo))
    assert str(failed) == (
        "flow 'checkout' failed (a revert raised; effects may remain): "
        "charge.execute: ValueError: card declined (3 times); reserve.revert: OSError: disk full"
    )
    assert str(flows.FlowFailed("checkout", flows.REVERTED, (boom,))) == (
        "flow 'checkout' reverted: charge.execute: ValueError: card declined"
    )
    assert str(flows.FlowFailed("empty", flows.REVERTED, ())) == "flow 'empty' reverted: no failure recorded"
