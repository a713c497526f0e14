"""Binding the server's port, and saying why it failed in words a user can act on."""

from __future__ import annotations

import errno
import socket
from typing import Any

__all__ = ["add_port", "format_address", "why_not"]


def format_address(host: str, port: int) -> str:
    """``host:port`` as grpcio wants it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def why_not(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on, found by trying a plain socket (closed at once).

    grpcio says only "Failed to bind"; the operating system's answer is what
    tells a user whether the port is taken, privileged, or the host foreign.
    """
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        return f"the host does not resolve ({exc}); set GRPC_HOST to an address of this machine"
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.bind(addr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "the port is taken by another process: stop it, or choose another port with GRPC_PORT"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "ports below 1024 need privileges: choose a port >= 1024 with GRPC_PORT"
        if exc.errno == errno.EADDRNOTAVAIL:
            return "the host is not an address of this machine: fix GRPC_HOST (0.0.0.0 or :: for every interface)"
        return f"{exc.strerror}; check GRPC_HOST and GRPC_PORT"
    return "grpcio could not bind it; check GRPC_HOST and GRPC_PORT (GRPC_VERBOSITY=debug shows grpcio's reason)"


def add_port(server: Any, host: str, port: int) -> int:
    """Bind ``host:port`` on the grpc.aio server; the port bound, or ``OSError`` naming the address and the fix."""
    where = format_address(host, port)
    try:
        bound = server.add_insecure_port(where)
    except RuntimeError:  # recent grpcio raises; older versions return 0
        bound = 0
    if not bound:
        raise OSError(f"GRPCServer: cannot listen on {where}: {why_not(host, port)} (GRPC_HOST/GRPC_PORT)")
    return int(bound)
