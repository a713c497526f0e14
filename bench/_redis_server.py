"""A throwaway ``redis-server`` for the benchmarks: a free port, no persistence, a blocking RESP client.

Shared by ``bench/redis_dispatcher.py`` and ``bench/pipeline.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = ["RedisServer", "Resp"]


class Resp:
    """A blocking RESP2 connection: enough of the protocol for polling and checks."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def commands(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send the commands in one write (a pipeline) and return their replies (an error reply as a RuntimeError)."""
        out = b""
        for args in commands:
            parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
            out += b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        self.sock.sendall(out)
        return [self._reply() for _ in commands]

    def command(self, *args: Any) -> Any:
        reply = self.commands(args)[0]
        if isinstance(reply, RuntimeError):
            raise reply
        return reply

    def _reply(self) -> Any:
        line = self.reader.readline()
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body
        if kind == b"-":
            return RuntimeError(body.decode(errors="replace"))
        if kind == b":":
            return int(body)
        if kind == b"$":
            return None if body == b"-1" else self.reader.read(int(body) + 2)[:-2]
        if kind == b"*":
            return None if body == b"-1" else [self._reply() for _ in range(int(body))]
        raise RuntimeError(f"unexpected reply {line!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class RedisServer:
    """``redis-server`` on a free port, no persistence, in a temporary directory."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server not found on PATH: install it (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = Resp(self.port)
                if conn.command("PING") == b"PONG":
                    self.conn = conn
                    break
                conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                sys.exit(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)
        self.version = self.info("server")["redis_version"]

    def info(self, section: str) -> dict[str, str]:
        text = self.conn.command("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    def cpu(self) -> float:
        """CPU seconds the server has used so far (user + system)."""
        info = self.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
