"""An app whose process crashes once it is ready and then waits a 30 s backoff (test_restart_qa.py).

    python tests/scripts/qa_restart_backoff.py BACKEND

Logs JSON to stderr (LOG_ENCODING=json); a SIGTERM during the backoff should end the
wait at once and exit 0.
"""

from __future__ import annotations

import sys

import anyio

from nacelle_py import App, Process


class Crasher(Process):
    """Raises once the app is ready (its first incarnation only)."""

    def __init__(self) -> None:
        self.ready = False
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            while not self.ready:
                await anyio.sleep(0.01)
            raise RuntimeError("crash on demand")
        await anyio.sleep_forever()


class Steady(Process):
    """Keeps the app running while the crasher waits its backoff."""

    async def run(self) -> None:
        await anyio.sleep_forever()


def build_app() -> App:
    app = App("qa")
    app.register(Steady(), name="steady")
    crasher = app.register(Crasher(), name="crasher", restart="on_failure", backoff=(30.0, 30.0))
    app.on_ready(lambda: setattr(crasher, "ready", True))
    return app


if __name__ == "__main__":
    raise SystemExit(build_app().boot(["--backend", sys.argv[1]]))
