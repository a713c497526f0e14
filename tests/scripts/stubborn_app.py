"""An app whose process ignores stop(): its run never returns on its own.

    python tests/scripts/stubborn_app.py BACKEND MODE [SHUTDOWN_TIMEOUT]

BACKEND is asyncio or trio. MODE is ``async`` (run awaits forever; only
cancellation ends it), ``thread`` (a plain ``def run`` sleeping 60 s in a
worker thread, which nothing can interrupt) or ``shielded`` (an async run
that shields itself from cancellation for 60 s). SHUTDOWN_TIMEOUT is the
process's shutdown_timeout in seconds (default 30, so a test that expects
a forced exit cannot pass by the timeout). An initializer with a finalizer
shows whether finalizers ran.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio

from nacelle_py import App, Initializer, Inject, Process


class Resource(Initializer):
    logger: Any = Inject("logger")

    async def init(self) -> None:
        self.logger.info("resource acquired")

    async def finalize(self) -> None:
        self.logger.info("resource released")


class StubbornAsync(Process):
    logger: Any = Inject("logger")

    async def run(self) -> None:
        await anyio.sleep_forever()

    async def stop(self) -> None:
        self.logger.info("stop ignored")


class StubbornThread(Process):
    logger: Any = Inject("logger")

    def run(self) -> None:
        self.logger.info("blocking in a worker thread")
        time.sleep(60)

    def stop(self) -> None:
        self.logger.info("stop ignored")


class StubbornShielded(Process):
    logger: Any = Inject("logger")

    async def run(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(60)

    async def stop(self) -> None:
        self.logger.info("stop ignored")


MODES: dict[str, type[Process]] = {"async": StubbornAsync, "thread": StubbornThread, "shielded": StubbornShielded}


def main(argv: list[str]) -> int:
    backend, mode = argv[0], argv[1]
    shutdown_timeout = float(argv[2]) if len(argv) > 2 else 30.0
    app = App("script")  # env prefix SCRIPT_
    app.register(Resource(), name="resource", priority=0)
    app.register(MODES[mode](), name="stubborn", priority=1, shutdown_timeout=shutdown_timeout)
    return app.boot([], backend=backend)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
