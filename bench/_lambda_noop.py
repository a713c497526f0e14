"""The no-op Lambda function of bench/lambda.py, in both runtimes.

``python -m awslambdaric _lambda_noop.handler`` (with this directory on the
path) serves ``handler`` through AWS's runtime interface client;
``python bench/_lambda_noop.py async|sync [asyncio|trio]`` serves the same
no-op through an ``App`` with a ``LambdaListener`` (``async def handle``, or
a plain ``def handle`` on the listener's thread). ``python
bench/_lambda_noop.py httpx [asyncio|trio]`` is the floor of the listener's
HTTP client: a bare loop of ``GET next`` and ``POST response`` through one
``httpx.AsyncClient``, no framework. All answer ``null``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import httpx

from nacelle_py import App
from nacelle_py.base import LambdaContext, LambdaListener


def handler(event: Any, context: Any) -> None:
    """The no-op, as awslambdaric calls it."""
    return None


class AsyncNoOp(LambdaListener):
    async def handle(self, event: Any, context: LambdaContext) -> object:
        return None


class SyncNoOp(LambdaListener):
    def handle(self, event: Any, context: LambdaContext) -> object:
        return None


async def bare_httpx() -> None:
    """The Runtime API loop with httpx alone, until the API goes away."""
    base = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime/invocation/"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client:
        while True:
            try:
                event = await client.get(base + "next")
            except httpx.HTTPError:
                return
            await client.post(f"{base}{event.headers['lambda-runtime-aws-request-id']}/response", content=b"null")


def main(argv: list[str]) -> int:
    kind = argv[0] if argv else "async"
    backend = argv[1] if len(argv) > 1 else "asyncio"
    if kind == "httpx":
        anyio.run(bare_httpx, backend=backend)
        return 0
    app = App("bench")
    app.register(SyncNoOp() if kind == "sync" else AsyncNoOp(), name="noop", priority=1)
    return app.boot([], backend=backend)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
