"""A flow for the QA crash tests (tests/base/flows/test_qa_contract.py): killed with SIGKILL, then resumed.

    python tests/scripts/qa_flows_crash.py run|app SHAPE DB EFFECTS ENGINE FLOW_ID HANG [FAIL]

``run`` runs the flow with ``flows.run(..., persistence=flows.SQLiteStore(DB))``;
``app`` boots an App whose FlowRunner (store DB, engine ENGINE) is submitted
the flow at start. Every execute and revert inserts one row ``(call)`` into
the EFFECTS database once it is done, so the test counts how often each
effect was applied across the kill and the resume. HANG (``-`` for none) is
a comma list of calls (``C.execute``) that announce themselves on stderr
(``{"event": "hang", "call": ...}``) and then wait to be killed before
applying their effect; FAIL (a comma list) raise instead. Each applied
effect is announced as ``{"event": "done", "call": ...}``. A hung call that
nobody kills exits the process with status 3 after 60 s.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from typing import Any

import anyio

from nacelle_py import App, Inject, Process
from nacelle_py.base import FlowRunner, flows

HANG_LIMIT = 60.0

CONTROL: dict[str, set[str]] = {"hang": set(), "fail": set()}
"""Which calls hang or fail: set from argv in the child, by the test in its own process."""


def emit(event: str, **fields: Any) -> None:
    sys.stderr.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stderr.flush()


def effect(path: str, call: str) -> None:
    """One committed row per applied effect."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS effects (n INTEGER PRIMARY KEY AUTOINCREMENT, call TEXT NOT NULL)")
        conn.execute("INSERT INTO effects (call) VALUES (?)", (call,))
    finally:
        conn.close()


def effects(path: str) -> list[str]:
    """Every applied effect, in order."""
    if not os.path.exists(path):
        return []
    conn = sqlite3.connect(path, timeout=30)
    try:
        return [row[0] for row in conn.execute("SELECT call FROM effects ORDER BY n")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def _call(effects_path: str, call: str) -> None:
    if call in CONTROL["hang"]:
        emit("hang", call=call)
        await anyio.sleep(HANG_LIMIT)
        os._exit(3)
    if call in CONTROL["fail"]:
        raise RuntimeError(f"{call} failed on purpose")
    effect(effects_path, call)
    emit("done", call=call)


class Counted(flows.Task):
    """Applies (counts) one effect per execute and per revert."""

    def __init__(self, name: str) -> None:
        super().__init__(name, provides=f"{name}_out")

    async def execute(self, effects: str) -> str:
        await _call(effects, f"{self.name}.execute")
        return f"{self.name}-done"

    async def revert(self, effects: str, result: object) -> None:
        await _call(effects, f"{self.name}.revert")


def build(shape: str) -> flows.Flow:
    """``linear``: A, B, C, D in order; ``fan``: A, then B and C unordered, then D."""
    a, b, c, d = (Counted(n) for n in "ABCD")
    if shape == "linear":
        return flows.linear("qa-crash", a, b, c, d)
    if shape == "fan":
        return flows.linear("qa-crash", a, flows.unordered("mid", b, c), d)
    raise ValueError(f"unknown shape {shape!r}")


class Submitter(Process):
    """Submits one run of the flow at start, then idles."""

    runner: FlowRunner = Inject("runner")

    def __init__(self, flow_id: str, store: dict[str, Any]) -> None:
        self.flow_id = flow_id
        self.store = store

    async def run(self) -> None:
        await self.runner.submit("qa-crash", self.store, flow_id=self.flow_id)
        emit("submitted", flow_id=self.flow_id)
        await anyio.sleep_forever()


def main(argv: list[str]) -> None:
    mode, shape, db, effects_path, engine, flow_id, hang = argv[:7]
    fail = argv[7] if len(argv) > 7 else "-"
    CONTROL["hang"] = set() if hang == "-" else set(hang.split(","))
    CONTROL["fail"] = set() if fail == "-" else set(fail.split(","))
    flow = build(shape)
    store = {"effects": effects_path}
    if mode == "run":

        async def go() -> None:
            await flows.run(flow, store=store, engine=engine, persistence=flows.SQLiteStore(db), flow_id=flow_id)

        anyio.run(go, backend=os.environ.get("BACKEND", "asyncio"))
        emit("ended")
        return
    app = App("qaapp", parse_args=False)
    runner = FlowRunner([flow], store=db, engine=engine)
    app.register(runner, name="flows", priority=1)
    app.services.set("runner", runner)
    app.register(Submitter(flow_id, store), name="submitter", priority=2)
    app.boot()


if __name__ == "__main__":
    main(sys.argv[1:])
