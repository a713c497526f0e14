"""The gRPC health checking service (grpc.health.v1.Health) as the app's health reports it.

Imported only once ``grpc_health`` is known to be installed. The reference
servicer of ``grpc_health`` is not used, for one reason: its ``Watch``
streams never end, so every client watching the health (Envoy, a gRPC
client's health checking) would hold a graceful stop for the whole grace
period and then be cancelled. Here a stop ends each ``Watch`` stream right
after it sent ``NOT_SERVING``, so only real RPCs count against the grace.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["HealthService"]

SERVING: Any = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Any = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: Any = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
OVERALL = ""
"""The service name that stands for the whole server (the gRPC health protocol's convention)."""


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """Answers ``Check`` and ``Watch`` from a table that ``apply`` replaces; ``close`` ends it for good.

    Everything runs on the server's event loop: ``apply`` and ``close`` are
    plain functions called there, so the table never changes under a handler
    between two awaits. An asyncio.Event (grpcio runs its handlers as asyncio
    tasks, outside any anyio task group) is replaced on every change, so one
    ``set()`` wakes every watcher and none can miss a change.
    """

    def __init__(self) -> None:
        self._statuses: dict[str, Any] = {OVERALL: NOT_SERVING}
        self._changed = asyncio.Event()
        self._closed = False

    def statuses(self) -> dict[str, Any]:
        """The current table: service name to serving status."""
        return dict(self._statuses)

    def apply(self, overall: bool, services: Mapping[str, bool]) -> None:
        """Set the whole table: ``""`` from ``overall``, and one entry per service; ignored once closed."""
        if self._closed:
            return
        table = {OVERALL: SERVING if overall else NOT_SERVING}
        for name, healthy in services.items():
            table.setdefault(name, SERVING if healthy else NOT_SERVING)
        if table != self._statuses:
            self._statuses = table
            self._wake()

    def close(self) -> None:
        """Report ``NOT_SERVING`` for every service from now on, and end the ``Watch`` streams."""
        if self._closed:
            return
        self._closed = True
        self._statuses = dict.fromkeys(self._statuses, NOT_SERVING)
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the protocol's method name
        """The status of one service; ``NOT_FOUND`` for a name the app does not know."""
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        """The status of one service now and on every change; ends after ``NOT_SERVING`` once closed."""
        last = None
        while True:
            changed = self._changed  # taken before reading the table: a change after the read sets it
            status = self._statuses.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._closed:
                return
            await changed.wait()
