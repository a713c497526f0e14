"""The machine's budget and outcome properties under random load, on both backends.

A fixed tree (root, root.a, root.b, root.a.aa) with random limits takes random
jobs: spawned with go(), try_go() or a go() given up after a moment, with random
durations, failures, timeouts and cancels (some twice), and sometimes a whole
sub-machine is cancelled. Every routine samples, when it starts and at each step,
both its own tracker and the machines' stats: no machine may ever have more active
routines (its own plus its descendants') than its max_routines. Afterwards every
routine is in exactly one final state, the one its run explains.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from _support import Boom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacelle_py.base import Machine, MachineError, MachineStats, Routine

LIMIT = 10.0
PARENT = {1: 0, 2: 0, 3: 1}  # 0 root, 1 root.a, 2 root.b, 3 root.a.aa
NAMES = {1: "a", 2: "b", 3: "aa"}
FINAL = {"done", "failed", "cancelled", "timed_out"}


def chain(k: int) -> Iterator[int]:
    """``k`` and its ancestors."""
    while True:
        yield k
        if k == 0:
            return
        k = PARENT[k]


def subtree(k: int) -> set[int]:
    """``k`` and its descendants."""
    return {j for j in range(4) if k in chain(j)}


@dataclass(frozen=True)
class Job:
    machine: int
    spawn: str  # "go", "try_go", "give_up" (a go() cancelled after a moment)
    steps: int
    step: float
    fails: bool
    timeout: float | None
    cancel_after: float | None
    cancel_twice: bool


@dataclass(frozen=True)
class Scenario:
    limits: tuple[int | None, int | None, int | None, int | None]
    producers: list[list[Job]]
    cancel_machine: int | None  # a sub-machine cancelled during the run
    cancel_machine_after: float


jobs = st.builds(
    Job,
    machine=st.integers(0, 3),
    spawn=st.sampled_from(["go", "go", "try_go", "give_up"]),
    steps=st.integers(0, 3),
    step=st.sampled_from([0.0, 0.001, 0.003]),
    fails=st.booleans(),
    timeout=st.sampled_from([None, None, 0.002, 0.01, 0.05]),
    cancel_after=st.sampled_from([None, None, 0.0, 0.002, 0.01]),
    cancel_twice=st.booleans(),
)

scenarios = st.builds(
    Scenario,
    limits=st.tuples(
        st.sampled_from([None, 1, 2, 3, 4]),
        st.sampled_from([None, 1, 2, 3]),
        st.sampled_from([None, 1, 2]),
        st.sampled_from([None, 1, 2]),
    ),
    producers=st.lists(st.lists(jobs, max_size=8), min_size=1, max_size=3),
    cancel_machine=st.sampled_from([None, None, None, 1, 2, 3]),
    cancel_machine_after=st.sampled_from([0.0, 0.003, 0.01]),
)


def subtree_active(s: MachineStats) -> int:
    return s.active + sum(subtree_active(child) for child in s.subs.values())


def find(s: MachineStats, k: int) -> MachineStats:
    if k == 0:
        return s
    return find(s, PARENT[k]).subs[NAMES[k]]


def all_stats(s: MachineStats) -> Iterator[MachineStats]:
    yield s
    for child in s.subs.values():
        yield from all_stats(child)


async def scenario_run(sc: Scenario) -> None:
    violations: list[str] = []
    running: dict[int, set[int]] = {k: set() for k in range(4)}
    started: set[int] = set()
    outcome: dict[int, str] = {}  # "returned" / "raised", from inside the routine
    spawned: dict[int, Routine] = {}
    gave_up: set[int] = set()
    cancel_requested: set[int] = set()
    closed: set[int] = set()  # machines cancelled (a sub and its descendants)
    machines: list[Machine] = []
    spec_of: dict[int, Job] = {}
    in_go: set[int] = set()  # producers inside an await go()

    def check(where: str) -> None:
        root_stats = machines[0].stats()
        for k in range(4):
            limit = sc.limits[k]
            if limit is None:
                continue
            tracked = sum(len(running[j]) for j in subtree(k))
            counted = subtree_active(find(root_stats, k))
            if tracked > limit or counted > limit:
                violations.append(f"{where}: machine {k} limit {limit}: tracked {tracked}, stats {counted}")

    def body(jid: int, job: Job) -> Any:
        async def fn(r: Routine) -> None:
            started.add(jid)
            running[job.machine].add(jid)
            try:
                check(f"start of {jid}")
                for _ in range(job.steps):
                    await anyio.sleep(job.step)
                    check(f"step of {jid}")
                if job.fails:
                    outcome[jid] = "raised"
                    raise Boom(jid)
                outcome[jid] = "returned"
            finally:
                running[job.machine].discard(jid)

        return fn

    async def cancel_later(jid: int, r: Routine, delay: float, twice: bool) -> None:
        if delay:
            await anyio.sleep(delay)
        cancel_requested.add(jid)
        r.cancel()
        if twice:
            await anyio.sleep(0)
            r.cancel()

    async def producer(tg: anyio.abc.TaskGroup, offset: int, todo: list[Job]) -> None:
        for n, job in enumerate(todo):
            jid = offset + n
            spec_of[jid] = job
            m = machines[job.machine]
            kwargs: dict[str, Any] = {} if job.timeout is None else {"timeout": job.timeout}
            r: Routine | None = None
            try:
                if job.spawn == "try_go":
                    r = m.try_go(body(jid, job), **kwargs)
                    if r is None:
                        s = machines[0].stats()
                        full = any(
                            sc.limits[a] is not None and subtree_active(find(s, a)) >= sc.limits[a]
                            for a in chain(job.machine)
                        )
                        # A slot handed to a queued go() that has not returned yet is taken but not
                        # yet a running routine: that is the only "room" try_go may not use.
                        if not full and not in_go and not any(x.waiting for x in all_stats(s)):
                            violations.append(f"try_go({jid}) gave None with room on machine {job.machine}")
                elif job.spawn == "give_up":
                    in_go.add(jid)
                    try:
                        with anyio.move_on_after(0.002):
                            r = await m.go(body(jid, job), **kwargs)
                    finally:
                        in_go.discard(jid)
                    if r is None:
                        gave_up.add(jid)
                else:
                    in_go.add(jid)
                    try:
                        r = await m.go(body(jid, job), **kwargs)
                    finally:
                        in_go.discard(jid)
            except MachineError:
                if not closed & set(chain(job.machine)):
                    violations.append(f"go({jid}) raised MachineError on open machine {job.machine}")
                continue
            if r is not None:
                spawned[jid] = r
                check(f"after spawning {jid}")
                if job.cancel_after is not None:
                    tg.start_soon(cancel_later, jid, r, job.cancel_after, job.cancel_twice)
            await anyio.sleep(0)

    async def cancel_machine(k: int, delay: float) -> None:
        if delay:
            await anyio.sleep(delay)
        closed.update(subtree(k))
        machines[k].cancel()

    errors: list[BaseException] = []
    with anyio.fail_after(LIMIT):
        try:
            async with Machine(max_routines=sc.limits[0], name="root") as root:
                machines.append(root)
                a = root.sub("a", max_routines=sc.limits[1])
                machines.extend([a, root.sub("b", max_routines=sc.limits[2]), a.sub("aa", max_routines=sc.limits[3])])
                async with anyio.create_task_group() as tg:
                    if sc.cancel_machine is not None:
                        tg.start_soon(cancel_machine, sc.cancel_machine, sc.cancel_machine_after)
                    offset = 0
                    for todo in sc.producers:
                        tg.start_soon(producer, tg, offset, todo)
                        offset += len(todo)
        except ExceptionGroup as group:
            errors = list(group.exceptions)
            while any(isinstance(e, BaseExceptionGroup) for e in errors):
                errors = [leaf for e in errors for leaf in (e.exceptions if isinstance(e, BaseExceptionGroup) else [e])]

    assert violations == [], violations
    assert all(isinstance(e, Boom) for e in errors), errors  # not a producer's own failure
    assert started <= set(spawned), f"routines ran that no go()/try_go() returned: {started - set(spawned)}"
    assert not gave_up & started, f"a given-up go() still ran: {gave_up & started}"
    for jid, r in spawned.items():
        job = spec_of[jid]
        state = r.state
        assert state in FINAL and r.done, (jid, state)
        assert r.state == state  # final: it does not change
        ran_out = outcome.get(jid)
        machine_cancelled = bool(closed & set(chain(job.machine)))
        if ran_out == "returned":
            assert state == "done", (jid, job, state)
        elif ran_out == "raised":
            assert state == "failed" and isinstance(r.error, Boom) and r.error.args == (jid,), (jid, job, state)
        else:  # interrupted or never started: only a cancel or a timeout does that
            assert state in ("cancelled", "timed_out"), (jid, job, state)
            if job.timeout is None:
                assert state == "cancelled", (jid, job, state)
            if jid not in cancel_requested and not machine_cancelled:
                assert state == "timed_out", (jid, job, state)
    raised = sorted(jid for jid, how in outcome.items() if how == "raised")
    assert sorted(e.args[0] for e in errors if isinstance(e, Boom)) == raised
    final = machines[0].stats()
    for k in range(4):
        s = find(final, k)
        assert (s.active, s.waiting) == (0, 0), (k, s)
        assert s.total == sum(1 for jid in spawned if spec_of[jid].machine == k), (k, s.total)
        assert s.errors == sum(1 for jid in raised if spec_of[jid].machine == k), (k, s.errors)
    assert running == {k: set() for k in range(4)}


BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@BACKENDS
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios)
def test_no_machine_exceeds_its_budget_and_every_routine_ends_once(backend: str, sc: Scenario) -> None:
    anyio.run(scenario_run, sc, backend=backend)
