"""GRPCServer: grpcio's asyncio server as a process, with a health service that mirrors the app's health.

This is the one place in nacelle_py where asyncio-specific code is allowed:
grpcio's server API (``grpc.aio``) runs on asyncio only, so ``GRPCServer``
refuses the trio backend with a clear error instead of failing obscurely.
grpcio is an optional dependency (``pip install 'nacelle-py[grpc]'``): it is
imported when a ``GRPCServer`` is built, never when this package is, so
``GRPCSettings`` (and ``--help``) work without it.
"""

from __future__ import annotations

from ._server import GRPCServer
from ._settings import GRPCSettings

__all__ = ["GRPCServer", "GRPCSettings"]
