"""Crash and resume: a flow run in a real subprocess killed with SIGKILL, carried on with ``flows.resume``.

The flows are those of ``_crash_flow.py``: each task's execute and revert
insert an effect row ``(task, op, attempt, phase)`` into a database of
their own, so after the kill and the resume the test sees how often each
effect was applied and by which process. The child says where it is on
stderr (every transition once the store recorded it, and each call that
waits to be killed); the test sends SIGKILL at that point, then resumes the
run in this process (on asyncio and on trio) from the SQLite store, found
with ``store.unfinished()``. What must hold: a task that had completed is
not run again (its effect is there once, from the crashed process), the
interrupted one runs again, the flow ends SUCCESS, or REVERTED with every
completed task compensated exactly once and the tasks that never ran not
compensated, and the store's recorded states agree.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from nacelle_py.base import flows

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from harness import ROOT, AppProcess, Event, clean_env

from ._crash_flow import Rig, build, record

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).resolve().with_name("_crash_flow.py")
BOUND = 30.0  # seconds any one wait may take: the child's start (imports), a kill, a resume

S = flows.State
Effect = tuple[str, str, int, str]  # task, op ("execute" or "revert"), attempt, phase ("crash" or "resume")


# Helpers -----------------------------------------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path) -> Callable[..., Rig]:
    """``rig(shape, **fields)``: a ``Rig`` whose store and effects are files of this test."""

    def make(shape: str, **fields: Any) -> Rig:
        return Rig(shape, str(tmp_path / "flows.sqlite3"), str(tmp_path / "effects.sqlite3"), **fields)

    return make


@pytest.fixture
def stores() -> Iterator[list[flows.SQLiteStore]]:
    """Every store the test opens, closed at its end."""
    opened: list[flows.SQLiteStore] = []
    yield opened
    for store in opened:
        store.close()


def child_env() -> dict[str, str]:
    env = clean_env(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return {k: v for k, v in env.items() if not k.endswith("FLOWS_ENGINE")}


def hung(call: str) -> Callable[[Event], bool]:
    """The child's call ``call`` ("Task.op") is waiting to be killed."""
    return lambda e: e.get("event") == "hang" and e.get("call") == call


def moved(atom: str, state: str) -> Callable[[Event], bool]:
    """The store recorded ``atom`` (or "flow") moving to ``state``."""
    return lambda e: e.get("event") == "move" and e.get("atom") == atom and e.get("new") == state


def stopped(e: Event) -> bool:
    """The child's listener blocks its loop at the transition its rig names."""
    return e.get("event") == "stop"


async def crash(backend: str, rig: Rig, *points: Callable[[Event], bool], mode: str = "run") -> str:
    """Run ``rig``'s flow in a child (``mode`` run or resume), SIGKILL it once every point was seen; its flow id."""
    with AppProcess([str(SCRIPT), backend, mode, rig.to_json()], child_env()) as child:
        for point in points:
            await anyio.to_thread.run_sync(child.wait_for, point, BOUND)
        child.send(signal.SIGKILL)
        assert await anyio.to_thread.run_sync(child.wait, BOUND) == -signal.SIGKILL, child.dump()
        assert child.count("ended") == 0, child.dump()
        return str(child.wait_event("loaded")["flow_id"])


def found(db: str, flow_id: str, stores: list[flows.SQLiteStore]) -> flows.SQLiteStore:
    """The store at ``db``, whose one unfinished run is ``flow_id``."""
    store = flows.SQLiteStore(db)
    stores.append(store)
    assert store.unfinished() == [flow_id]
    assert store.unfinished("no such flow") == []
    return store


async def resumed(rig: Rig, flow_id: str, store: flows.SQLiteStore) -> dict[str, Any] | flows.FlowFailed:
    """Resume the run here (the resume phase: nothing hangs); its values, or the FlowFailed it raised."""
    with anyio.fail_after(BOUND):
        try:
            return await flows.resume(build(replace(rig, phase="resume", hang=[])), flow_id, persistence=store)
        except flows.FlowFailed as exc:
            return exc


def effects(rig: Rig) -> list[Effect]:
    """Every effect applied so far, in order."""
    if not os.path.exists(rig.effects):
        return []
    conn = sqlite3.connect(rig.effects)
    try:
        rows = conn.execute("SELECT task, op, attempt, phase FROM effects ORDER BY n").fetchall()
    except sqlite3.OperationalError:  # no effect yet: the table is made by the first
        rows = []
    finally:
        conn.close()
    return [(str(t), str(o), int(a), str(p)) for t, o, a, p in rows]


def ran(*calls: str, phase: str, attempt: int = 0) -> list[Effect]:
    """Effects as the tests write them: ``ran("A.execute", "B.execute", phase="crash")``."""
    return [(c.split(".")[0], c.split(".")[1], attempt, phase) for c in calls]


def each(state: flows.State, *atoms: str, flow: flows.State | None = None) -> dict[str, str]:
    """A recorded states dict: every atom in ``state`` (and the flow's own state when given)."""
    out = {a: str(state) for a in atoms}
    if flow is not None:
        out["flow"] = str(flow)
    return out


# One kill at one point ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["serial", "parallel"])
async def test_killed_mid_execute_of_the_third_task_runs_only_it_and_those_after(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore], engine: str
) -> None:
    r = rig("linear", engine=engine, hang=["C.execute"])
    flow_id = await crash(anyio_backend, r, hung("C.execute"))
    store = found(r.db, flow_id, stores)
    assert store.states(flow_id) == {**each(S.SUCCESS, "A", "B"), "C": "RUNNING", "flow": "RUNNING"}
    assert flows.resumed(build(r), flow_id, persistence=store).engine == engine  # the recorded engine

    values = await resumed(r, flow_id, store)

    assert isinstance(values, dict), values
    assert values["E_out"] == "E(D(C(B(A()))))"  # A and B's results came back from the store
    assert effects(r) == ran("A.execute", "B.execute", phase="crash") + ran(
        "C.execute", "D.execute", "E.execute", phase="resume"
    )
    assert store.states(flow_id) == each(S.SUCCESS, *"ABCDE", flow=S.SUCCESS)
    assert store.unfinished() == []


@pytest.mark.parametrize("engine", ["serial", "parallel"])
async def test_killed_between_two_tasks_starts_at_the_next_one(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore], engine: str
) -> None:
    r = rig("linear", engine=engine, stop="B:SUCCESS")
    flow_id = await crash(anyio_backend, r, stopped)
    store = found(r.db, flow_id, stores)
    assert store.states(flow_id) == each(S.SUCCESS, "A", "B", flow=S.RUNNING)

    values = await resumed(r, flow_id, store)

    assert isinstance(values, dict), values
    assert values["E_out"] == "E(D(C(B(A()))))"
    assert effects(r) == ran("A.execute", "B.execute", phase="crash") + ran(
        "C.execute", "D.execute", "E.execute", phase="resume"
    )
    assert store.states(flow_id) == each(S.SUCCESS, *"ABCDE", flow=S.SUCCESS)


@pytest.mark.parametrize("engine", ["serial", "parallel"])
async def test_killed_mid_revert_finishes_the_revert_compensating_each_task_once(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore], engine: str
) -> None:
    # D fails; C and D are reverted; B's revert hangs and the process is killed there.
    r = rig("linear", engine=engine, fail={"D.execute": None}, hang=["B.revert"])
    flow_id = await crash(anyio_backend, r, hung("B.revert"))
    store = found(r.db, flow_id, stores)
    assert store.states(flow_id) == {
        "A": "SUCCESS",
        "B": "REVERTING",
        **each(S.REVERTED, "C", "D"),
        "flow": "REVERTING",
    }

    failed = await resumed(r, flow_id, store)

    assert isinstance(failed, flows.FlowFailed), failed
    assert failed.state is flows.REVERTED
    assert [str(f) for f in failed.failures] == ["D.execute: RuntimeError: D.execute fails (attempt 0)"]
    assert effects(r) == ran("A.execute", "B.execute", "C.execute", "D.revert", "C.revert", phase="crash") + ran(
        "B.revert", "A.revert", phase="resume"
    )
    # E never ran: not recorded, not compensated.
    assert store.states(flow_id) == each(S.REVERTED, *"ABCD", flow=S.REVERTED)
    assert store.unfinished() == []


@pytest.mark.parametrize("engine", ["serial", "parallel"])
async def test_killed_during_a_retry_backoff_runs_the_next_attempt(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore], engine: str
) -> None:
    # C fails on the first attempt of the retried subflow (B, C); the backoff is longer than any wait here.
    r = rig("retry", engine=engine, attempts=3, backoff=3600.0, fail={"C.execute": [1]})
    flow_id = await crash(anyio_backend, r, moved("sub.retry", "RETRYING"), moved("flow", "RETRYING"))
    store = found(r.db, flow_id, stores)
    assert store.states(flow_id) == {
        "A": "SUCCESS",
        **each(S.PENDING, "B", "C"),  # reverted, and waiting for the next attempt
        "sub.retry": "RETRYING",
        "flow": "RETRYING",
    }

    values = await resumed(r, flow_id, store)

    assert isinstance(values, dict), values
    assert values["E_out"] == "E(D(C(B(A()))))"
    assert effects(r) == [
        *ran("A.execute", phase="crash"),
        *ran("B.execute", "C.revert", "B.revert", phase="crash", attempt=1),
        *ran("B.execute", "C.execute", phase="resume", attempt=2),
        *ran("D.execute", "E.execute", phase="resume"),
    ]
    assert store.states(flow_id) == {**each(S.SUCCESS, *"ABCDE", "sub.retry"), "flow": "SUCCESS"}


@pytest.mark.parametrize("engine", ["serial", "parallel"])
async def test_killed_during_the_last_backoff_reverts_everything_when_the_retry_fails_again(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore], engine: str
) -> None:
    r = rig("retry", engine=engine, attempts=2, backoff=3600.0, fail={"C.execute": None})
    flow_id = await crash(anyio_backend, r, moved("flow", "RETRYING"))
    store = found(r.db, flow_id, stores)

    failed = await resumed(r, flow_id, store)

    assert isinstance(failed, flows.FlowFailed), failed
    assert failed.state is flows.REVERTED
    assert [f.task for f in failed.failures] == ["C", "C"]
    assert effects(r) == [
        *ran("A.execute", phase="crash"),
        *ran("B.execute", "C.revert", "B.revert", phase="crash", attempt=1),
        *ran("B.execute", "C.revert", "B.revert", phase="resume", attempt=2),
        *ran("A.revert", phase="resume"),
    ]
    # D and E never ran: not recorded, not compensated.
    assert store.states(flow_id) == each(S.REVERTED, "A", "B", "C", "sub.retry", flow=S.REVERTED)


async def test_killed_with_several_tasks_in_flight_runs_only_the_unfinished_ones(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore]
) -> None:
    r = rig("fan", engine="parallel", hang=["P3.execute", "P4.execute"])
    points = (moved("P1", "SUCCESS"), moved("P2", "SUCCESS"), hung("P3.execute"), hung("P4.execute"))
    flow_id = await crash(anyio_backend, r, *points)
    store = found(r.db, flow_id, stores)
    assert store.states(flow_id) == {
        **each(S.SUCCESS, "A", "P1", "P2"),
        **each(S.RUNNING, "P3", "P4"),
        "flow": "RUNNING",
    }

    values = await resumed(r, flow_id, store)

    assert isinstance(values, dict), values
    assert values["Z_out"] == "Z(P1(A()),P2(A()),P3(A()),P4(A()))"
    done = effects(r)
    assert done[0] == ("A", "execute", 0, "crash")
    assert sorted(done[1:3]) == ran("P1.execute", "P2.execute", phase="crash")
    assert sorted(done[3:5]) == ran("P3.execute", "P4.execute", phase="resume")
    assert done[5:] == ran("Z.execute", phase="resume")
    assert store.states(flow_id) == each(S.SUCCESS, "A", "P1", "P2", "P3", "P4", "Z", flow=S.SUCCESS)


async def test_a_failure_after_resume_reverts_what_ran_before_and_after_the_kill_once(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore]
) -> None:
    r = rig("fan", engine="parallel", hang=["P3.execute", "P4.execute"])
    points = (moved("P1", "SUCCESS"), moved("P2", "SUCCESS"), hung("P3.execute"), hung("P4.execute"))
    flow_id = await crash(anyio_backend, r, *points)
    store = found(r.db, flow_id, stores)

    failed = await resumed(replace(r, fail={"P3.execute": None}), flow_id, store)

    assert isinstance(failed, flows.FlowFailed), failed
    assert failed.state is flows.REVERTED
    done = Counter((task, op) for task, op, _, _ in effects(r))
    executed = {"A", "P1", "P2", "P4"}  # P3 failed; P4 was in flight with it, so it finished first
    assert done == Counter({**{(t, "execute"): 1 for t in executed}, **{(t, "revert"): 1 for t in executed | {"P3"}}})
    reverts = [task for task, op, _, _ in effects(r) if op == "revert"]
    assert reverts[-1] == "A"  # the task every other one waited for is compensated last
    assert store.states(flow_id) == each(S.REVERTED, "A", "P1", "P2", "P3", "P4", flow=S.REVERTED)  # not Z

    again = await resumed(r, flow_id, store)  # an ended run: nothing runs, the same failure again
    assert isinstance(again, flows.FlowFailed) and again.state is flows.REVERTED
    assert [str(f) for f in again.failures] == [str(f) for f in failed.failures]
    assert sum(done.values()) == len(effects(r))


async def test_a_revert_that_failed_before_the_kill_is_not_run_again_and_the_flow_ends_failed(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore]
) -> None:
    # D fails, C and B are compensated, A's revert raises; the kill lands before the flow is marked FAILED.
    r = rig("linear", fail={"D.execute": None, "A.revert": None}, stop="A:FAILURE")
    flow_id = await crash(anyio_backend, r, stopped)
    store = found(r.db, flow_id, stores)
    assert store.states(flow_id) == {"A": "FAILURE", **each(S.REVERTED, "B", "C", "D"), "flow": "REVERTING"}

    failed = await resumed(replace(r, fail={"D.execute": None}), flow_id, store)  # A's revert would work now

    assert isinstance(failed, flows.FlowFailed), failed
    assert failed.state is flows.FAILED
    assert [str(f) for f in failed.failures] == [
        "D.execute: RuntimeError: D.execute fails (attempt 0)",
        "A.revert: RuntimeError: A.revert fails (attempt 0)",
    ]
    assert ("A", "revert", 0, "resume") not in effects(r)
    assert store.states(flow_id) == {"A": "FAILURE", **each(S.REVERTED, "B", "C", "D"), "flow": "FAILURE"}


async def test_killed_again_while_resuming_still_applies_each_effect_once(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore]
) -> None:
    r = rig("retry", engine="parallel", attempts=3, fail={"C.execute": [1]}, stop="B:SUCCESS")
    flow_id = await crash(anyio_backend, r, stopped)  # in attempt 1, before C fails
    second = replace(r, phase="resume-1", stop="B:SUCCESS")  # in attempt 2, before C succeeds
    assert await crash(anyio_backend, second, stopped, mode="resume") == flow_id
    store = found(r.db, flow_id, stores)
    assert store.states(flow_id)["sub.retry"] == "RUNNING"

    values = await resumed(r, flow_id, store)

    assert isinstance(values, dict), values
    assert effects(r) == [
        *ran("A.execute", phase="crash"),
        *ran("B.execute", phase="crash", attempt=1),
        *ran("C.revert", "B.revert", phase="resume-1", attempt=1),
        *ran("B.execute", phase="resume-1", attempt=2),
        *ran("C.execute", phase="resume", attempt=2),
        *ran("D.execute", "E.execute", phase="resume"),
    ]


# Resuming what cannot be resumed -----------------------------------------------------------------


async def test_resuming_an_ended_run_runs_nothing(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore]
) -> None:
    r = rig("linear", stop="C:RUNNING")
    flow_id = await crash(anyio_backend, r, stopped)
    store = found(r.db, flow_id, stores)
    first = await resumed(r, flow_id, store)
    applied = effects(r)

    second = await resumed(r, flow_id, store)

    assert second == first
    assert effects(r) == applied
    assert store.states(flow_id) == each(S.SUCCESS, *"ABCDE", flow=S.SUCCESS)


async def test_resuming_an_unknown_id_is_a_lookup_error(
    rig: Callable[..., Rig], stores: list[flows.SQLiteStore]
) -> None:
    r = rig("linear")
    store = flows.SQLiteStore(r.db)
    stores.append(store)
    with pytest.raises(LookupError, match="no-such-run"):
        await flows.resume(build(r), "no-such-run", persistence=store)
    assert effects(r) == []


async def test_resuming_with_a_flow_that_lost_an_atom_is_refused_naming_it(
    anyio_backend: str, rig: Callable[..., Rig], stores: list[flows.SQLiteStore]
) -> None:
    r = rig("linear", stop="C:SUCCESS")
    flow_id = await crash(anyio_backend, r, stopped)
    store = found(r.db, flow_id, stores)
    full = build(r)
    assert isinstance(full, flows.Flow)
    fewer = flows.linear("checkout", *[a for a in full.atoms if getattr(a, "name", "") != "B"])

    with pytest.raises(flows.FlowError, match=r"\['B'\].*no longer has"):
        await flows.resume(fewer, flow_id, persistence=store)
    with pytest.raises(flows.FlowError, match="'checkout', not 'other'"):
        await flows.resume(flows.linear("other", *full.atoms), flow_id, persistence=store)

    assert store.unfinished() == [flow_id]  # refused before anything ran: the run can still be resumed
    assert effects(r) == ran("A.execute", "B.execute", "C.execute", phase="crash")


# Every point of a run ----------------------------------------------------------------------------

SWEEPS: dict[str, tuple[str, dict[str, Any]]] = {
    # a retried subflow whose first attempt fails, then SUCCESS
    "retry": ("retry", {"attempts": 2, "fail": {"C.execute": [1]}}),
    # the retried subflow succeeds on its second attempt, E fails later: the whole flow (its tasks too) REVERTED
    "late": ("retry", {"attempts": 2, "fail": {"C.execute": [1], "E.execute": None}}),
    # nested retried subflows: the inner one exhausts its attempts in each outer attempt, then REVERTED
    "nested": ("nested", {"attempts": 2, "fail": {"D.execute": None}}),
    # a revert that raises: FAILED
    "nasty": ("linear", {"fail": {"D.execute": None, "B.revert": None}}),
    # four tasks in flight at once (the parallel engine), then a failure after them: REVERTED
    "fan": ("fan", {"fail": {"Z.execute": None}}),
}


class Recorder:
    """A listener counting the transitions of an uninterrupted run."""

    def __init__(self) -> None:
        self.moves: list[str] = []

    def __call__(self, move: flows.Transition) -> None:
        self.moves.append(f"{move.atom or 'flow'}:{move.new}")


async def baseline(r: Rig) -> tuple[int, str, dict[str, str], Counter[tuple[str, str, int]]]:
    """The run of ``r`` without a crash (in its own files): transitions, end state, recorded states, effects."""
    alone = replace(r, db=r.db + ".baseline", effects=r.effects + ".baseline")
    store = flows.SQLiteStore(alone.db)
    recorder = Recorder()
    try:
        with anyio.fail_after(BOUND):
            engine = flows.load(build(alone), engine=r.engine, persistence=store, listeners=[recorder])
            try:
                await engine.run()
            except flows.FlowFailed:
                pass
        states = store.states(engine.flow_id)
    finally:
        store.close()
    applied = Counter((t, o, a) for t, o, a, _ in effects(alone))
    return len(recorder.moves), str(engine.state), states, applied


SWEPT = [("retry", "serial"), ("retry", "parallel"), ("nested", "serial")]
SWEPT += [("late", "serial"), ("nasty", "serial"), ("fan", "parallel")]


@pytest.mark.parametrize(("sweep", "engine"), SWEPT)
async def test_a_kill_at_every_transition_resumes_to_the_same_end_with_each_effect_once(
    anyio_backend: str, tmp_path: Path, sweep: str, engine: str
) -> None:
    shape, fields = SWEEPS[sweep]
    first = Rig(shape, str(tmp_path / "base.sqlite3"), str(tmp_path / "base-effects.sqlite3"), engine=engine, **fields)
    count, end, states, applied = await baseline(first)
    problems: dict[int, str] = {}

    async def kill_at(stop: int) -> None:
        r = replace(first, db=str(tmp_path / f"{stop}.sqlite3"), effects=str(tmp_path / f"{stop}-effects.sqlite3"))
        r.stop = stop
        flow_id = await crash(anyio_backend, r, stopped)
        store = flows.SQLiteStore(r.db)
        try:
            assert store.unfinished() == ([flow_id] if stop < count else [])
            outcome = await resumed(r, flow_id, store)
            got_end = str(outcome.state if isinstance(outcome, flows.FlowFailed) else S.SUCCESS)
            got = Counter((t, o, a) for t, o, a, _ in effects(r))
            assert (got_end, store.states(flow_id), got) == (end, states, applied)
            assert store.unfinished() == []
        except Exception as exc:  # every point is tried; the test fails with all that went wrong
            problems[stop] = f"{type(exc).__name__}: {exc}"
        finally:
            store.close()

    # Two children at a time: each spends most of its life importing, the machine has two cores.
    limiter = anyio.CapacityLimiter(2)

    async def limited(stop: int) -> None:
        async with limiter:
            await kill_at(stop)

    async with anyio.create_task_group() as tg:
        for stop in range(count + 1):  # 0: recorded, before the first transition; count: after the last
            tg.start_soon(limited, stop)
    report = "\n".join(f"killed after transition {n} of {count}: {problems[n]}" for n in sorted(problems))
    assert not problems, report


def test_the_effects_table_counts_each_call(tmp_path: Path) -> None:
    # The tests' own instrument: one row per applied effect, in order.
    r = Rig("linear", str(tmp_path / "f.sqlite3"), str(tmp_path / "e.sqlite3"))
    record(r.effects, "A", "execute", 0, "crash")
    record(r.effects, "A", "revert", 2, "resume")
    assert effects(r) == [("A", "execute", 0, "crash"), ("A", "revert", 2, "resume")]
