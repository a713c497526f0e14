"""example_app's HTTP API, ops endpoint and systemd notifications, as a real subprocess.

The load test is the issue's: concurrent clients, SIGTERM mid-load; every
request the server accepted gets a complete response, ``/readyz`` answers
503 before the API's listener closes, exit status 0. The clients speak
HTTP/1.1 over raw sockets so that each outcome is exact: a complete
response, a refused connection, or (the failure this test exists to catch)
a response cut short.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from _tls import self_signed  # noqa: E402
from harness import AppProcess, clean_env  # noqa: E402
from test_example_app import BOOT_TIMEOUT, EXIT_TIMEOUT, boot, command  # noqa: E402

CLIENTS = 8


def address(app: AppProcess, event: str, component: str) -> tuple[str, int]:
    found = app.wait_event(event, BOOT_TIMEOUT, component)
    host, _, port = found["address"].rpartition(":")
    return host, int(port)


def ports(app: AppProcess) -> tuple[tuple[str, int], tuple[str, int]]:
    """(API address, ops address) as the app logged them."""
    return address(app, "http server listening", "api"), address(app, "ops endpoint listening", "ops")


@dataclass
class Outcomes:
    """What the load clients saw; ``lock`` guards every list."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: list[float] = field(default_factory=list)  # monotonic time of each complete, valid response
    refused: list[float] = field(default_factory=list)
    unserved: int = 0  # the connection ended before one byte of the answer: the server never took the request
    partial: list[str] = field(default_factory=list)  # an answer cut short or wrong: must stay empty


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes, int]:
    """Status, headers, body and the number of bytes read; raises ``EOFError(bytes_read)`` if cut short."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(len(data), data)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(len(head) + len(body), data + body)
        body += chunk
    return status, headers, body, len(data)


def client(api: tuple[str, int], n: int, out: Outcomes, stop: threading.Event) -> None:
    """Alternate POST /rows and GET /rows on keep-alive connections until refused (or told to stop)."""
    sock: socket.socket | None = None
    i = 0
    while not stop.is_set():
        if sock is None:
            try:
                sock = socket.create_connection(api, timeout=5)
            except (ConnectionRefusedError, ConnectionResetError):  # reset: in the backlog as the listener closed
                with out.lock:
                    out.refused.append(time.monotonic())
                return
            except OSError as exc:
                with out.lock:
                    out.partial.append(f"connect: {exc!r}")
                return
        i += 1
        if i % 2:
            body = json.dumps({"client": n, "i": i}).encode()
            request = (
                b"POST /rows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
        else:
            request = b"GET /rows?limit=3 HTTP/1.1\r\nHost: x\r\n\r\n"
        try:
            sock.sendall(request)
            status, headers, payload, _ = read_response(sock)
        except (EOFError, ConnectionResetError, BrokenPipeError) as exc:
            sock.close()
            sock = None
            got = exc.args[0] if isinstance(exc, EOFError) else 0
            with out.lock:
                if got:
                    out.partial.append(f"cut after {got} bytes: {exc.args[1]!r}")
                else:
                    out.unserved += 1
            continue
        except OSError as exc:  # a timeout: the answer never came
            with out.lock:
                out.partial.append(f"recv: {exc!r}")
            return
        try:
            parsed = json.loads(payload)
            valid = status in (200, 201) and ("id" in parsed if status == 201 else "rows" in parsed)
        except ValueError:
            valid = False
        with out.lock:
            if valid:
                out.ok.append(time.monotonic())
            else:
                out.partial.append(f"status {status}: {payload[:100]!r}")
        if headers.get("connection", "").lower() == "close":
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def poll_readyz(ops: tuple[str, int], seen: list[tuple[float, int, str]], stop: threading.Event) -> None:
    """Record (time, status, body) of /readyz every few milliseconds until the ops endpoint goes away."""
    with httpx.Client(base_url=f"http://{ops[0]}:{ops[1]}", timeout=2) as http:
        while not stop.is_set():
            try:
                answer = http.get("/readyz")
                seen.append((time.monotonic(), answer.status_code, answer.text))
            except httpx.TransportError:
                return
            time.sleep(0.005)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_under_load_completes_every_accepted_request(backend: str, tmp_path: Path) -> None:
    db = tmp_path / "api.sqlite3"
    with boot(backend, db, EXAMPLE_HTTP_DRAIN_DELAY="0.5") as app:
        api, ops = ports(app)
        out, readyz = Outcomes(), []  # type: ignore[var-annotated]
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(api, n, out, stop), daemon=True) for n in range(CLIENTS)]
        threads.append(threading.Thread(target=poll_readyz, args=(ops, readyz, stop), daemon=True))
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 10
            while len(out.ok) < 200 and time.monotonic() < deadline:  # mid-load: every client is busy
                time.sleep(0.01)
            assert len(out.ok) >= 200, f"the load never got going: {out}\n{app.dump()}"
            signalled = time.monotonic()
            app.send(signal.SIGTERM)
            assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
        assert out.partial == [], f"requests cut short: {out.partial[:10]}\n{app.dump()}"
        assert out.refused, "after the stop, new connections are refused"
        first_refused = min(out.refused)
        assert any(t > signalled for t in out.ok), "requests went on being answered while draining"
        not_ready = [t for t, status, _ in readyz if status == 503 and t > signalled]
        assert not_ready and min(not_ready) < first_refused, (
            f"/readyz said 503 before the listener closed: {readyz[-20:]}"
        )
        before = [(status, text) for t, status, text in readyz if t < signalled]
        assert before and all(status == 200 for status, _ in before), before
        stopped = app.events[app.index("http server stopped", "api")]
        assert stopped["cut_off"] == 0 and stopped["served"] >= len(out.ok)
        app.assert_order(
            (None, "signal received; shutting down gracefully"),
            ("api", "http server draining"),
            ("api", "http server stopped"),
            ("heartbeat", "stop starting"),  # the API (priority 3) stops before what it reads
            ("db", "database closed"),
        )
    with sqlite3.connect(db) as connection:
        (stored,) = connection.execute("select count(*) from api_rows").fetchone()
    posted_ok = stored  # every POST answered 201 is in the database
    assert posted_ok >= len(out.ok) // 2 - CLIENTS


def test_rows_are_read_and_written(tmp_path: Path) -> None:
    with boot("asyncio", tmp_path / "rows.sqlite3") as app:
        (host, port), _ = ports(app)
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as http:
            assert "POST /rows" in http.get("/").json()["routes"]
            created = http.post("/rows", json={"name": "ada"})
            assert created.status_code == 201
            row = created.json()
            assert row["body"] == {"name": "ada"}
            assert http.get(f"/rows/{row['id']}").json() == row
            assert http.get("/rows").json()["rows"][0] == row
            assert http.get("/heartbeats/latest").json()["beat"] >= 1
            assert http.post("/rows", content=b"{not json").status_code == 400
            assert http.get("/rows?limit=0").status_code == 400
            refused = http.put("/rows")
            assert refused.status_code == 405
            assert refused.headers["allow"] == "GET, POST"  # RFC 9110: a 405 names what is allowed
            assert http.get("/rows/999999").status_code == 404
            assert http.delete(f"/rows/{row['id']}").status_code == 204
            assert http.get(f"/rows/{row['id']}").status_code == 404
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()


def _summaries(http: httpx.Client, count: int) -> list[dict[str, object]]:
    """Enqueue ``count`` summaries through the API and poll (bounded) until every one is done."""
    answer = http.post("/jobs/summarise", json={"beats": 3, "count": count})
    assert answer.status_code == 202, answer.text
    ids = answer.json()["ids"]
    assert len(ids) == count == len(set(ids))
    deadline = time.monotonic() + 20
    done: dict[str, dict[str, object]] = {}
    while len(done) < count and time.monotonic() < deadline:
        for task_id in ids:
            if task_id not in done:
                reply = http.get(f"/jobs/{task_id}")
                assert reply.status_code in (200, 202), reply.text
                if reply.status_code == 200:
                    done[task_id] = reply.json()
        time.sleep(0.05)
    assert len(done) == count, f"{count - len(done)} summaries never finished"
    return list(done.values())


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_named_tasks_through_the_api(backend: str, tmp_path: Path) -> None:
    with boot(backend, tmp_path / "jobs.sqlite3") as app:
        (host, port), _ = ports(app)
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as http:
            for summary in _summaries(http, 6):
                assert summary["state"] == "done"
                assert summary["result"]["beats"] == 3  # type: ignore[index]
            assert http.post("/jobs/summarise", json={"beats": 0}).status_code == 400
            assert http.post("/jobs/summarise", json={"beats": 3, "count": 0}).status_code == 400
            assert http.get("/jobs/not-an-id").status_code == 202
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()


def test_replicas_share_named_tasks_through_redis(redis_url: str, tmp_path: Path) -> None:
    """Two replicas on one Redis and one database: a web tier that only enqueues, and a consumer."""
    db = tmp_path / "shared.sqlite3"
    shared = {"EXAMPLE_DISPATCHER_BACKEND": "redis", "EXAMPLE_REDIS_URL": redis_url}
    with boot("asyncio", db, **shared) as worker, boot("trio", db, EXAMPLE_DISPATCHER_CONSUME="false", **shared) as web:
        (host, port), _ = ports(web)
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as http:
            assert len(_summaries(http, 10)) == 10
        metrics = {}
        for name, app in (("worker", worker), ("web", web)):
            _, (ops_host, ops_port) = ports(app)
            metrics[name] = httpx.get(f"http://{ops_host}:{ops_port}/metrics", timeout=5).text
        assert 'nacelle_dispatcher_completed_total{component="jobs"} 0.0' in metrics["web"]  # it never consumes
        assert 'nacelle_dispatcher_completed_total{component="jobs"} 0.0' not in metrics["worker"]
        assert 'nacelle_dispatcher_stream_length{component="jobs"}' in metrics["worker"]
        for app in (web, worker):
            app.send(signal.SIGTERM)
            assert app.wait(EXIT_TIMEOUT) == 0, app.dump()


def test_ops_endpoint_reports_the_example(tmp_path: Path) -> None:
    with boot("asyncio", tmp_path / "ops.sqlite3") as app:
        _, (host, port) = ports(app)
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as http:
            assert http.get("/livez").status_code == 200
            assert http.get("/readyz").json()["status"] == "ready"
            components = {c["name"]: c for c in http.get("/debug/components").json()["components"]}
            assert set(components) == {"db", "jobs", "flows", "heartbeat", "load", "report", "flaky", "api"}
            assert components["api"]["priority"] == 3 and components["api"]["state"] == "running"
            assert components["db"]["kind"] == "initializer"
            metrics = http.get("/metrics").text
            assert 'nacelle_component_state{component="api",state="running"} 1.0' in metrics
            assert 'nacelle_dispatcher_accepted_total{component="jobs"}' in metrics
            assert 'nacelle_worker_ticks_total{component="report"}' in metrics
            assert 'nacelle_machine_active{component="heartbeat",machine="machine/heartbeat"}' in metrics
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()


def run_to_exit(tmp_path: Path, **env: str) -> AppProcess:
    """Start the example with ``env`` and wait for it to exit on its own (bounded)."""
    app = AppProcess(command("asyncio"), clean_env(EXAMPLE_DB_PATH=str(tmp_path / "x.sqlite3"), **env))
    try:
        app.wait(BOOT_TIMEOUT)
    except BaseException:
        app.close()
        raise
    return app


def errors(app: AppProcess) -> str:
    return "\n".join(str(e.get("event")) for e in app.events if e.get("level") == "error")


def test_a_taken_api_port_fails_the_boot_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with run_to_exit(tmp_path, EXAMPLE_HTTP_PORT=str(port), EXAMPLE_OPS_ADDR="off") as app:
            assert app.proc.returncode == 1, app.dump()
            text = errors(app)
            assert "api: preflight failed" in text and f"127.0.0.1:{port}" in text and "HTTP_PORT" in text, app.dump()
            # The preflight found it before any init: the database was never opened, no row written.
            assert app.count("init starting") == 0 and app.count("database opened", "db") == 0, app.dump()
            assert not (tmp_path / "x.sqlite3").exists()  # the database file was never created


def test_a_taken_ops_port_fails_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with run_to_exit(tmp_path, EXAMPLE_HTTP_PORT="0", EXAMPLE_OPS_ADDR=f"127.0.0.1:{port}") as app:
            assert app.proc.returncode == 1, app.dump()
            assert f"127.0.0.1:{port}" in errors(app) and "OPS_ADDR" in errors(app), app.dump()
            assert app.count("init starting") == 0


@pytest.mark.parametrize("value", ["9090", "localhost:port", "::1:9090", "127.0.0.1:70000"])
def test_a_bad_ops_addr_is_a_config_error(tmp_path: Path, value: str) -> None:
    with run_to_exit(tmp_path, EXAMPLE_OPS_ADDR=value) as app:
        assert app.proc.returncode == 1, app.dump()
        assert "EXAMPLE_OPS_ADDR" in errors(app), app.dump()
        assert app.count("init starting") == 0


def test_half_a_tls_pair_is_a_config_error(tmp_path: Path) -> None:
    with run_to_exit(tmp_path, EXAMPLE_HTTP_CERT_FILE=str(tmp_path / "cert.pem")) as app:
        assert app.proc.returncode == 1, app.dump()
        assert "HTTP_KEY_FILE" in errors(app), app.dump()


def test_a_mismatched_tls_pair_fails_boot(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "a")  # two keys, and a certificate for the first only
    _, other_key = self_signed(tmp_path, "b")
    env = {"EXAMPLE_HTTP_CERT_FILE": str(cert), "EXAMPLE_HTTP_KEY_FILE": str(other_key)}
    with run_to_exit(tmp_path, EXAMPLE_HTTP_PORT="0", EXAMPLE_OPS_ADDR="off", **env) as app:
        assert app.proc.returncode == 1, app.dump()
        assert "HTTP_CERT_FILE/HTTP_KEY_FILE" in errors(app), app.dump()


def test_under_systemd_it_notifies_ready_status_watchdog_and_stopping(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    notify.bind(str(path))
    notify.settimeout(0.2)
    got: list[str] = []

    def drain_until(predicate: Callable[[list[str]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(got) and time.monotonic() < deadline:
            try:
                got.append(notify.recv(4096).decode())
            except TimeoutError:
                pass
        assert predicate(got), got

    try:
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000", "EXAMPLE_OPS_ADDR": "off"}
        with boot("asyncio", tmp_path / "sd.sqlite3", **env) as app:
            drain_until(lambda ms: any(m.startswith("READY=1") for m in ms), 10)
            drain_until(lambda ms: sum(m == "WATCHDOG=1" for m in ms) >= 3, 10)
            app.send(signal.SIGTERM)
            assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
            drain_until(lambda ms: "STATUS=stopped" in ms, 5)
    finally:
        notify.close()
    ready = next(i for i, m in enumerate(got) if m.startswith("READY=1"))
    stopping = next(i for i, m in enumerate(got) if m.startswith("STOPPING=1"))
    assert [m for m in got[:ready] if m.startswith("STATUS=starting priority")] == [
        f"STATUS=starting priority {p} ({n} component{'s' if n > 1 else ''})"
        for p, n in ((0, 1), (1, 2), (2, 4), (3, 1))
    ]
    assert "STATUS=ready: 8 components healthy" in got[ready]
    assert ready < stopping < got.index("STATUS=stopped")
    assert "signal SIGTERM" in got[stopping]
