"""example_app in this process, through the test kit: ``running(build_app())`` on asyncio and trio.

The subprocess tests (tests/test_example_app*.py) cover what only a real
process shows: signals, the exit status, JSON logs, ``--help``. These drive
the same app from a test the way a user of nacelle_py tests theirs: the
settings overridden for the test (a scratch database, free ports, a quick
tick), a service replaced by a fake, HTTP against the real API, and the
outcome read from the handle.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from nacelle_py.testing import ExitError, RunningApp, override_service, override_settings, running

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # example_app is not installed; plain `pytest` may not have the root on the path
    sys.path.insert(0, str(ROOT))
from example_app import ApiServer, Flaky, HeartbeatSettings, build_app  # noqa: E402
from example_app.db import SCHEMA  # noqa: E402

pytestmark = pytest.mark.anyio

LIMIT = 30.0
"""Seconds one scenario may take (each needs a second or two)."""
QUICK = {"EXAMPLE_HTTP_PORT": 0, "EXAMPLE_OPS_ADDR": "127.0.0.1:0", "EXAMPLE_TICK": 0.05, "EXAMPLE_HTTP_DRAIN_DELAY": 0}
"""Free ports, a quick heartbeat, no drain delay: what every test here sets."""


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / "example.sqlite3"


def api(handle: RunningApp) -> httpx.AsyncClient:
    url = handle.component("api", ApiServer).url
    assert url is not None
    return httpx.AsyncClient(base_url=url, timeout=5)


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as connection:
        (rows,) = connection.execute(f"select count(*) from {table}").fetchone()  # noqa: S608 - our own table names
    return int(rows)


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate()`` every 10 ms until it is true (bounded by the test's ``fail_after``)."""
    while not predicate():
        await anyio.sleep(0.01)


async def test_the_api_and_the_ops_endpoint_answer_and_the_app_unwinds_cleanly(scratch: Path) -> None:
    app = build_app()
    with anyio.fail_after(LIMIT), override_settings(app, EXAMPLE_DB_PATH=scratch, **QUICK):
        async with running(app) as handle:
            assert handle.states == {
                "db": "initialized",
                "jobs": "running",
                "flows": "running",
                "heartbeat": "running",
                "load": "running",
                "report": "running",
                "flaky": "running",
                "api": "running",
            }
            assert handle.settings(HeartbeatSettings).tick == 0.05
            async with api(handle) as http:
                created = await http.post("/rows", json={"from": "the test"})
                assert created.status_code == 201, created.text
                assert (await http.get(f"/rows/{created.json()['id']}")).json()["body"] == {"from": "the test"}
                assert (await http.get("/heartbeats/latest")).status_code == 200  # healthy: a beat is in
            assert handle.ops_url is not None
            async with httpx.AsyncClient(base_url=handle.ops_url, timeout=5) as ops:
                ready = await ops.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert handle.status == 0 and handle.errors == ()
    assert count(scratch, "api_rows") == 1 and count(scratch, "heartbeat") >= 1


@pytest.fixture
def fake_db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A second, real SQLite database with the example's schema: the fake the components get."""
    connection = sqlite3.connect(tmp_path / "fake.sqlite3", check_same_thread=False)
    connection.executescript(SCHEMA)
    yield connection
    connection.close()


async def test_what_the_components_write_goes_to_the_overridden_database(
    scratch: Path, fake_db: sqlite3.Connection
) -> None:
    """The database initializer sets the service "db" at init: every component after it gets the fake."""
    app = build_app()
    with (
        anyio.fail_after(LIMIT),
        override_settings(app, EXAMPLE_DB_PATH=scratch, **QUICK),
        override_service(app, "db", fake_db),
    ):
        async with running(app) as handle:
            assert handle.services.get("db") is fake_db
            async with api(handle) as http:
                assert (await http.post("/rows", json=[1, 2])).status_code == 201
                queued = await http.post("/jobs/summarise", json={"beats": 5, "count": 1})
                [task] = queued.json()["ids"]
                while (done := await http.get(f"/jobs/{task}")).status_code == 202:
                    await anyio.sleep(0.05)
                assert done.status_code == 200 and done.json()["result"]["beats"] >= 1, done.text  # read from the fake
    assert handle.status == 0, handle.errors
    assert fake_db.execute("select count(*) from api_rows").fetchone() == (1,)
    assert fake_db.execute("select count(*) from heartbeat").fetchone()[0] >= 1
    assert count(scratch, "heartbeat") == 0  # the real database was opened (and closed), never written to


async def archived(http: httpx.AsyncClient, body: dict[str, object]) -> dict[str, object]:
    """Submit a run of the archive flow through the API and poll until it ends; its final answer."""
    submitted = await http.post("/flows/archive", json=body)
    assert submitted.status_code == 202, submitted.text
    flow_id = submitted.json()["id"]
    while (answer := await http.get(f"/flows/{flow_id}")).status_code == 202:
        await anyio.sleep(0.02)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


async def test_the_archive_flow_moves_old_heartbeats_and_a_failed_run_puts_everything_back(scratch: Path) -> None:
    app = build_app()
    with anyio.fail_after(LIMIT), override_settings(app, EXAMPLE_DB_PATH=scratch, **QUICK):
        async with running(app) as handle:
            await until(lambda: count(scratch, "heartbeat") >= 6)
            async with api(handle) as http:
                done = await archived(http, {"keep": 2})
                assert done["state"] == "SUCCESS", done
                values = done["values"]
                assert isinstance(values, dict) and values["copied"] == values["trimmed"] >= 4, values
                assert count(scratch, "archive") == values["copied"]
                await until(lambda: count(scratch, "heartbeat") >= 6)
                with sqlite3.connect(scratch) as db:
                    before = db.execute("select id from heartbeat order by id").fetchall()
                failed = await archived(http, {"keep": 1, "fail": True})
                assert failed["state"] == "REVERTED", failed
                (failure,) = failed["failures"]  # type: ignore[misc]
                assert str(failure).startswith("CheckArchive.execute: RuntimeError: the check was asked to fail")
                with sqlite3.connect(scratch) as db:
                    after = {row for (row,) in db.execute("select id from heartbeat")}
                    batch = db.execute("select count(*) from archive where batch = ?", (failed["id"],)).fetchone()
                assert {row for (row,) in before} <= after  # every trimmed row is back
                assert batch == (0,) and count(scratch, "archive") == values["copied"]  # the batch is gone
                stats = handle.component("flows").stats()
                assert (stats.succeeded, stats.reverted, stats.failed) == (1, 1, 0)
    assert handle.status == 0, handle.errors


async def test_a_crash_through_the_api_is_restarted_without_failing_the_app(scratch: Path) -> None:
    app = build_app()
    flaky = next(c for c, options in app.registrations if options.name == "flaky")
    assert isinstance(flaky, Flaky)
    with anyio.fail_after(LIMIT), override_settings(app, EXAMPLE_DB_PATH=scratch, **QUICK):
        async with running(app) as handle:
            async with api(handle) as http:
                assert (await http.post("/flaky/crash")).status_code == 202
            await until(lambda: flaky.runs == 2 and handle.states["flaky"] == "running")
            assert handle.errors == () and handle.health.healthy
    assert handle.status == 0


async def test_too_many_restarts_stop_the_app_and_fail_the_exit(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # build_app reads the restart limits while it registers flaky: set before it, in the environment.
    monkeypatch.setenv("EXAMPLE_FLAKY_MAX_RESTARTS", "0")
    app = build_app()
    with anyio.fail_after(LIMIT), override_settings(app, EXAMPLE_DB_PATH=scratch, **QUICK):
        with pytest.raises(ExitError) as failed:
            async with running(app) as handle:
                async with api(handle) as http:
                    assert (await http.post("/flaky/crash")).status_code == 202
                assert await handle.wait_stopped() == 1
    [error] = failed.value.errors
    assert (error.component, error.operation) == ("flaky", "restart")
    assert "restart intensity exceeded" in str(error) and "max_restarts=0" in str(error)
    assert handle.states["db"] == "finalized"  # everything unwound
