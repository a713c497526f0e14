"""The Redis test fixtures themselves: a real server of our own, restarts, and the skip/fail rule."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import pytest
from _redis import MISSING_SERVER, RedisError, RedisFactory, RedisServer, missing_server_outcome, require_redis_server


def test_session_server_answers_ping_on_a_raw_socket(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port != 6379  # never the default port a system service may hold
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as conn:
        conn.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert conn.recv(64) == b"+PONG\r\n"


def test_session_server_is_the_process_we_started(redis_server: RedisServer) -> None:
    info = redis_server.info()
    assert info["process_id"] == str(redis_server.pid)
    assert info["tcp_port"] == str(redis_server.port)
    assert redis_server.command("CONFIG", "GET", "bind") == [b"bind", b"127.0.0.1"]
    assert redis_server.command("CONFIG", "GET", "save") == [b"save", b""]
    assert redis_server.version >= (6, 2)  # XAUTOCLAIM, XADD NOMKSTREAM, GETEX


def test_redis_url_hands_out_an_empty_server(redis_server: RedisServer, request: pytest.FixtureRequest) -> None:
    redis_server.command("SET", "left-over", "1")
    url = request.getfixturevalue("redis_url")
    assert url == redis_server.url
    assert redis_server.command("DBSIZE") == 0


def test_redis_url_restarts_a_stopped_session_server(redis_server: RedisServer, request: pytest.FixtureRequest) -> None:
    port = redis_server.port
    redis_server.stop()
    assert not redis_server.running and not redis_server.ping()
    assert request.getfixturevalue("redis_url") == f"redis://127.0.0.1:{port}/0"
    assert redis_server.ping()


@pytest.mark.anyio
async def test_anyio_client_reaches_the_server(redis_url: str, redis_server: RedisServer) -> None:
    async with await anyio.connect_tcp("127.0.0.1", redis_server.port) as stream:
        await stream.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        received = b""
        with anyio.fail_after(5):
            while not received.endswith(b"$1\r\nv\r\n"):
                received += await stream.receive()
    assert received == b"+OK\r\n$1\r\nv\r\n"


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_restart_with_aof_keeps_the_data(redis_factory: RedisFactory, end: str) -> None:
    server = redis_factory(appendonly=True)
    port, data_dir = server.port, server.data_dir
    server.command("XADD", "jobs", "*", "n", "1")
    server.command("SET", "k", "v")
    getattr(server, end)()  # a clean shutdown, or a crash: appendfsync always loses nothing either way
    assert not server.ping()
    server.start()
    assert (server.port, server.data_dir) == (port, data_dir)
    assert server.command("GET", "k") == b"v"
    assert server.command("XLEN", "jobs") == 1


def test_restart_without_aof_comes_back_empty(redis_factory: RedisFactory) -> None:
    server = redis_factory()
    port = server.port
    server.command("SET", "k", "v")
    server.stop()
    server.start()
    assert server.port == port
    assert server.command("DBSIZE") == 0


def test_factory_servers_are_separate(redis_factory: RedisFactory, redis_server: RedisServer) -> None:
    first, second = redis_factory(), redis_factory(appendonly=True)
    assert len({first.port, second.port, redis_server.port}) == 3
    first.command("SET", "k", "first")
    assert second.command("GET", "k") is None


def test_start_never_adopts_a_server_it_did_not_start(redis_server: RedisServer, tmp_path: Path) -> None:
    # A server told to use a port that another Redis holds must fail, not talk to that one.
    intruder = RedisServer(redis_server.binary, tmp_path)
    intruder.port = redis_server.port
    with pytest.raises(RedisError, match=f"port {redis_server.port} exited at start"):
        intruder.start()
    assert not intruder.running
    assert redis_server.ping()


def test_error_replies_raise(redis_server: RedisServer) -> None:
    with pytest.raises(RedisError, match="unknown command"):
        redis_server.command("NO-SUCH-COMMAND")


@pytest.mark.parametrize(
    ("binary", "environ", "outcome"),
    [
        ("/usr/bin/redis-server", {}, "run"),
        ("/usr/bin/redis-server", {"CI": "true"}, "run"),
        (None, {}, "skip"),
        (None, {"CI": "false"}, "skip"),
        (None, {"CI": ""}, "skip"),
        (None, {"CI": "true"}, "fail"),
        (None, {"CI": "TRUE"}, "fail"),
        (None, {"CI": "1"}, "fail"),
    ],
)
def test_missing_server_outcome(binary: str | None, environ: dict[str, str], outcome: str) -> None:
    assert missing_server_outcome(binary, environ) == outcome


def test_missing_binary_skips_with_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server") as skipped:
        require_redis_server()
    assert str(skipped.value) == MISSING_SERVER and "\n" not in MISSING_SERVER


def test_missing_binary_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server.*CI=true"):
        require_redis_server()
