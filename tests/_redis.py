"""Throwaway ``redis-server`` processes for the tests: one per session, or one a test owns.

Every server here is started by these fixtures on a free 127.0.0.1 port, with no RDB
snapshots and its own data directory; nothing here ever connects to a Redis it did not
start (a system service on 6379, say), and it checks so: a server counts as started only
once ``INFO`` on its port reports the pid of the process we spawned.

Fixtures (registered in ``tests/conftest.py``):

* ``redis_server`` (session) - the shared :class:`RedisServer`, stopped at session end.
* ``redis_url`` (function) - that server's URL, after ``FLUSHALL`` (restarted if a test stopped it).
* ``redis_factory`` (function) - ``redis_factory(appendonly=True)`` starts a fresh server
  that the test owns (stop, kill, restart at will); every one is stopped at teardown.

Without a ``redis-server`` binary the tests that use them skip with one line saying how to
install it (one summary line for them all); with ``CI=true`` that is a failure instead,
so CI cannot go green by skipping the Redis tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Literal, Protocol

import pytest

__all__ = [
    "MISSING_SERVER",
    "RedisError",
    "RedisFactory",
    "RedisServer",
    "fold_missing_server_skip",
    "missing_server_outcome",
    "redis_factory",
    "redis_server",
    "redis_url",
    "require_redis_server",
]

MISSING_SERVER = (
    "redis-server not found on PATH: install it with `apt-get install redis-server` (`make test` as root does it)"
)
START_TIMEOUT = 10.0  # seconds until a started server must answer PING (an AOF reload included)
STOP_TIMEOUT = 10.0  # seconds a SIGTERM'd server gets to exit before it is SIGKILLed
PORT_ATTEMPTS = 5  # a free port can be taken between our check and the server's bind: try another

Reply = bytes | int | list["Reply"] | None


class RedisError(Exception):
    """An error reply (``-ERR ...``) or a failure to start or stop a test server."""


def missing_server_outcome(binary: str | None, environ: Mapping[str, str]) -> Literal["run", "skip", "fail"]:
    """What a Redis test does about the ``redis-server`` binary: run, skip, or (in CI) fail."""
    if binary is not None:
        return "run"
    return "fail" if environ.get("CI", "").lower() in ("true", "1") else "skip"


def require_redis_server() -> str:
    """The ``redis-server`` path; skips the test without one (fails it when ``CI=true``)."""
    binary = shutil.which("redis-server")
    outcome = missing_server_outcome(binary, os.environ)
    if outcome == "skip":
        pytest.skip(MISSING_SERVER)
    if outcome == "fail":
        pytest.fail(f"{MISSING_SERVER} (CI=true: a missing Redis fails the run)", pytrace=False)
    assert binary is not None
    return binary


def fold_missing_server_skip(report: pytest.TestReport) -> None:
    """Report a missing-server skip at one place, so ``-ra`` shows one line for all of them.

    pytest files a skip raised by a fixture under the test's own line, which would list one
    summary line per Redis test (and per backend); this files them all under this module.
    """
    if report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2].endswith(MISSING_SERVER):
        report.longrepr = (__file__, require_redis_server.__code__.co_firstlineno - 1, report.longrepr[2])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def command(port: int, *args: str | bytes | int, timeout: float = 5.0) -> Reply:
    """Send one command to 127.0.0.1:``port`` over a plain socket and return its parsed RESP2 reply.

    Enough of the protocol for the fixtures and their tests (PING, FLUSHALL, INFO, SET/GET),
    so the fixtures need no client library; ``-ERR`` replies raise :class:`RedisError`.
    """
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        with conn.makefile("rb") as reader:
            return _read_reply(reader)


def _read_reply(reader: IO[bytes]) -> Reply:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the server closed the connection mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        return None if body == b"-1" else reader.read(int(body) + 2)[:-2]
    if kind == b"*":
        return None if body == b"-1" else [_read_reply(reader) for _ in range(int(body))]
    raise RedisError(f"unexpected reply line {line!r}")


class RedisFactory(Protocol):
    """The ``redis_factory`` fixture: starts a server that the calling test owns."""

    def __call__(self, *, appendonly: bool = False) -> RedisServer: ...


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, restartable on the same port and data directory.

    ``url``/``host``/``port`` say where it listens; :meth:`flush` empties it; :meth:`stop`
    (SIGTERM: an AOF server writes everything out) or :meth:`kill` (SIGKILL: a crash) end it and
    :meth:`start` brings it back on the same port with the same directory, which is how a test
    plays "Redis restarted mid-run". With ``appendonly=True`` data survives the restart
    (``appendfsync always``, so even :meth:`kill` loses no acknowledged write); without it a
    restarted server is empty.
    """

    host = "127.0.0.1"

    def __init__(self, binary: str, data_dir: Path, *, appendonly: bool = False) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.port = 0  # chosen by the first start(), kept by every later one
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``: database 0 of this server."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process we started is alive (it may still be loading)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def log_path(self) -> Path:
        """The server's log file (appended to across restarts)."""
        return self.data_dir / "redis.log"

    def start(self) -> None:
        """Start the server and return once it answers PING; on the port of the previous start, if any."""
        if self.running:
            raise RedisError(f"redis-server on port {self.port} is already running")
        fixed = self.port != 0
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self._spawn(self.port if fixed else free_port())
            try:
                self._wait_ready()
                return
            except RedisError:
                alive = self.running
                self.stop()
                # Another process may have taken the port after free_port() found it free: retry on a
                # new one, unless the port is fixed (a restart) or the server ran but never answered.
                if fixed or alive or attempt == PORT_ATTEMPTS:
                    raise
            except BaseException:
                self.stop()  # a Ctrl-C or a bug here must not leave an orphan server behind
                raise

    def stop(self) -> None:
        """SIGTERM the server (it shuts down cleanly, writing out the AOF) and wait for it to exit."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and wait for it to exit."""
        self._end(signal.SIGKILL)

    def command(self, *args: str | bytes | int, timeout: float = 5.0) -> Reply:
        """Send one command over a plain socket and return the reply (see :func:`command`)."""
        return command(self.port, *args, timeout=timeout)

    def ping(self) -> bool:
        """Whether the server answers PING with PONG."""
        try:
            return self.command("PING") == b"PONG"
        except (OSError, RedisError):
            return False

    def flush(self) -> None:
        """Delete every key in every database (``FLUSHALL``)."""
        self.command("FLUSHALL")

    def info(self, section: str = "server") -> dict[str, str]:
        """One ``INFO`` section as a dict of strings (``redis_version``, ``process_id``, ...)."""
        reply = self.command("INFO", section)
        assert isinstance(reply, bytes)
        lines = reply.decode().splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))

    @property
    def version(self) -> tuple[int, ...]:
        """The server's version, e.g. ``(7, 0, 15)``."""
        return tuple(int(n) for n in self.info()["redis_version"].split("."))

    def _spawn(self, port: int) -> None:
        self.port = port
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port", str(port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--save", "",  # no RDB snapshots, at shutdown either
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._log = self.log_path.open("ab")
        # Our own process group: a Ctrl-C meant for pytest must not kill the server under a
        # running test (the fixture's teardown stops it).
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running:
                raise RedisError(f"redis-server on port {self.port} exited at start:\n{self._log_tail()}")
            try:
                if self.command("PING", timeout=1.0) == b"PONG" and self.info()["process_id"] == str(self.pid):
                    return
            except (OSError, RedisError):
                pass  # not listening yet, or still loading its AOF (-LOADING)
            time.sleep(0.01)
        raise RedisError(
            f"redis-server on port {self.port} did not answer PING within {START_TIMEOUT:g} s "
            f"(or another process answers there):\n{self._log_tail()}"
        )

    def _end(self, how: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(how)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.url} {state} appendonly={self.appendonly}>"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's shared ``redis-server``; stopped when the session ends."""
    server = RedisServer(require_redis_server(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's server, emptied (and restarted if a test stopped it) for this test."""
    if not redis_server.running:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """``redis_factory(appendonly=False)`` starts a server that this test owns; all stop at teardown."""
    binary = require_redis_server()
    servers: list[RedisServer] = []

    def start(*, appendonly: bool = False) -> RedisServer:
        server = RedisServer(binary, tmp_path / f"redis-{len(servers)}", appendonly=appendonly)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
