"""The ops endpoint's ASGI app: ``/livez``, ``/readyz``, ``/metrics``, ``/debug/components``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from ._status import Status

__all__ = ["OpsApp"]

Send = Callable[[Any], Awaitable[None]]
JSON = b"application/json"


class OpsApp:
    """Answers the probes from the Status readings; GET and HEAD only.

    ``/livez`` answers 200 whenever the loop that runs the supervisor is
    free to answer (it serves on that loop: a blocked loop fails the probe).
    ``/readyz`` answers 200 while supervising with every health key healthy,
    else 503 naming the unhealthy keys (and 503 all through boot and unwind).
    """

    def __init__(self, status: Status, render_metrics: Callable[[str], tuple[bytes, str]] | None) -> None:
        self.status = status
        self.render_metrics = render_metrics

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Any]], send: Send) -> None:
        if scope["type"] != "http":
            return  # the lifespan: nothing to start
        method = scope["method"]
        path = scope["path"].rstrip("/") or "/"
        if method not in ("GET", "HEAD"):
            body = _json({"error": "method not allowed; use GET"})
            await _respond(send, 405, body, JSON, method, [(b"allow", b"GET, HEAD")])
            return
        if path == "/livez":
            await _respond(send, 200, _json({"status": "alive", "phase": self.status.runner.phase}), JSON, method)
        elif path == "/readyz":
            ready, why = self.status.ready()
            await _respond(send, 200 if ready else 503, _json(why), JSON, method)
        elif path == "/metrics" and self.render_metrics is not None:
            accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), "")
            text, content_type = self.render_metrics(accept)
            await _respond(send, 200, text, content_type.encode(), method)
        elif path == "/debug/components":
            listing = _json({"phase": self.status.runner.phase, "components": self.status.components()})
            await _respond(send, 200, listing, JSON, method)
        else:
            paths = ["/livez", "/readyz", "/debug/components"] + (["/metrics"] if self.render_metrics else [])
            await _respond(send, 404, _json({"error": "not found", "paths": paths}), JSON, method)


def _json(body: Any) -> bytes:
    return json.dumps(body, default=str).encode() + b"\n"


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    method: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
