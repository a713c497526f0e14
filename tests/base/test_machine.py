"""Machine: autom8ter/machine's scenarios ported, and the flaws of the Go version that ours must not have.

Ported: 100 routines throttled at 3, a routine with an id and a timeout that runs
every interval, sub-machine cancellation (down, never up), a recovered panic,
stats. Not inherited: a hidden backlog when throttled, a slot released twice,
errors dropped, a routine error cancelling siblings. Routines block on events,
not sleeps, so each test says which routine is running; every wait is bounded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import structlog
import structlog.testing
from _support import Boom, wait_until

from nacelle_py.base import (
    Machine,
    MachineError,
    MachineOverflowError,
    MachineSettings,
    MachineStats,
    Routine,
    RoutineInfo,
    Subscription,
    cron,
    every,
    recover,
    retry,
    timeout,
)

pytestmark = pytest.mark.anyio

FINAL = ("done", "failed", "cancelled", "timed_out")


# -- helpers ----------------------------------------------------------------------------


def leaves(group: BaseException) -> list[BaseException]:
    """Every leaf exception of a (possibly nested) exception group."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in leaves(inner)]
    return [group]


def mentions(entry: dict[str, Any], text: str) -> bool:
    """Whether a captured log entry carries ``text`` in one of its values."""
    return any(text in str(value) for value in entry.values())


def blocker(release: anyio.Event, trace: list[str], name: str) -> Callable[[], Any]:
    """A routine that records its start, waits for ``release``, then records its end."""

    async def fn() -> None:
        trace.append(f"{name}.start")
        try:
            await release.wait()
        finally:
            trace.append(f"{name}.end")

    return fn


async def forever() -> None:
    await anyio.sleep_forever()


@pytest.fixture
def logs() -> Iterator[Any]:
    with structlog.testing.capture_logs() as captured:
        yield captured


# -- the public surface -----------------------------------------------------------------


async def test_the_public_names_and_their_shapes() -> None:
    assert issubclass(MachineError, RuntimeError)
    assert issubclass(MachineOverflowError, Exception)
    assert set(MachineStats._fields) >= {
        "name",
        "active",
        "total",
        "waiting",
        "max_routines",
        "errors",
        "recovered",
        "routines",
        "subs",
        "subscriptions",
    }
    assert RoutineInfo._fields == ("id", "tags", "age", "state")
    async with Machine(max_routines=2, name="jobs") as m:
        s = m.stats()
        assert isinstance(s, MachineStats)
        assert (s.name, s.active, s.total, s.waiting, s.max_routines, s.errors, s.recovered) == (
            "jobs",
            0,
            0,
            0,
            2,
            0,
            0,
        )
        assert s.routines == () and s.subs == {} and s.subscriptions == 0
        r = await m.go(forever)
        assert isinstance(r, Routine)
        sub = m.subscribe("x", lambda msg: None)
        assert isinstance(sub, Subscription)
        r.cancel()
    assert MachineSettings is not None


async def test_a_standalone_machine_reads_nothing_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MACHINE_MAX_ROUTINES", "1")
    monkeypatch.setenv("MACHINE_BUFFER", "1")
    async with Machine() as m:
        assert m.stats().max_routines is None
        release = anyio.Event()
        trace: list[str] = []
        a = m.try_go(blocker(release, trace, "a"))
        b = m.try_go(blocker(release, trace, "b"))  # MACHINE_MAX_ROUTINES=1 would refuse it
        assert a is not None and b is not None
        got: list[int] = []
        sub = m.subscribe("n", got.append, overflow="error")
        for i in range(5):  # MACHINE_BUFFER=1 would overflow
            await m.publish("n", i)
        await wait_until(lambda: got == [0, 1, 2, 3, 4])
        assert sub.dropped == 0
        release.set()


# -- throttling -------------------------------------------------------------------------


async def test_100_routines_at_max_3_never_more_than_3_active_and_all_complete() -> None:
    active = 0
    peak = 0
    seen: list[int] = []  # the machine's own count, sampled from inside each routine
    done: list[int] = []

    def work(i: int) -> Callable[[Routine], Any]:
        async def fn(r: Routine) -> int:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            seen.append(r.machine.stats().active)
            try:
                for _ in range(3):
                    await anyio.sleep(0.001)
                    seen.append(r.machine.stats().active)
            finally:
                active -= 1
            done.append(i)
            return i

        return fn

    with anyio.fail_after(20):
        async with Machine(max_routines=3) as m:
            routines = [await m.go(work(i)) for i in range(100)]
            s = m.stats()
            assert s.active <= 3 and s.max_routines == 3
    assert peak == 3  # throttled to 3, and 3 did run together
    assert max(seen) <= 3 and min(seen) >= 1
    assert sorted(done) == list(range(100))
    assert [r.state for r in routines] == ["done"] * 100
    assert [await r.wait() for r in routines] == list(range(100))
    s = m.stats()
    assert (s.active, s.total, s.waiting, s.errors) == (0, 100, 0, 0)


async def test_an_unlimited_machine_runs_every_routine_at_once() -> None:
    release = anyio.Event()
    trace: list[str] = []
    with anyio.fail_after(10):
        async with Machine() as m:
            for i in range(50):
                assert m.try_go(blocker(release, trace, str(i))) is not None
            await wait_until(lambda: len(trace) == 50)
            assert m.stats().active == 50
            release.set()
    assert m.stats().total == 50


async def test_go_waits_for_a_slot_instead_of_queueing_a_hidden_backlog() -> None:
    release_a = anyio.Event()
    trace: list[str] = []
    returned: list[Routine] = []
    with anyio.fail_after(10):
        async with Machine(max_routines=1) as m:
            a = await m.go(blocker(release_a, trace, "a"))

            async def second() -> None:
                returned.append(await m.go(blocker(anyio.Event(), trace, "b")))
                trace.append("go(b) returned")

            async with anyio.create_task_group() as tg:
                tg.start_soon(second)
                await wait_until(lambda: m.stats().waiting == 1)
                await anyio.sleep(0.02)  # time for a wrongly accepted b to show up
                assert returned == [] and "b.start" not in trace  # go() is still waiting: no backlog
                s = m.stats()
                assert (s.active, s.total, s.waiting) == (1, 1, 1)
                release_a.set()
            await wait_until(lambda: "b.start" in trace)
            assert trace.index("a.end") < trace.index("b.start")
            assert trace.index("a.end") < trace.index("go(b) returned")
            assert a.state == "done"
            returned[0].cancel()
    assert m.stats().total == 2


async def test_try_go_never_waits_none_when_full_a_routine_when_a_slot_is_free() -> None:
    release = anyio.Event()
    trace: list[str] = []
    with anyio.fail_after(10):
        async with Machine(max_routines=2) as m:
            a = m.try_go(blocker(release, trace, "a"))
            b = m.try_go(blocker(release, trace, "b"))
            assert a is not None and b is not None
            assert m.try_go(blocker(release, trace, "c")) is None
            assert m.stats().waiting == 0 and m.stats().total == 2  # nothing held back for later
            release.set()
            await a.wait()
            await b.wait()
            c = m.try_go(blocker(release, trace, "c"))
            assert c is not None
            await c.wait()
    assert sorted(trace) == sorted(["a.start", "a.end", "b.start", "b.end", "c.start", "c.end"])
    assert m.stats().total == 3


async def test_waiting_go_calls_get_slots_in_fifo_order() -> None:
    gates = {name: anyio.Event() for name in "abcdef"}
    trace: list[str] = []
    with anyio.fail_after(10):
        async with Machine(max_routines=1) as m:
            await m.go(blocker(gates["a"], trace, "a"))
            async with anyio.create_task_group() as tg:
                for n, name in enumerate("bcdef", start=1):
                    tg.start_soon(m.go, blocker(gates[name], trace, name))
                    await wait_until(lambda n=n: m.stats().waiting == n)  # type: ignore[misc]
                assert m.try_go(blocker(anyio.Event(), trace, "x")) is None  # no jumping the queue
                for name in "abcde":
                    gates[name].set()
                    await wait_until(lambda name=name: f"{name}.end" in trace)  # type: ignore[misc]
            await wait_until(lambda: "f.start" in trace)
            gates["f"].set()
    starts = [event[0] for event in trace if event.endswith(".start")]
    assert starts == list("abcdef")
    for first, second in zip("abcde", "bcdef"):
        assert trace.index(f"{first}.end") < trace.index(f"{second}.start")


async def test_a_go_cancelled_while_waiting_for_a_slot_takes_no_slot() -> None:
    release = anyio.Event()
    trace: list[str] = []
    outcome: list[Any] = []
    with anyio.fail_after(10):
        async with Machine(max_routines=1) as m:
            a = await m.go(blocker(release, trace, "a"))
            scope = anyio.CancelScope()

            async def waiting_go() -> None:
                with scope:
                    outcome.append(await m.go(blocker(anyio.Event(), trace, "b")))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiting_go)
                await wait_until(lambda: m.stats().waiting == 1)
                scope.cancel()
            assert outcome == [] and scope.cancelled_caught
            s = m.stats()
            assert (s.active, s.total, s.waiting) == (1, 1, 0)
            assert m.try_go(blocker(release, trace, "c")) is None  # a's slot is still a's
            release.set()
            await a.wait()
            assert m.stats().active == 0
            c = m.try_go(blocker(release, trace, "c"))
            assert c is not None
            assert m.try_go(blocker(release, trace, "d")) is None  # exactly one slot came back
            await c.wait()
    assert "b.start" not in trace
    assert m.stats().total == 2


async def test_a_machine_with_room_does_not_wait_behind_a_caller_queued_for_another_full_machine() -> None:
    """Only a full machine (or a full ancestor) makes go() wait: a queue elsewhere in the tree does not."""
    release = anyio.Event()
    trace: list[str] = []
    with anyio.fail_after(10):
        async with Machine(max_routines=10) as m:
            a = m.sub("a", max_routines=1)
            b = m.sub("b")
            await a.go(blocker(release, trace, "a1"))
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.go, blocker(release, trace, "a2"))
                await wait_until(lambda: a.stats().waiting == 1)
                b1: Routine | None = None
                with anyio.move_on_after(2):
                    b1 = await b.go(blocker(release, trace, "b1"))
                assert b1 is not None, "go() on b (room) waited behind a caller queued for a (full)"
                b2 = b.try_go(blocker(release, trace, "b2"))
                assert b2 is not None, "try_go() on b (room) refused because a caller waits for a (full)"
                assert m.try_go(blocker(release, trace, "root")) is not None  # the root has room as well
                await wait_until(lambda: {"b1.start", "b2.start", "root.start"} <= set(trace))
                assert "a2.start" not in trace
                release.set()
    assert trace.index("a1.end") < trace.index("a2.start")


async def test_a_go_timeout_counts_from_the_routines_start_not_from_the_call() -> None:
    """A routine that waited for a slot longer than its timeout still gets its whole timeout."""
    release = anyio.Event()
    trace: list[str] = []
    got: list[Routine] = []

    async def short_job() -> str:
        trace.append("b.start")
        await anyio.sleep(0.01)
        trace.append("b.end")
        return "finished"

    with anyio.fail_after(10):
        async with Machine(max_routines=1) as m:
            await m.go(blocker(release, trace, "a"))

            async def queue_b() -> None:
                got.append(await m.go(short_job, timeout=0.2))

            async with anyio.create_task_group() as tg:
                tg.start_soon(queue_b)
                await wait_until(lambda: m.stats().waiting == 1)
                await anyio.sleep(0.3)  # b waits for a slot longer than its timeout
                release.set()
            (b,) = got
            await b.wait()
    assert trace == ["a.start", "a.end", "b.start", "b.end"]
    assert b.state == "done" and await b.wait() == "finished"


async def test_cancelling_a_machine_fails_the_go_calls_waiting_on_it() -> None:
    """A go() queued on a machine (or under a machine) that is cancelled raises MachineError; nothing starts."""
    trace: list[str] = []
    raised: list[str] = []

    async def queued(machine: Machine, name: str) -> None:
        try:
            await machine.go(blocker(anyio.Event(), trace, name))
        except MachineError:
            raised.append(name)

    with anyio.fail_after(10):
        async with Machine(max_routines=1) as m:
            child = m.sub("child")
            a = await m.go(blocker(anyio.Event(), trace, "a"))
            async with anyio.create_task_group() as tg:
                tg.start_soon(queued, m, "b")
                await wait_until(lambda: m.stats().waiting == 1)
                tg.start_soon(queued, child, "c")
                await wait_until(lambda: child.stats().waiting == 1)
                m.cancel()
            await a.wait()
            assert m.stats().waiting == 0 and child.stats().waiting == 0
    assert sorted(raised) == ["b", "c"]
    assert a.state == "cancelled"
    assert trace == ["a.start", "a.end"]
    assert m.stats().total == 1 and child.stats().total == 0


@pytest.mark.parametrize("order", ["caller first", "machine first"])
async def test_a_waiting_go_cancelled_by_its_caller_and_its_machine_at_once(order: str) -> None:
    """Both cancels land before the queued go() resumes: it ends cancelled or with MachineError, nothing else."""
    release = anyio.Event()
    trace: list[str] = []
    outcome: list[str] = []
    scope = anyio.CancelScope()
    with anyio.fail_after(10):
        async with Machine(max_routines=1) as m:
            child = m.sub("child")
            a = await m.go(blocker(release, trace, "a"))

            async def waiting() -> None:
                try:
                    with scope:
                        await child.go(blocker(anyio.Event(), trace, "b"))
                    outcome.append("cancelled" if scope.cancelled_caught else "returned")
                except MachineError:
                    outcome.append("MachineError")
                except Exception as exc:  # noqa: BLE001 - what the test is about
                    outcome.append(repr(exc))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiting)
                await wait_until(lambda: child.stats().waiting == 1)
                if order == "caller first":
                    scope.cancel()
                    child.cancel()
                else:
                    child.cancel()
                    scope.cancel()
            assert m.stats().waiting == 0
            release.set()
            await a.wait()
            assert m.try_go(blocker(_set(anyio.Event()), trace, "c")) is not None
            assert m.stats().active == 1
    assert outcome in (["cancelled"], ["MachineError"]), outcome
    assert "b.start" not in trace


async def test_cancelling_a_routine_twice_releases_its_slot_once() -> None:
    trace: list[str] = []
    hold = anyio.Event()
    with anyio.fail_after(10):
        async with Machine(max_routines=2) as m:
            a = await m.go(blocker(anyio.Event(), trace, "a"))
            b = await m.go(blocker(hold, trace, "b"))
            await wait_until(lambda: "a.start" in trace and "b.start" in trace)
            a.cancel()
            a.cancel()
            assert await a.wait() is None
            a.cancel()  # and once more after it ended
            assert a.state == "cancelled" and a.done
            assert m.stats().active == 1
            c = m.try_go(blocker(hold, trace, "c"))
            assert c is not None
            assert m.try_go(blocker(hold, trace, "d")) is None  # a double release would let d in
            assert m.stats().active == 2
            hold.set()
    assert b.state == "done" and c.state == "done"
    assert "d.start" not in trace
    assert m.stats().total == 3


async def test_cancelling_a_finished_routine_changes_nothing() -> None:
    async def value() -> int:
        return 7

    async with Machine(max_routines=1) as m:
        r = await m.go(value)
        assert await r.wait() == 7
        r.cancel()
        assert r.state == "done" and await r.wait() == 7
        trace: list[str] = []
        release = anyio.Event()
        x = m.try_go(blocker(release, trace, "x"))
        assert x is not None
        assert m.try_go(blocker(release, trace, "y")) is None
        release.set()


async def test_a_routine_cancelled_before_it_ran_frees_its_slot() -> None:
    trace: list[str] = []
    async with Machine(max_routines=1) as m:
        r = await m.go(blocker(anyio.Event(), trace, "r"))
        r.cancel()  # perhaps before its first line
        assert await r.wait() is None
        assert r.state == "cancelled"
        assert m.stats().active == 0
        s = await m.go(blocker(anyio.Event(), trace, "s"))
        await wait_until(lambda: "s.start" in trace)
        s.cancel()
        await s.wait()
    assert "s.start" in trace and s.state == "cancelled"
    assert m.stats().total == 2


# -- routines ---------------------------------------------------------------------------


async def test_fn_takes_no_argument_or_the_routine() -> None:
    got: list[Any] = []

    async def bare() -> str:
        return "bare"

    async def with_routine(r: Routine) -> str:
        got.append(r)
        return r.id

    class Callable_:
        async def __call__(self, r: Routine) -> str:
            return "object:" + r.id

    async with Machine() as m:
        a = await m.go(bare)
        b = await m.go(with_routine, id="mine")
        c = await m.go(Callable_(), id="obj")
        assert await a.wait() == "bare"
        assert await b.wait() == "mine"
        assert await c.wait() == "object:obj"
    assert got == [b]
    assert b.machine is m and b.id == "mine"


async def test_routine_wait_returns_the_result_raises_the_error_none_when_cancelled() -> None:
    async def ok() -> dict[str, int]:
        return {"n": 1}

    boom = Boom("fails")

    async def fails() -> None:
        raise boom

    with pytest.raises(ExceptionGroup) as info:
        async with Machine() as m:
            r_ok = await m.go(ok)
            r_bad = await m.go(fails)
            r_cancel = await m.go(forever)
            assert await r_ok.wait() == {"n": 1}
            with pytest.raises(Boom) as raised:
                await r_bad.wait()
            assert raised.value is boom
            r_cancel.cancel()
            assert await r_cancel.wait() is None
    assert leaves(info.value) == [boom]
    assert (r_ok.state, r_ok.done, r_ok.error) == ("done", True, None)
    assert (r_bad.state, r_bad.done, r_bad.error) == ("failed", True, boom)
    assert (r_cancel.state, r_cancel.done, r_cancel.error) == ("cancelled", True, None)


async def test_state_is_running_while_the_routine_runs() -> None:
    release = anyio.Event()
    trace: list[str] = []
    async with Machine() as m:
        r = await m.go(blocker(release, trace, "r"))
        await wait_until(lambda: "r.start" in trace)
        assert (r.state, r.done, r.error) == ("running", False, None)
        release.set()
        await r.wait()
        assert (r.state, r.done) == ("done", True)


async def test_a_go_timeout_ends_timed_out_and_is_not_an_error() -> None:
    trace: list[str] = []
    with anyio.fail_after(10):
        async with Machine() as m:
            r = await m.go(blocker(anyio.Event(), trace, "r"), timeout=0.05)
            assert await r.wait() is None
            quick = await m.go(blocker(_set(anyio.Event()), trace, "q"), timeout=5)
            await quick.wait()
            await m.wait()  # no error to raise
    assert r.state == "timed_out" and r.error is None and r.done
    assert quick.state == "done"
    assert trace[:2] == ["r.start", "r.end"]
    assert m.stats().errors == 0


def _set(event: anyio.Event) -> anyio.Event:
    event.set()
    return event


async def test_a_routine_can_cancel_itself() -> None:
    trace: list[str] = []

    async def fn(r: Routine) -> None:
        trace.append("before")
        r.cancel()
        await anyio.sleep(5)
        trace.append("after")  # never reached

    with anyio.fail_after(10):
        async with Machine() as m:
            r = await m.go(fn)
            assert await r.wait() is None
    assert r.state == "cancelled"
    assert trace == ["before"]


async def test_default_ids_are_unique_and_named_after_the_machine() -> None:
    async with Machine(name="jobs") as m:
        routines = [await m.go(forever) for _ in range(20)]
        ids = [r.id for r in routines]
        assert len(set(ids)) == 20
        assert all(i.startswith("jobs-") for i in ids), ids
        assert {info.id for info in m.stats().routines} == set(ids)
        m.cancel()


async def test_a_user_id_of_an_active_routine_is_refused_and_free_again_once_it_ended() -> None:
    release = anyio.Event()
    trace: list[str] = []
    async with Machine(max_routines=2) as m:
        first = await m.go(blocker(release, trace, "first"), id="worker")
        with pytest.raises(ValueError, match="worker"):
            await m.go(blocker(release, trace, "second"), id="worker")
        with pytest.raises(ValueError, match="worker"):
            m.try_go(blocker(release, trace, "third"), id="worker")
        assert m.stats().active == 1 and m.stats().total == 1  # the refused ones took no slot
        release.set()
        await first.wait()
        again = await m.go(blocker(release, trace, "again"), id="worker")
        assert again.id == "worker"
        await again.wait()
    assert "second.start" not in trace and "third.start" not in trace


async def test_stats_list_active_routines_with_id_tags_age_and_state() -> None:
    release = anyio.Event()
    trace: list[str] = []
    async with Machine(name="m") as m:
        a = await m.go(blocker(release, trace, "a"), id="a", tags=("publish", "x"))
        await m.go(blocker(release, trace, "b"), id="b")
        done = await m.go(blocker(_set(anyio.Event()), trace, "done"), id="done")
        await done.wait()
        await wait_until(lambda: "a.start" in trace and "b.start" in trace)
        await anyio.sleep(0.01)
        s = m.stats()
        by_id = {info.id: info for info in s.routines}
        assert set(by_id) == {"a", "b"}  # active routines only
        assert by_id["a"].tags == ("publish", "x") and by_id["b"].tags == ()
        assert all(info.state == "running" for info in s.routines)
        assert all(isinstance(info.age, float) and info.age > 0 for info in s.routines)
        assert (s.active, s.total) == (2, 3)
        assert a.tags == ("publish", "x")
        release.set()
    s = m.stats()
    assert (s.active, s.total, s.routines) == (0, 3, ())


# -- errors -----------------------------------------------------------------------------


async def test_a_routine_error_does_not_cancel_its_siblings() -> None:
    failed = anyio.Event()
    trace: list[str] = []

    async def fails() -> None:
        trace.append("fails")
        raise Boom("one")

    async def sibling() -> str:
        await failed.wait()
        await anyio.sleep(0.01)
        trace.append("sibling.end")
        return "alive"

    with anyio.fail_after(10), pytest.raises(ExceptionGroup) as info:
        async with Machine() as m:
            s = await m.go(sibling)
            f = await m.go(fails)
            await wait_until(lambda: f.done)
            failed.set()
            assert await s.wait() == "alive"
            later = await m.go(sibling)  # the machine still takes routines
            assert await later.wait() == "alive"
    assert [str(e) for e in leaves(info.value)] == ["one"]
    assert (s.state, f.state, later.state) == ("done", "failed", "done")
    assert m.stats().errors == 1


async def test_wait_raises_every_error_of_150_failing_routines_then_resets() -> None:
    def fails(i: int) -> Callable[[], Any]:
        async def fn() -> None:
            await anyio.sleep(0)
            raise Boom(i)

        return fn

    with anyio.fail_after(20):
        try:
            async with Machine(max_routines=10) as m:
                routines = [await m.go(fails(i)) for i in range(150)]
                with pytest.raises(ExceptionGroup) as info:
                    await m.wait()
                errors = leaves(info.value)
                assert len(errors) == 150  # none dropped, none twice
                assert all(isinstance(e, Boom) for e in errors)
                assert sorted(e.args[0] for e in errors) == list(range(150))
                await m.wait()  # returns: only errors since the last wait() are raised
                ok = await m.go(_set_value)
                await m.wait()
                assert await ok.wait() == "ok"
        except ExceptionGroup as again:  # leaving may report them once more, never new ones
            assert all(isinstance(e, Boom) for e in leaves(again))
    assert all(r.state == "failed" for r in routines)
    assert m.stats().errors == 150


async def _set_value() -> str:
    return "ok"


async def test_leaving_the_block_raises_every_routine_error() -> None:
    def fails(i: int) -> Callable[[], Any]:
        async def fn() -> None:
            await anyio.sleep(0.001 * (i % 3))
            raise Boom(i)

        return fn

    with anyio.fail_after(20), pytest.raises(ExceptionGroup) as info:
        async with Machine() as m:
            for i in range(150):
                await m.go(fails(i))
            await m.go(_set_value)
    errors = leaves(info.value)
    assert sorted(e.args[0] for e in errors) == list(range(150))
    assert m.stats().total == 151


async def test_leaving_the_block_waits_for_every_routine() -> None:
    trace: list[str] = []

    def slow(name: str, steps: int) -> Callable[[], Any]:
        async def fn() -> None:
            for _ in range(steps):
                await anyio.sleep(0.005)
            trace.append(name)

        return fn

    with anyio.fail_after(10):
        async with Machine(max_routines=2) as m:
            routines = [await m.go(slow(str(i), i % 4 + 1)) for i in range(6)]
            child = m.sub("child")
            routines.append(await child.go(slow("child", 5)))
        trace.append("exited")
    assert trace[-1] == "exited" and sorted(trace[:-1]) == sorted(["0", "1", "2", "3", "4", "5", "child"])
    assert all(r.state == "done" for r in routines)


async def test_a_body_error_cancels_every_routine_and_propagates() -> None:
    trace: list[str] = []
    with anyio.fail_after(10), pytest.raises(Boom, match="body"):
        async with Machine(max_routines=5) as m:
            a = await m.go(blocker(anyio.Event(), trace, "a"))
            child = m.sub("child")
            b = await child.go(blocker(anyio.Event(), trace, "b"))
            await wait_until(lambda: "a.start" in trace and "b.start" in trace)
            raise Boom("body")
    assert a.state == "cancelled" and b.state == "cancelled"
    assert sorted(trace) == ["a.end", "a.start", "b.end", "b.start"]
    with pytest.raises(MachineError):
        await m.go(forever)


async def test_a_routine_error_is_logged_with_id_tags_and_exc_info(logs: list[dict[str, Any]]) -> None:
    boom = Boom("logged")

    async def fails() -> None:
        raise boom

    with pytest.raises(ExceptionGroup):
        async with Machine() as m:
            r = await m.go(fails, id="the-failing-one", tags=("tag-a", "tag-b"))
            await wait_until(lambda: r.done)
    errors = [e for e in logs if e.get("log_level") == "error" and mentions(e, "the-failing-one")]
    assert errors, logs

    def complete(entry: dict[str, Any]) -> bool:
        exc_info = entry.get("exc_info")
        carries = exc_info is boom or exc_info is True or (isinstance(exc_info, tuple) and exc_info[1] is boom)
        return carries and mentions(entry, "tag-a") and mentions(entry, "tag-b")

    assert any(complete(e) for e in errors), errors


async def test_go_outside_the_block_or_after_cancel_is_a_machine_error() -> None:
    m = Machine()
    with pytest.raises(MachineError):
        await m.go(forever)
    async with m:
        r = await m.go(forever)
        m.cancel()
        with pytest.raises(MachineError):
            await m.go(forever)
        await r.wait()
        assert r.state == "cancelled"
    with pytest.raises(MachineError):
        await m.go(forever)
    async with Machine() as closed_after:
        pass
    with pytest.raises(RuntimeError):  # MachineError is a RuntimeError
        await closed_after.go(forever)


# -- bad arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, False, 1.5, "3"])
def test_bad_max_routines_is_refused_naming_the_argument(value: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="max_routines"):
        Machine(max_routines=value)


@pytest.mark.parametrize("value", [0, -1, math.nan, -math.inf, "1"])
async def test_a_bad_go_timeout_is_refused_naming_the_argument(value: Any) -> None:
    trace: list[str] = []
    async with Machine(max_routines=1) as m:
        with pytest.raises((ValueError, TypeError), match="timeout"):
            await m.go(blocker(anyio.Event(), trace, "r"), timeout=value)
        with pytest.raises((ValueError, TypeError), match="timeout"):
            m.try_go(blocker(anyio.Event(), trace, "r"), timeout=value)
        assert m.stats().total == 0
        ok = m.try_go(blocker(_set(anyio.Event()), trace, "ok"))  # the refused calls leaked no slot
        assert ok is not None
    assert "r.start" not in trace


def plain(r: Any = None) -> None:
    """A plain function: not a routine."""


async def two_args(a: Any, b: Any) -> None:
    """An async function that takes more than the routine."""


@pytest.mark.parametrize(
    "fn", [plain, lambda: None, 42, None, "fn", two_args], ids=["def", "lambda", "int", "none", "str", "two-args"]
)
async def test_a_plain_or_non_callable_fn_is_a_type_error_at_go(fn: Any) -> None:
    async with Machine(max_routines=1) as m:
        with pytest.raises(TypeError):
            await m.go(fn)
        with pytest.raises(TypeError):
            m.try_go(fn)
        assert m.stats().total == 0 and m.stats().active == 0
        assert m.try_go(_set_value) is not None  # no slot leaked


@pytest.mark.parametrize("value", [0, -1, 1.5, "8"])
def test_a_bad_machine_buffer_is_refused(value: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="buffer"):
        Machine(buffer=value)


async def test_a_bad_subscribe_buffer_or_overflow_is_refused() -> None:
    async with Machine() as m:
        with pytest.raises((ValueError, TypeError), match="buffer"):
            m.subscribe("a", print, buffer=0)
        with pytest.raises((ValueError, TypeError), match="buffer"):
            m.subscribe("a", print, buffer=-3)
        with pytest.raises(ValueError, match="overflow"):
            m.subscribe("a", print, overflow="drop_newest")  # type: ignore[arg-type]
        assert m.stats().subscriptions == 0


async def test_bad_sub_machine_names_are_refused() -> None:
    async with Machine() as m:
        m.sub("child")
        with pytest.raises(ValueError, match="child"):
            m.sub("child")
        with pytest.raises((ValueError, TypeError)):
            m.sub("")
        with pytest.raises((ValueError, TypeError)):
            m.sub(3)  # type: ignore[arg-type]
        with pytest.raises((ValueError, TypeError), match="max_routines"):
            m.sub("other", max_routines=0)
        assert set(m.stats().subs) == {"child"}


@pytest.mark.parametrize("expr", ["bad expr", "", "* * *", "61 * * * *"])
def test_a_bad_cron_expression_is_a_value_error_at_cron(expr: str) -> None:
    with pytest.raises(ValueError):
        cron(expr)


@pytest.mark.parametrize("attempts", [0, -1])
def test_retry_needs_at_least_one_attempt(attempts: int) -> None:
    with pytest.raises(ValueError):
        retry(attempts)


# -- sub-machines ---------------------------------------------------------------------------


async def test_cancelling_the_parent_cascades_to_its_children() -> None:
    trace: list[str] = []
    with anyio.fail_after(10):
        async with Machine() as m:
            child = m.sub("child")
            grandchild = child.sub("grandchild")
            p = await m.go(blocker(anyio.Event(), trace, "p"))
            c = await child.go(blocker(anyio.Event(), trace, "c"))
            g = await grandchild.go(blocker(anyio.Event(), trace, "g"))
            await wait_until(lambda: len(trace) == 3)
            m.cancel()
            await m.wait()
            assert (p.state, c.state, g.state) == ("cancelled", "cancelled", "cancelled")
            for machine in (m, child, grandchild):
                with pytest.raises(MachineError):
                    await machine.go(forever)


async def test_cancelling_a_child_leaves_the_parent_running() -> None:
    trace: list[str] = []
    release = anyio.Event()
    with anyio.fail_after(10):
        async with Machine() as m:
            child = m.sub("child")
            p = await m.go(blocker(release, trace, "p"))
            c = await child.go(blocker(anyio.Event(), trace, "c"))
            await wait_until(lambda: len(trace) == 2)
            child.cancel()
            await child.wait()
            assert c.state == "cancelled"
            assert p.state == "running"
            with pytest.raises(MachineError):
                await child.go(forever)
            q = await m.go(blocker(release, trace, "q"))  # the parent still takes routines
            release.set()
    assert (p.state, q.state) == ("done", "done")


async def test_a_sub_machine_shares_its_parents_budget() -> None:
    release = anyio.Event()
    trace: list[str] = []
    async with Machine(max_routines=2) as m:
        child = m.sub("child")  # no limit of its own
        assert await m.go(blocker(release, trace, "p")) is not None
        assert child.try_go(blocker(release, trace, "c1")) is not None
        assert child.try_go(blocker(release, trace, "c2")) is None  # the parent's 2 are taken
        assert m.try_go(blocker(release, trace, "p2")) is None
        grandchild = child.sub("grandchild", max_routines=5)
        assert grandchild.try_go(blocker(release, trace, "g")) is None
        release.set()
    assert "c2.start" not in trace and "p2.start" not in trace and "g.start" not in trace


async def test_a_sub_machines_own_limit_applies_too() -> None:
    release = anyio.Event()
    trace: list[str] = []
    peak = 0
    active = 0

    def work(i: int) -> Callable[[], Any]:
        async def fn() -> None:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await anyio.sleep(0.002)
            active -= 1

        return fn

    with anyio.fail_after(10):
        async with Machine(max_routines=10) as m:
            child = m.sub("child", max_routines=2)
            assert child.try_go(blocker(release, trace, "a")) is not None
            assert child.try_go(blocker(release, trace, "b")) is not None
            assert child.try_go(blocker(release, trace, "c")) is None
            assert m.try_go(blocker(release, trace, "p")) is not None  # the parent has room
            assert child.stats().max_routines == 2
            release.set()
            await m.wait()
            for i in range(20):
                await child.go(work(i))
    assert peak == 2
    assert child.stats().total == 22


async def test_stats_count_a_subs_routines_in_the_sub() -> None:
    release = anyio.Event()
    trace: list[str] = []
    async with Machine(name="root") as m:
        child = m.sub("child")
        await m.go(blocker(release, trace, "p"), id="p")
        await child.go(blocker(release, trace, "c1"), id="c1")
        await child.go(blocker(release, trace, "c2"), id="c2")
        s = m.stats()
        assert (s.active, s.total) == (1, 1)
        assert {i.id for i in s.routines} == {"p"}
        assert set(s.subs) == {"child"}
        c = s.subs["child"]
        assert isinstance(c, MachineStats)
        assert (c.active, c.total) == (2, 2)
        assert {i.id for i in c.routines} == {"c1", "c2"}
        assert child.stats().active == 2
        release.set()
    s = m.stats()
    assert (s.active, s.subs["child"].active, s.subs["child"].total) == (0, 0, 2)


async def test_wait_includes_children_and_their_errors() -> None:
    trace: list[str] = []

    async def slow_child() -> None:
        await anyio.sleep(0.02)
        trace.append("child.end")

    async def failing_grandchild() -> None:
        await anyio.sleep(0.01)
        raise Boom("grandchild")

    with anyio.fail_after(10):
        try:
            async with Machine() as m:
                child = m.sub("child")
                grandchild = child.sub("grandchild")
                await child.go(slow_child)
                await grandchild.go(failing_grandchild)
                with pytest.raises(ExceptionGroup) as info:
                    await m.wait()
                trace.append("waited")
                assert [str(e) for e in leaves(info.value)] == ["grandchild"]
        except ExceptionGroup as again:
            assert [str(e) for e in leaves(again)] == ["grandchild"]
    assert trace == ["child.end", "waited"]


async def test_a_child_routine_error_does_not_cancel_the_parent_or_siblings() -> None:
    release = anyio.Event()
    trace: list[str] = []

    async def fails() -> None:
        raise Boom("child")

    with pytest.raises(ExceptionGroup) as info:
        async with Machine() as m:
            child = m.sub("child")
            p = await m.go(blocker(release, trace, "p"))
            s = await child.go(blocker(release, trace, "s"))
            f = await child.go(fails)
            await wait_until(lambda: f.done)
            assert p.state == "running" and s.state == "running"
            release.set()
    assert [str(e) for e in leaves(info.value)] == ["child"]
    assert (p.state, s.state, f.state) == ("done", "done", "failed")


# -- middlewares ------------------------------------------------------------------------


async def test_recover_logs_counts_and_ends_done(logs: list[dict[str, Any]]) -> None:
    async def panics() -> None:
        raise Boom("panic")

    with anyio.fail_after(10):
        async with Machine() as m:
            r = await m.go(panics, id="panicky", middlewares=[recover()])
            assert await r.wait() is None
            await m.wait()  # not collected as an error
    assert (r.state, r.error) == ("done", None)
    s = m.stats()
    assert (s.recovered, s.errors) == (1, 0)
    entries = [e for e in logs if e.get("log_level") == "error" and mentions(e, "panicky")]
    assert entries, logs  # never silent
    assert any(mentions(e, "panic") or e.get("exc_info") is not None for e in entries), entries


async def test_recover_inside_every_keeps_a_panicking_routine_running() -> None:
    """The seed's WithMiddlewares(PanicRecover()) with a ticker: each panic is recovered, the ticks go on."""
    calls = 0

    async def panics() -> None:
        nonlocal calls
        calls += 1
        raise Boom(calls)

    # Captured, not rendered: a console traceback per panic (rich's, where installed) can take
    # longer than the ticks this counts.
    with anyio.fail_after(10), structlog.testing.capture_logs():
        async with Machine() as m:
            r = await m.go(panics, id="ticker", timeout=0.15, middlewares=[every(0.01), recover()])
            await r.wait()
    assert r.state == "timed_out"
    s = m.stats()
    assert calls >= 3 and s.recovered == calls and s.errors == 0


async def test_errors_go_to_the_logger_given_to_the_machine(logs: list[dict[str, Any]]) -> None:
    async def fails() -> None:
        raise Boom("to my logger")

    with pytest.raises(ExceptionGroup):
        async with Machine(logger=structlog.get_logger().bind(mine="yes")) as m:
            child = m.sub("child")
            r = await m.go(fails, id="r1")
            c = await child.go(fails, id="c1")
            await wait_until(lambda: r.done and c.done)
    for rid in ("r1", "c1"):
        entries = [e for e in logs if e.get("log_level") == "error" and mentions(e, rid)]
        assert entries and all(e.get("mine") == "yes" for e in entries), (rid, logs)


async def test_recover_does_not_swallow_cancellation() -> None:
    trace: list[str] = []
    async with Machine() as m:
        r = await m.go(blocker(anyio.Event(), trace, "r"), middlewares=[recover()])
        await wait_until(lambda: "r.start" in trace)
        r.cancel()
        await r.wait()
        t = await m.go(blocker(anyio.Event(), trace, "t"), middlewares=[recover()], timeout=0.03)
        await t.wait()
    assert (r.state, t.state) == ("cancelled", "timed_out")
    assert m.stats().recovered == 0


async def test_every_runs_repeatedly_until_the_routines_timeout() -> None:
    calls: list[str] = []

    async def publish(r: Routine) -> None:
        calls.append(r.id)

    with anyio.fail_after(10):
        async with Machine() as m:
            r = await m.go(publish, id="publisher", tags=("publish",), timeout=0.2, middlewares=[every(0.01)])
            assert await r.wait() is None
    assert r.state == "timed_out" and r.error is None
    assert len(calls) >= 3 and set(calls) == {"publisher"}
    assert m.stats().errors == 0


async def test_every_runs_at_once_and_then_each_interval() -> None:
    calls: list[int] = []

    async def tick() -> None:
        calls.append(1)

    async with Machine() as m:
        r = await m.go(tick, timeout=0.1, middlewares=[every(30)])
        await r.wait()
    assert calls == [1]  # the first call does not wait an interval
    assert r.state == "timed_out"


async def test_every_calls_never_overlap_and_end_on_cancel() -> None:
    active = 0
    peak = 0
    calls = 0

    async def slow() -> None:
        nonlocal active, peak, calls
        active += 1
        calls += 1
        peak = max(peak, active)
        await anyio.sleep(0.015)
        active -= 1

    with anyio.fail_after(10):
        async with Machine() as m:
            r = await m.go(slow, middlewares=[every(0.005)])
            await wait_until(lambda: calls >= 4)
            r.cancel()
            await r.wait()
    assert peak == 1
    assert r.state == "cancelled"


async def test_cron_with_seconds_runs_at_each_match_until_the_timeout() -> None:
    """The one slow test: a 6-field expression matching every second."""
    seconds: list[int] = []

    async def job() -> None:
        seconds.append(int(time.time()))

    with anyio.fail_after(10):
        async with Machine() as m:
            r = await m.go(job, id="cron-job", timeout=2.3, middlewares=[cron("* * * * * *")])
            await r.wait()
    assert r.state == "timed_out"
    assert len(seconds) >= 2, seconds
    assert seconds == sorted(set(seconds)), seconds  # one run per matching second


def test_cron_accepts_five_and_six_field_expressions() -> None:
    for expr in ("*/5 * * * *", "0 0 * * 1", "*/1 * * * * *"):
        mw = cron(expr)
        assert callable(mw)


async def test_retry_calls_until_success() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(len(calls))
        if len(calls) < 3:
            raise Boom(len(calls))
        return "ok"

    async with Machine() as m:
        r = await m.go(flaky, middlewares=[retry(3, backoff=0.001)])
        assert await r.wait() == "ok"
    assert calls == [0, 1, 2]
    assert r.state == "done"


async def test_retry_reraises_the_last_error_after_every_attempt() -> None:
    calls: list[int] = []

    async def always() -> None:
        calls.append(1)
        raise Boom(len(calls))

    with pytest.raises(ExceptionGroup) as info:
        async with Machine() as m:
            r = await m.go(always, middlewares=[retry(3, backoff=0.001)])
            await wait_until(lambda: r.done)
    assert len(calls) == 3
    assert r.state == "failed" and isinstance(r.error, Boom) and r.error.args == (3,)
    assert [e.args for e in leaves(info.value)] == [(3,)]


async def test_the_timeout_middleware_is_an_error_unlike_gos_timeout() -> None:
    calls: list[int] = []

    async def hangs() -> None:
        calls.append(1)
        await anyio.sleep_forever()

    with anyio.fail_after(10), pytest.raises(ExceptionGroup) as info:
        async with Machine() as m:
            r = await m.go(hangs, middlewares=[timeout(0.02)])
            s = await m.go(hangs, middlewares=[retry(2, backoff=0.001), timeout(0.02)])
            await wait_until(lambda: r.done and s.done)
    assert r.state == "failed" and isinstance(r.error, TimeoutError)
    assert s.state == "failed" and isinstance(s.error, TimeoutError)
    assert len(calls) == 3  # r once, s twice (retry outside, timeout per call)
    errors = leaves(info.value)
    assert len(errors) == 2 and all(isinstance(e, TimeoutError) for e in errors)


async def test_middlewares_wrap_with_the_first_outermost() -> None:
    trace: list[str] = []

    def mw(name: str) -> Callable[[Callable[[Routine], Any]], Callable[[Routine], Any]]:
        def wrap(fn: Callable[[Routine], Any]) -> Callable[[Routine], Any]:
            async def wrapped(r: Routine) -> Any:
                trace.append(f"{name}.in")
                result = await fn(r)
                trace.append(f"{name}.out")
                return f"{name}({result})"

            return wrapped

        return wrap

    async def fn() -> str:
        trace.append("fn")
        return "x"

    async with Machine() as m:
        r = await m.go(fn, middlewares=[mw("a"), mw("b")])
        assert await r.wait() == "a(b(x))"
    assert trace == ["a.in", "b.in", "fn", "b.out", "a.out"]
