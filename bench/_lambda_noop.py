"""The no-op Lambda function of bench/lambda.py, in both runtimes.

``python -m awslambdaric _lambda_noop.handler`` (with this directory on the
path) serves ``handler`` through AWS's runtime interface client;
``python bench/_lambda_noop.py async|sync [asyncio|trio]`` serves the same
no-op through an ``App`` with a ``LambdaListener`` (``async def handle``, or
a plain ``def handle`` on the listener's thread). ``python
bench/_lambda_noop.py httpx [asyncio|trio]`` is the floor of the listener's
HTTP client: a bare loop of ``GET next`` and ``POST response`` through one
``httpx.AsyncClient``, no framework. ``python bench/_lambda_noop.py raw
[asyncio|trio]`` is the floor of any runtime on an anyio event loop: the
same loop over the least HTTP/1.1 that serves this server (one keep-alive
connection, requests written by hand, replies read by ``Content-Length``),
no client library at all. All answer ``null``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import anyio.abc
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


async def bare_streams() -> None:
    """The Runtime API loop on one anyio TCP stream and hand-written HTTP/1.1, until the API goes away."""
    host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)
    path = b"/2018-06-01/runtime/invocation/"
    buffer = b""

    async def exchange(stream: anyio.abc.SocketStream, request: bytes) -> tuple[bytes, bytes]:
        nonlocal buffer
        await stream.send(request)
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive()
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(buffer) < length:
            buffer += await stream.receive()
        body, buffer = buffer[:length], buffer[length:]
        return head, body

    try:
        async with await anyio.connect_tcp(host, int(port)) as stream:
            while True:
                head, _ = await exchange(stream, b"GET %snext HTTP/1.1\r\nHost: lambda\r\n\r\n" % path)
                request_id = next(
                    line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"lambda-runtime-aws-request-id:")
                )
                await exchange(
                    stream,
                    b"POST %s%s/response HTTP/1.1\r\nHost: lambda\r\nContent-Length: 4\r\n\r\nnull"
                    % (path, request_id),
                )
    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
        return


def main(argv: list[str]) -> int:
    kind = argv[0] if argv else "async"
    backend = argv[1] if len(argv) > 1 else "asyncio"
    if kind in ("httpx", "raw"):
        anyio.run(bare_httpx if kind == "httpx" else bare_streams, backend=backend)
        return 0
    app = App("bench")
    app.register(SyncNoOp() if kind == "sync" else AsyncNoOp(), name="noop", priority=1)
    return app.boot([], backend=backend)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
