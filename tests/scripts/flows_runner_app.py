"""An App with a FlowRunner that keeps its flows in SQLite, for the kill -9 and restart tests.

    python tests/scripts/flows_runner_app.py

``FLOWS_STORE`` (the runner's SQLite file) and ``BACKEND`` come from the
environment. With ``RUNNER_TEST_SUBMIT=1`` a process submits one run of the
flow ``ship`` at start. ``RUNNER_TEST_DIR`` is where the tasks leave their
marks: every run of a task appends ``<task>`` to ``runs.log``; ``Pack``
hangs while the file ``hold`` exists (the test kills the app there, then
removes it before the restart).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
from harness import append_line

from nacelle_py import App, Inject, Process
from nacelle_py.base import FlowRunner, flows


def _dir() -> Path:
    return Path(os.environ["RUNNER_TEST_DIR"])


def mark(task: str) -> None:
    """Append ``<task>`` to runs.log in one write (nothing lost to a SIGKILL right after)."""
    append_line(_dir() / "runs.log", f"{task}")


class Pick(flows.Task):
    provides = "picked"

    async def execute(self, order: str) -> str:
        mark("Pick")
        return f"picked {order}"


class Pack(flows.Task):
    provides = "packed"

    def execute(self, picked: str) -> str:
        mark("Pack")
        while (_dir() / "hold").exists():
            time.sleep(0.02)
        return f"packed ({picked})"


class Ship(flows.Task):
    provides = "shipped"

    async def execute(self, packed: str) -> str:
        mark("Ship")
        return f"shipped ({packed})"


SHIP = flows.linear("ship", Pick(), Pack(), Ship())


class Submitter(Process):
    """Submits one run of ``ship`` at start (RUNNER_TEST_SUBMIT=1), then idles."""

    runner: FlowRunner = Inject("runner")

    async def run(self) -> None:
        if os.environ.get("RUNNER_TEST_SUBMIT") == "1":
            flow_id = await self.runner.submit("ship", {"order": "o-7"}, flow_id="order-o-7")
            values = await self.runner.result(flow_id, timeout=60)
            mark(f"done:{values['shipped']}")
        await anyio.sleep_forever()


def build_app() -> App:
    """The app: the runner at priority 1, the submitter after it."""
    app = App("runnerapp")
    runner = FlowRunner([SHIP])
    app.register(runner, name="flows", priority=1)
    app.services.set("runner", runner)
    app.register(Submitter(), name="submitter", priority=2)
    return app


if __name__ == "__main__":
    build_app().boot()
