"""Logging: JSON lines with component and durations, level filtering, fields, errors once, per-app loggers."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from nacelle_py import App, Initializer, Inject, Process
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith(("T_", "A_", "B_")) or key in ("LOG_LEVEL", "LOG_ENCODING", "LOG_FIELDS"):
            monkeypatch.delenv(key)
    yield


class Db(Initializer):
    logger = Inject("logger")

    async def init(self) -> None:
        self.logger.info("opening database", path=":memory:")

    async def finalize(self) -> None:
        self.logger.info("closing database")


class Pinger(Process):
    logger = Inject("logger")

    def __init__(self) -> None:
        self.stopped = anyio.Event()

    async def init(self) -> None:
        self.logger.info("pinger ready")

    async def run(self) -> None:
        self.logger.info("pinging")
        await self.stopped.wait()

    async def stop(self) -> None:
        self.stopped.set()

    async def finalize(self) -> None:
        pass


class FailingRun(Process):
    async def run(self) -> None:
        raise ValueError("boom")


class FailingInitAndFinalize(Initializer):
    async def init(self) -> None:
        raise RuntimeError("init broke")


class FailingFinalize(Initializer):
    async def finalize(self) -> None:
        raise RuntimeError("finalize broke")


def json_app(name: str = "t") -> tuple[App, io.StringIO]:
    stream = io.StringIO()
    return App(name, handle_signals=False, log_stream=stream), stream


async def serve(app: App) -> int:
    app.on_ready(app.shutdown)
    with anyio.fail_after(10):
        return await app.serve()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def events_of(records: list[dict[str, Any]], component: str) -> list[str]:
    return [r["event"] for r in records if r.get("component") == component]


# -- JSON lines and lifecycle events ----------------------------------------------------------


async def test_json_one_object_per_line_with_lifecycle_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    app, stream = json_app()
    app.register(Db(), name="db", priority=0)
    app.register(Pinger(), name="pinger", priority=1)
    assert await serve(app) == 0
    records = lines(stream)
    assert all(isinstance(r, dict) and "event" in r and "level" in r and "timestamp" in r for r in records)
    assert all(r["app"] == "t" for r in records)

    pinger = events_of(records, "pinger")
    for event in (
        "init starting",
        "init finished",
        "run starting",
        "stop starting",
        "stop finished",
        "finalize starting",
        "finalize finished",
    ):
        assert event in pinger, (event, pinger)
    order = [
        pinger.index(e)
        for e in (
            "init starting",
            "init finished",
            "run starting",
            "stop starting",
            "stop finished",
            "finalize starting",
            "finalize finished",
        )
    ]
    assert order == sorted(order)

    db = events_of(records, "db")
    for event in ("init starting", "init finished", "finalize starting", "finalize finished"):
        assert event in db
    assert "run starting" not in db and "stop starting" not in db

    lifecycle = [r for r in records if r["event"].endswith("finished") and "component" in r]
    assert lifecycle
    for record in lifecycle:
        assert isinstance(record["ms"], (int, float)) and record["ms"] >= 0
        assert record["level"] == "info"


async def test_console_is_the_default_encoding() -> None:
    app, stream = json_app()
    app.register(Pinger(), name="pinger")
    assert await serve(app) == 0
    text = stream.getvalue()
    assert "init starting" in text and "pinger" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


async def test_encoding_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "JSON")
    monkeypatch.setenv("T_LOG_LEVEL", "INFO")
    app, stream = json_app()
    assert await serve(app) == 0
    assert lines(stream)


# -- level filtering --------------------------------------------------------------------------


async def test_level_warning_hides_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("T_LOG_LEVEL", "warning")
    app, stream = json_app()
    app.register(Pinger(), name="pinger")
    assert await serve(app) == 0
    assert stream.getvalue() == ""


async def test_level_warning_still_shows_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("T_LOG_LEVEL", "warning")
    app, stream = json_app()
    app.register(FailingRun(), name="pinger")
    assert await serve(app) == 1
    records = lines(stream)
    assert records
    assert {r["level"] for r in records} <= {"warning", "error", "critical"}
    assert any(r["event"].startswith("pinger: run failed") for r in records)


async def test_level_debug_shows_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("T_LOG_LEVEL", "debug")
    app, stream = json_app()
    app.register(Pinger(), name="pinger")
    assert await serve(app) == 0
    assert any(r["level"] == "info" for r in lines(stream))


async def test_level_also_filters_component_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("T_LOG_LEVEL", "error")
    app, stream = json_app()
    app.register(Db(), name="db")
    assert await serve(app) == 0
    assert "opening database" not in stream.getvalue()


# -- LOG_FIELDS -------------------------------------------------------------------------------


async def test_log_fields_on_every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("T_LOG_FIELDS", '{"env": "prod", "region": "eu-1"}')
    app, stream = json_app()
    app.register(Db(), name="db")
    app.register(FailingRun(), name="pinger", priority=1)
    assert await serve(app) == 1
    records = lines(stream)
    assert len(records) > 5
    for record in records:
        assert record["env"] == "prod" and record["region"] == "eu-1", record
    # component loggers too
    assert any(r["event"] == "opening database" for r in records)


async def test_log_fields_unprefixed_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("LOG_FIELDS", '{"team": "core"}')
    app, stream = json_app()
    assert await serve(app) == 0
    assert all(r["team"] == "core" for r in lines(stream))


# -- errors are logged exactly once -----------------------------------------------------------


async def test_run_error_logged_once_with_component_and_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    app, stream = json_app()
    app.register(FailingRun(), name="pinger")
    assert await serve(app) == 1
    records = lines(stream)
    failed = [r for r in records if "run failed" in r["event"]]
    assert len(failed) == 1, failed
    (record,) = failed
    assert record["event"].startswith("pinger: run failed")
    assert record["component"] == "pinger"
    assert record["operation"] == "run"
    assert record["level"] == "error"
    assert "boom" in json.dumps(record)  # the cause (with its traceback) is on the line
    assert sum("boom" in json.dumps(r) for r in records) == 1


async def test_every_error_logged_once() -> None:
    app = test_app("t")
    app.register(FailingFinalize(), name="closer", priority=0)
    app.register(FailingInitAndFinalize(), name="broken", priority=1)
    with capture_logs() as logs:
        assert await serve(app) == 1
    assert [(e.component, e.operation) for e in app.errors] == [("broken", "init"), ("closer", "finalize")]
    errors = [e for e in logs if e["log_level"] == "error" and "operation" in e]
    assert sorted((e["component"], e["operation"]) for e in errors) == [("broken", "init"), ("closer", "finalize")]
    for error in app.errors:
        matching = [e for e in logs if e["event"] == str(error)]
        assert len(matching) == 1, (str(error), logs)
    assert [e["event"].split(":")[0:2] for e in errors] == [["broken", " init failed"], ["closer", " finalize failed"]]


async def test_config_error_logged_once_in_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("T_LOG_LEVEL", "verbose")
    app, stream = json_app()
    assert await serve(app) == 1
    records = lines(stream)
    failed = [r for r in records if r.get("operation") == "config"]
    assert len(failed) == 1
    assert "T_LOG_LEVEL" in failed[0]["event"]


async def test_log_settings_kept_when_another_app_setting_is_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid LOG_ENCODING=json still applies to the line that reports a bad START_TIMEOUT."""
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("T_START_TIMEOUT", "-1")
    app, stream = json_app()
    assert await serve(app) == 1
    records = lines(stream)  # fails if the error line is console-rendered
    assert [r["operation"] for r in records if "operation" in r] == ["config"]


# -- the injected logger ----------------------------------------------------------------------


async def test_injected_logger_is_bound_with_the_component_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("T_LOG_FIELDS", '{"env": "test"}')
    app, stream = json_app()
    app.register(Db(), name="db")
    app.register(Pinger(), name="pinger", priority=1)
    assert await serve(app) == 0
    records = lines(stream)
    by_event = {r["event"]: r for r in records}
    assert by_event["opening database"]["component"] == "db"
    assert by_event["opening database"]["path"] == ":memory:"
    assert by_event["closing database"]["component"] == "db"
    assert by_event["pinger ready"]["component"] == "pinger"
    assert by_event["pinging"]["component"] == "pinger"
    for event in ("opening database", "pinging"):
        assert by_event[event]["app"] == "t" and by_event[event]["env"] == "test"


async def test_injected_logger_with_capture_logs() -> None:
    app = test_app("t")
    app.register(Db(), name="db")
    with capture_logs() as logs:
        assert await serve(app) == 0
    (opening,) = [e for e in logs if e["event"] == "opening database"]
    assert opening["component"] == "db"


# -- two apps, no global state ----------------------------------------------------------------


async def test_two_apps_keep_separate_levels_and_encodings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A_LOG_ENCODING", "json")
    monkeypatch.setenv("A_LOG_LEVEL", "error")
    monkeypatch.setenv("B_LOG_ENCODING", "json")
    monkeypatch.setenv("B_LOG_LEVEL", "debug")
    monkeypatch.setenv("B_LOG_FIELDS", '{"only": "b"}')
    configured = structlog.is_configured()
    app_a, stream_a = json_app("a")
    app_b, stream_b = json_app("b")
    app_a.register(Db(), name="db")
    app_b.register(Db(), name="db")
    results: dict[str, int] = {}

    async def run(key: str, app: App) -> None:
        results[key] = await serve(app)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "a", app_a)
        tg.start_soon(run, "b", app_b)
    assert results == {"a": 0, "b": 0}
    assert stream_a.getvalue() == ""  # level error: nothing to say
    records_b = lines(stream_b)
    assert any(r["event"] == "opening database" for r in records_b)
    assert all(r["app"] == "b" and r["only"] == "b" for r in records_b)
    assert structlog.is_configured() == configured  # no global structlog configuration


async def test_apps_in_sequence_do_not_inherit_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_ENCODING", "json")
    monkeypatch.setenv("T_LOG_LEVEL", "error")
    first, first_stream = json_app()
    assert await serve(first) == 0
    monkeypatch.setenv("T_LOG_LEVEL", "info")
    second, second_stream = json_app()
    assert await serve(second) == 0
    assert first_stream.getvalue() == ""
    assert lines(second_stream)
