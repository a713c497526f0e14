"""Flows that a test kills with SIGKILL at chosen points, then resumes (tests/base/flows/test_crash_resume.py).

    python tests/base/flows/_crash_flow.py BACKEND MODE RIG

BACKEND is asyncio or trio; MODE is ``run`` (a new run of the flow) or
``resume`` (carry on the one unfinished run of the store); RIG is a ``Rig``
as JSON: which flow (``shape``), the flow store and the effects database,
which calls hang or fail, and where to stop.

Every task's execute and revert apply their effect by inserting a row
``(task, op, attempt, phase)`` into the effects database (``attempt`` is
the retry controller's attempt inside a retried subflow, 0 outside), so the
test counts how often each effect was applied across the crash and the
resume. The process tells the test where it is on stderr, one JSON object a
line: ``move`` for every transition (after the store recorded it), ``hang``
when a call starts waiting to be killed, ``stop`` when the listener stops
the loop at the transition ``Rig.stop`` names. Nothing waits forever: a
process nobody kills exits with status 3 after ``HANG`` seconds.

The test imports ``build`` to construct the same flow for its own resume.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from nacelle_py.base import flows

HANG = 60.0  # seconds a hung call or stop waits for its SIGKILL before the process gives up

SHAPES = ("linear", "retry", "fan", "nested")


@dataclass
class Rig:
    """What a flow of this module does in one process: its shape, its files, its hangs, failures and stop."""

    shape: str
    db: str  # the flows.SQLiteStore
    effects: str  # the effects database
    phase: str = "crash"  # recorded with every effect: which process applied it
    engine: str = "serial"
    hang: list[str] = field(default_factory=list)  # "Task.op" calls that wait to be killed
    fail: dict[str, list[int] | None] = field(default_factory=dict)  # "Task.op" -> the attempts that raise (None: all)
    stop: int | str | None = None  # the n-th transition (0: before the run), or "atom:STATE", blocks the loop
    attempts: int = 2  # the retry shapes' Times(attempts)
    backoff: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Rig:
        return cls(**json.loads(text))


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stderr for the test (flushed: the process may be killed right after)."""
    sys.stderr.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stderr.flush()


def record(path: str, task: str, op: str, attempt: int, phase: str) -> None:
    """Apply one effect: a row in the effects database, committed before the call returns."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS effects (n INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL, "
            "op TEXT NOT NULL, attempt INTEGER NOT NULL, phase TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO effects (task, op, attempt, phase) VALUES (?, ?, ?, ?)", (task, op, attempt, phase))
    finally:
        conn.close()


class Step(flows.Task):
    """A task whose execute and revert apply an effect, or hang, or raise, as its ``Rig`` says.

    It provides ``<name>_out``: its name with the values it needs, so the
    flow's result shows that values made before a crash reached the tasks
    run after it.
    """

    def __init__(self, name: str, rig: Rig, needs: tuple[str, ...] = (), attempt: str | None = None) -> None:
        super().__init__(
            name,
            provides=f"{name}_out",
            requires=tuple(f"{n}_out" for n in needs),
            rebind={"attempt": attempt} if attempt else None,
        )
        self.rig = rig
        self.needs = needs

    async def act(self, op: str, attempt: int) -> None:
        call = f"{self.name}.{op}"
        if call in self.rig.hang:
            emit("hang", call=call, attempt=attempt)
            await anyio.sleep(HANG)
            emit("never killed", call=call)
            os._exit(3)
        if call in self.rig.fail:
            attempts = self.rig.fail[call]
            if attempts is None or attempt in attempts:
                raise RuntimeError(f"{call} fails (attempt {attempt})")
        record(self.rig.effects, self.name, op, attempt, self.rig.phase)

    # ``attempt`` may come as None: with ``**inputs``, flows passes an optional parameter it has no
    # value for as None rather than leaving its default (reported on the flows branch).
    async def execute(self, attempt: int | None = 0, **inputs: Any) -> str:
        await self.act("execute", attempt or 0)
        return self.name + "(" + ",".join(str(inputs[f"{n}_out"]) for n in self.needs) + ")"

    async def revert(self, attempt: int | None = 0) -> None:
        await self.act("revert", attempt or 0)


def build(rig: Rig) -> flows.Flow:
    """The flow named by ``rig.shape`` (the same flow in the crashed process and in the resume)."""
    if rig.shape == "linear":  # A -> B -> C -> D -> E, each needing the one before
        names = "ABCDE"
        return flows.linear(
            "checkout", *(Step(n, rig, needs=(names[i - 1],) if i else ()) for i, n in enumerate(names))
        )
    if rig.shape == "retry":  # A, then B -> C retried as a subflow, then D -> E
        sub = flows.linear(
            "sub",
            Step("B", rig, needs=("A",), attempt="sub_attempt"),
            Step("C", rig, needs=("B",), attempt="sub_attempt"),
            retry=flows.Times(rig.attempts, backoff=rig.backoff, provides="sub_attempt"),
        )
        return flows.linear("retrying", Step("A", rig), sub, Step("D", rig, needs=("C",)), Step("E", rig, needs=("D",)))
    if rig.shape == "fan":  # A, then P1..P4 unordered, then Z needing all four
        fan = [Step(f"P{i}", rig, needs=("A",)) for i in range(1, 5)]
        return flows.linear(
            "fan-out", Step("A", rig), flows.unordered("fan", *fan), Step("Z", rig, needs=("P1", "P2", "P3", "P4"))
        )
    if rig.shape == "nested":  # A, then an outer retried subflow holding B and an inner retried C -> D, then E
        inner = flows.linear(
            "inner",
            Step("C", rig, needs=("B",), attempt="inner_attempt"),
            Step("D", rig, needs=("C",), attempt="inner_attempt"),
            retry=flows.Times(rig.attempts, backoff=rig.backoff, provides="inner_attempt"),
        )
        outer = flows.linear(
            "outer",
            Step("B", rig, needs=("A",), attempt="outer_attempt"),
            inner,
            retry=flows.Times(rig.attempts, backoff=rig.backoff, provides="outer_attempt"),
        )
        return flows.linear("nesting", Step("A", rig), outer, Step("E", rig, needs=("D",)))
    raise ValueError(f"unknown shape {rig.shape!r}; one of {SHAPES}")


class Stopper:
    """The listener: tells the test every move, and blocks the loop at ``rig.stop`` until the SIGKILL."""

    def __init__(self, stop: int | str | None) -> None:
        self.stop = stop
        self.count = 0

    def __call__(self, move: flows.Transition) -> None:
        self.count += 1
        atom = move.atom or "flow"
        failure = str(move.failure) if move.failure else None
        emit("move", n=self.count, atom=atom, old=str(move.old), new=str(move.new), failure=failure)
        if self.stop == self.count or self.stop == f"{atom}:{move.new}":
            self.block(self.count)

    def block(self, n: int) -> None:
        emit("stop", n=n)
        time.sleep(HANG)  # the loop stops here: nothing after this move happens before the kill
        emit("never killed", n=n)
        os._exit(3)


async def main(mode: str, rig: Rig) -> None:
    store = flows.SQLiteStore(rig.db)
    stopper = Stopper(rig.stop)
    flow = build(rig)
    if mode == "run":
        engine = flows.load(flow, engine=rig.engine, persistence=store, listeners=[stopper])
    else:
        (flow_id,) = store.unfinished()
        engine = flows.resumed(flow, flow_id, persistence=store, listeners=[stopper])
    emit("loaded", flow_id=engine.flow_id)
    if rig.stop == 0:
        stopper.block(0)
    try:
        await engine.run()
    except flows.FlowFailed as exc:
        emit("ended", state=str(exc.state))
    else:
        emit("ended", state=str(engine.state))


if __name__ == "__main__":
    backend, mode, text = sys.argv[1:4]
    anyio.run(main, mode, Rig.from_json(text), backend=backend)
