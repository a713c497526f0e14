"""The HTTP API: a small ASGI app that reads and writes rows of the example's SQLite database.

Routes (JSON in, JSON out):

- ``GET /`` lists the routes;
- ``GET /rows?limit=N`` the newest rows (default 100, at most 1000);
- ``POST /rows`` stores the request body (any JSON value) and answers 201 with the row;
- ``GET /rows/{id}`` one row, 404 if there is none;
- ``DELETE /rows/{id}`` removes it (204), 404 if there is none;
- ``GET /heartbeats/latest`` the newest heartbeat row;
- ``POST /jobs/summarise`` with ``{"beats": N, "count": K}`` enqueues K ``summarise`` tasks
  (202 with their ids); ``GET /jobs/{id}`` answers 200 with a task's result, 202 while it is
  queued or running, 500 with the error if it failed for good;
- ``POST /flows/archive`` with ``{"keep": N, "fail": false}`` submits a run of the archive
  flow (archive.py: archive the heartbeats older than the newest N, then trim them), 202
  with its id; ``GET /flows/{id}`` answers 200 with its state and values once it ended
  (``SUCCESS``, or ``REVERTED`` with the failures when ``"fail": true`` asked it to fail),
  202 while it runs;
- ``POST /flaky/crash`` makes the flaky process's run raise (202), to watch it be
  restarted; 409 while it is not running (it is being restarted, say).

It is plain ASGI, no framework, so the example installs nothing more; a
FastAPI or Starlette app is served by ``HTTPServer`` the same way.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from pydantic import ValidationError

from nacelle_py import Inject
from nacelle_py.base import Dispatcher, FlowRunner, HTTPServer, TaskFailed, flows

from .flaky import Flaky
from .tasks import Window

__all__ = ["ApiServer", "RowsApp"]

SCHEMA = """
create table if not exists api_rows (
    id   integer primary key,
    body text not null,  -- the JSON value as posted
    at   real not null   -- unix time
);
"""
MAX_BODY = 64 * 1024
ROUTES = [
    "GET /",
    "GET /rows?limit=N",
    "POST /rows",
    "GET /rows/{id}",
    "DELETE /rows/{id}",
    "GET /heartbeats/latest",
    "POST /jobs/summarise",
    "GET /jobs/{id}",
    "POST /flows/archive",
    "GET /flows/{id}",
    "POST /flaky/crash",
]
MAX_JOBS = 1000  # tasks one POST /jobs/summarise may enqueue

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HTTPProblem(Exception):
    """An error answer: status and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class RowsApp:
    """The ASGI app. ``db`` is set by ``ApiServer.init`` once the database is open.

    Queries run on the loop thread, as the heartbeat's do: a one-row SQLite
    statement takes microseconds, and sharing the one connection from one
    thread needs no lock. A slow query would go to ``anyio.to_thread``.
    """

    def __init__(self) -> None:
        self.db: sqlite3.Connection | None = None
        self.jobs: Dispatcher | None = None
        self.flaky: Flaky | None = None
        self.flows: FlowRunner | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan work: the database is opened by its own initializer
        extra: dict[str, str] = {}
        try:
            status, body = await self._route(scope["method"], scope["path"], scope.get("query_string", b""), receive)
        except HTTPProblem as problem:
            status, body, extra = problem.status, {"error": str(problem)}, problem.headers
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [(b"content-length", str(len(payload)).encode())]
        headers += [(name.lower().encode(), value.encode()) for name, value in extra.items()]
        if body is not None:
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _route(self, method: str, path: str, query: bytes, receive: Receive) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if not parts:
            self._allow(method, "GET")
            return 200, {"routes": ROUTES}
        if parts == ["rows"]:
            if method == "POST":
                return 201, self._insert(await _read_json(receive))
            self._allow(method, "GET", "POST")
            return 200, {"rows": self._newest(_limit(query))}
        if len(parts) == 2 and parts[0] == "rows":
            row_id = _row_id(parts[1])
            if method == "DELETE":
                return self._delete(row_id)
            self._allow(method, "GET", "DELETE")
            return 200, self._one(row_id)
        if parts == ["heartbeats", "latest"]:
            self._allow(method, "GET")
            found = self._conn().execute("select beat, at from heartbeat order by id desc limit 1").fetchone()
            if found is None:
                raise HTTPProblem(404, "no heartbeat yet")
            return 200, {"beat": found[0], "at": found[1]}
        if parts == ["jobs", "summarise"]:
            self._allow(method, "POST")
            return 202, {"ids": await self._enqueue(await _read_json(receive))}
        if len(parts) == 2 and parts[0] == "jobs":
            self._allow(method, "GET")
            return await self._outcome(parts[1])
        if parts == ["flows", "archive"]:
            self._allow(method, "POST")
            return 202, {"id": await self._archive(await _read_json(receive))}
        if len(parts) == 2 and parts[0] == "flows":
            self._allow(method, "GET")
            return await self._flow(parts[1])
        if parts == ["flaky", "crash"]:
            self._allow(method, "POST")
            return self._crash()
        raise HTTPProblem(404, f"no route for {path}; see GET /")

    async def _enqueue(self, body: Any) -> list[str]:
        if not isinstance(body, dict):
            raise HTTPProblem(400, 'the body is a JSON object: {"beats": N, "count": K}')
        count = body.pop("count", 1)
        if not isinstance(count, int) or not 1 <= count <= MAX_JOBS:
            raise HTTPProblem(400, f"count must be an integer from 1 to {MAX_JOBS}, got {count!r}")
        try:
            window = Window.model_validate(body)
        except ValidationError as exc:
            raise HTTPProblem(400, f"bad window: {exc.errors()[0]['msg']}") from None
        assert self.jobs is not None
        return await self.jobs.enqueue_many("summarise", [window] * count)

    async def _outcome(self, task_id: str) -> tuple[int, Any]:
        assert self.jobs is not None
        try:
            summary = await self.jobs.result(task_id, timeout=0.05)
        except TimeoutError:
            return 202, {"id": task_id, "state": "queued, running, or unknown"}
        except TaskFailed as failed:
            return 500, {"id": task_id, "state": "failed", "error": f"{failed.error_type}: {failed.message}"}
        return 200, {"id": task_id, "state": "done", "result": summary.model_dump()}

    async def _archive(self, body: Any) -> str:
        if not isinstance(body, dict) or set(body) - {"keep", "fail"}:
            raise HTTPProblem(400, 'the body is a JSON object: {"keep": N, "fail": false}')
        keep, fail = body.get("keep", 100), body.get("fail", False)
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
            raise HTTPProblem(400, f"keep must be an integer >= 0, got {keep!r}")
        if not isinstance(fail, bool):
            raise HTTPProblem(400, f"fail must be true or false, got {fail!r}")
        assert self.flows is not None
        batch = uuid.uuid4().hex
        return await self.flows.submit("archive", {"keep": keep, "fail": fail, "batch": batch}, flow_id=batch)

    async def _flow(self, flow_id: str) -> tuple[int, Any]:
        assert self.flows is not None
        try:
            values = await self.flows.result(flow_id, timeout=0.05)
        except LookupError:
            raise HTTPProblem(404, f"no flow {flow_id!r} (unknown, or ended long ago)") from None
        except TimeoutError:
            return 202, {"id": flow_id, "state": str(self.flows.state(flow_id) or "PENDING")}
        except flows.FlowFailed as failed:
            return 200, {"id": flow_id, "state": str(failed.state), "failures": [str(f) for f in failed.failures]}
        except flows.FlowSuspended:
            return 202, {"id": flow_id, "state": "SUSPENDED"}
        return 200, {"id": flow_id, "state": "SUCCESS", "values": values}

    def _crash(self) -> tuple[int, Any]:
        assert self.flaky is not None
        if not self.flaky.crash("crash requested through POST /flaky/crash"):
            raise HTTPProblem(409, "flaky is not running (it is being restarted, or already crashing); try again")
        return 202, {"component": "flaky", "run": self.flaky.runs, "crashing": True}

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HTTPProblem(
                405, f"{method} not allowed here; use {' or '.join(allowed)}", {"Allow": ", ".join(allowed)}
            )

    def _conn(self) -> sqlite3.Connection:
        if self.db is None:
            raise HTTPProblem(503, "the database is not open")
        return self.db

    def _insert(self, value: Any) -> dict[str, Any]:
        db, at, text = self._conn(), time.time(), json.dumps(value)
        with db:
            cursor = db.execute("insert into api_rows (body, at) values (?, ?)", (text, at))
        return {"id": cursor.lastrowid, "body": value, "at": at}

    def _newest(self, limit: int) -> list[dict[str, Any]]:
        found = self._conn().execute("select id, body, at from api_rows order by id desc limit ?", (limit,))
        return [_row(r) for r in found.fetchall()]

    def _one(self, row_id: int) -> dict[str, Any]:
        found = self._conn().execute("select id, body, at from api_rows where id = ?", (row_id,)).fetchone()
        if found is None:
            raise HTTPProblem(404, f"no row {row_id}")
        return _row(found)

    def _delete(self, row_id: int) -> tuple[int, Any]:
        db = self._conn()
        with db:
            deleted = db.execute("delete from api_rows where id = ?", (row_id,)).rowcount
        if not deleted:
            raise HTTPProblem(404, f"no row {row_id}")
        return 204, None


def _row(found: tuple[int, str, float]) -> dict[str, Any]:
    return {"id": found[0], "body": json.loads(found[1]), "at": found[2]}


def _row_id(text: str) -> int:
    if not text.isdigit():
        raise HTTPProblem(404, f"row ids are integers, got {text!r}")
    return int(text)


def _limit(query: bytes) -> int:
    values = parse_qs(query.decode("latin-1")).get("limit")
    if not values:
        return 100
    if not values[0].isdigit() or not 1 <= int(values[0]) <= 1000:
        raise HTTPProblem(400, f"limit must be an integer from 1 to 1000, got {values[0]!r}")
    return int(values[0])


async def _read_json(receive: Receive) -> Any:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPProblem(400, "the client went away before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPProblem(413, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    try:
        return json.loads(b"".join(chunks))
    except ValueError as exc:
        raise HTTPProblem(400, f"the body must be JSON: {exc}") from None


class ApiServer(HTTPServer):
    """``HTTPServer`` over ``RowsApp`` (``EXAMPLE_HTTP_HOST``, ``EXAMPLE_HTTP_PORT``, ...)."""

    db: sqlite3.Connection = Inject("db")
    jobs: Dispatcher = Inject("jobs")
    flaky: Flaky = Inject("flaky")
    runner: FlowRunner = Inject("flows")

    def __init__(self) -> None:
        self.rows = RowsApp()
        super().__init__(self.rows)

    async def init(self) -> None:
        with self.db:
            self.db.executescript(SCHEMA)
        self.rows.db = self.db
        self.rows.jobs = self.jobs
        self.rows.flaky = self.flaky
        self.rows.flows = self.runner
        await super().init()  # binds the socket: a taken port fails boot here
