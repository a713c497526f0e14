"""Binding the server's port, and saying why it failed in words a user can act on."""

from __future__ import annotations

from typing import Any

from ..._serving import BindError, format_address, listen

__all__ = ["add_port"]

SETTINGS = "GRPC_HOST/GRPC_PORT"


def add_port(server: Any, host: str, port: int) -> int:
    """Bind ``host:port`` on the grpc.aio server; the port bound, or ``BindError`` naming the address and the fix.

    grpcio says only "Failed to bind"; trying a plain socket on the same
    address (closed at once) gives the operating system's reason: the port
    is taken, privileged, or the host is not this machine's.
    """
    where = format_address(host, port)
    try:
        bound = server.add_insecure_port(where)
    except RuntimeError:  # recent grpcio raises; older versions return 0
        bound = 0
    if bound:
        return int(bound)
    listen(host, port, settings=SETTINGS).close()  # raises the explained BindError
    raise BindError(
        f"cannot listen on {where}: grpcio could not bind it; check {SETTINGS} "
        "(GRPC_VERBOSITY=debug shows grpcio's reason)"
    )
