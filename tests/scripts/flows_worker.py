"""A replica that runs the atoms of the flow ``relay`` for the worker-based engine, as a real App process.

    python tests/scripts/flows_worker.py

The Dispatcher takes its backend from the environment (``DISPATCHER_BACKEND``,
``REDIS_URL``, ``DISPATCHER_STREAM``, ``DISPATCHER_LEASE``), as a deployment
does, and ``BACKEND`` picks the event loop. ``FLOWS_TEST_DIR`` is where the
tasks leave their marks: each run appends ``<task> <pid>`` to ``runs.log``
(one unbuffered append: nothing is lost to a SIGKILL right after), and the
first run of ``Slow`` writes its pid to ``slow-started`` and then hangs, so
that the test can kill the replica in the middle of it. A later run of
``Slow`` (in the replica that reclaims it) finishes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import append_line

from nacelle_py import App
from nacelle_py.base import Dispatcher, flows


def _dir() -> Path:
    return Path(os.environ["FLOWS_TEST_DIR"])


def mark(task: str) -> None:
    """Append ``<task> <pid>`` to runs.log in one write."""
    append_line(_dir() / "runs.log", f"{task} {os.getpid()}")


class First(flows.Task):
    provides = "a"

    def execute(self, x: int) -> int:
        mark("First")
        return x + 1


class Slow(flows.Task):
    provides = "b"

    def execute(self, a: int) -> int:
        started = _dir() / "slow-started"
        first = not started.exists()
        mark("Slow")
        if first:
            started.write_text(str(os.getpid()))
            time.sleep(120)  # killed here by the test
        return a * 10


class Last(flows.Task):
    provides = "c"

    async def execute(self, b: int) -> int:
        mark("Last")
        return b + 1


FLOW = flows.linear("relay", First(), Slow(), Last())


def build_app() -> App:
    """The replica: a Dispatcher (from the environment) that serves FLOW's atoms."""
    app = App("flowsworker")
    jobs = Dispatcher(max_workers=4)
    flows.serve(jobs, FLOW)
    app.register(jobs, name="jobs", priority=0)
    return app


if __name__ == "__main__":
    build_app().boot()
