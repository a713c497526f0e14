"""example_app as a real subprocess: boot, heartbeats, graceful signals, secrets, --help, bad env.

The app runs with ``python -m example_app`` (asyncio, as ``make run`` does)
and, for trio, through ``python -c`` with ``build_app().boot(backend="trio")``.
Logs are JSON (LOG_ENCODING=json); order is asserted on the parsed events.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from harness import ROOT, AppProcess, clean_env  # noqa: E402

if str(ROOT) not in sys.path:  # example_app is not installed; plain `pytest` may not have the root on the path
    sys.path.insert(0, str(ROOT))
from example_app import HeartbeatSettings  # noqa: E402

BOOT_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0
MASK = "**********"
DEFAULT_TOKEN = HeartbeatSettings.model_fields["api_token"].default.get_secret_value()
TRIO_MAIN = "from example_app import build_app; raise SystemExit(build_app().boot(backend='trio'))"


def command(backend: str) -> list[str]:
    return ["-m", "example_app"] if backend == "asyncio" else ["-c", TRIO_MAIN]


def boot(backend: str, db: Path, **env: str) -> AppProcess:
    """Start the example and wait (bounded) until it is healthy and has beaten three times."""
    ports = {"EXAMPLE_HTTP_PORT": "0", "EXAMPLE_OPS_ADDR": "127.0.0.1:0", "EXAMPLE_HTTP_DRAIN_DELAY": "0"}
    app = AppProcess(command(backend), clean_env(EXAMPLE_DB_PATH=str(db), EXAMPLE_TICK="0.05", **{**ports, **env}))
    try:
        app.wait_event("app healthy; supervising", BOOT_TIMEOUT)
        app.wait_for(lambda e: e.get("event") == "heartbeat" and e.get("beat") == 3, 10, "beat 3")
    except BaseException:
        app.close()
        raise
    return app


def rows(db: Path) -> list[tuple[int, float]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("select beat, at from heartbeat order by id").fetchall()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_signal_stops_gracefully_in_order(backend: str, signum: signal.Signals, tmp_path: Path) -> None:
    db = tmp_path / "beats.sqlite3"
    with boot(backend, db) as app:
        app.send(signum)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
        app.assert_order(
            ("db", "init starting"),
            ("db", "database opened"),
            ("db", "init finished"),
            ("heartbeat", "init finished"),
            ("heartbeat", "run starting"),
            ("heartbeat", "heartbeat"),  # the first row is written before the app counts as healthy
            (None, "app healthy; supervising"),
            (None, "signal received; shutting down gracefully"),
            ("heartbeat", "stop starting"),
            ("heartbeat", "heartbeat stopped"),
            ("heartbeat", "run finished"),
            ("heartbeat", "stop finished"),
            ("db", "finalize starting"),
            ("db", "database closed"),
            ("db", "finalize finished"),
            (None, "app stopped"),
        )
        received = app.events[app.index("signal received; shutting down gracefully")]
        assert received["signal"] == signum.name
        assert [e for e in app.events if e.get("level") in ("warning", "error", "critical")] == [], app.dump()
        assert app.events[-1]["event"] == "app stopped" and app.events[-1]["status"] == 0


def test_heartbeat_rows_are_written(tmp_path: Path) -> None:
    db = tmp_path / "beats.sqlite3"
    with boot("asyncio", db) as app:
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
        beats = [e["beat"] for e in app.events if e.get("event") == "heartbeat"]
    written = rows(db)
    assert len(written) >= 3
    # One row per logged beat, numbered in order, at non-decreasing times.
    assert [beat for beat, _ in written] == beats == list(range(1, len(beats) + 1))
    times = [at for _, at in written]
    assert times == sorted(times)
    stopped = [e for e in app.events if e.get("event") == "heartbeat stopped"]
    assert stopped[0]["beats"] == len(written)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_heartbeat_routine_observes_beats_and_ends_with_it(backend: str, tmp_path: Path) -> None:
    with boot(backend, tmp_path / "beats.sqlite3") as app:
        observed = app.wait_event("beats observed", BOOT_TIMEOUT, component="heartbeat")
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
    assert observed["seen"] == 10 and observed["routine"] == "beat-observer"
    # The routine was cancelled with its owner: nothing of it is logged as an error.
    assert not [e for e in app.events if e.get("level") == "error"], app.dump()


def test_the_report_worker_ticks_at_once_and_stops_with_the_app(tmp_path: Path) -> None:
    with boot("asyncio", tmp_path / "beats.sqlite3", EXAMPLE_WORKER_TICK_INTERVAL="0.1") as app:
        app.wait_for(lambda e: e.get("event") == "report" and e.get("heartbeat_rows", 0) >= 1, BOOT_TIMEOUT)
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
    reports = [e for e in app.events if e.get("event") == "report"]
    assert len(reports) >= 2 and all(e["component"] == "report" for e in reports)


def test_two_quick_sigterms_are_one_request(tmp_path: Path) -> None:
    """make forwards SIGTERM and a process-group kill sends another: that is still a graceful stop."""
    with boot("asyncio", tmp_path / "beats.sqlite3") as app:
        app.send(signal.SIGTERM)
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
        assert app.count("second signal; forcing shutdown") == 0
        assert app.count("finalize finished", "db") == 1


def test_secret_is_masked_in_the_boot_log(tmp_path: Path) -> None:
    token = "tok-9f8e7d6c5b4a-do-not-print"
    with boot("asyncio", tmp_path / "beats.sqlite3", EXAMPLE_API_TOKEN=token) as app:
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
        loaded = [
            e for e in app.events if e.get("event") == "config loaded" and e.get("settings") == "HeartbeatSettings"
        ]
        assert len(loaded) == 1, app.dump()
        assert loaded[0]["values"] == {"tick": 0.05, "api_token": MASK}
        assert token not in app.stderr and token not in app.stdout


def test_default_secret_is_masked_too(tmp_path: Path) -> None:
    with boot("asyncio", tmp_path / "beats.sqlite3") as app:
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
        assert DEFAULT_TOKEN not in app.stderr + app.stdout
        assert MASK in app.stderr


def test_help_lists_every_setting_and_starts_nothing(tmp_path: Path) -> None:
    db = tmp_path / "beats.sqlite3"
    result = subprocess.run(
        [sys.executable, "-m", "example_app", "--help"],
        cwd=ROOT,
        env=clean_env(EXAMPLE_DB_PATH=str(db)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for env in (
        "EXAMPLE_TICK",
        "EXAMPLE_DB_PATH",
        "EXAMPLE_API_TOKEN",
        "LOG_LEVEL",
        "LOG_ENCODING",
        "EXAMPLE_SHUTDOWN_TIMEOUT",
        "EXAMPLE_START_TIMEOUT",
        "EXAMPLE_FLAKY_CRASH_EVERY",
        "EXAMPLE_FLAKY_MAX_RESTARTS",
        "EXAMPLE_FLAKY_RESTART_WINDOW",
    ):
        assert env in result.stdout, f"{env} missing from --help:\n{result.stdout}"
    assert "Seconds between two heartbeat rows." in result.stdout
    assert DEFAULT_TOKEN not in result.stdout
    assert "app starting" not in result.stderr
    assert not db.exists()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_bad_env_exits_1_naming_the_variable_and_initialises_nothing(backend: str, tmp_path: Path) -> None:
    db = tmp_path / "beats.sqlite3"
    with AppProcess(command(backend), clean_env(EXAMPLE_DB_PATH=str(db), EXAMPLE_TICK="abc")) as app:
        assert app.wait(EXIT_TIMEOUT + BOOT_TIMEOUT) == 1, app.dump()
        errors = [e for e in app.events if e.get("level") == "error" and e.get("operation") == "config"]
        assert len(errors) == 1, app.dump()
        assert "EXAMPLE_TICK" in errors[0]["event"] and "'abc'" in errors[0]["event"]
        assert app.count("init starting") == 0 and app.count("app starting") == 0, app.dump()
    assert not db.exists()


def test_every_config_problem_is_reported_at_once(tmp_path: Path) -> None:
    db = tmp_path / "beats.sqlite3"
    env = clean_env(EXAMPLE_DB_PATH=str(db), EXAMPLE_TICK="-1", EXAMPLE_SHUTDOWN_TIMEOUT="soon")
    result = subprocess.run(
        [sys.executable, "-m", "example_app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "EXAMPLE_TICK" in result.stderr and "EXAMPLE_SHUTDOWN_TIMEOUT" in result.stderr, result.stderr
    assert "init starting" not in result.stderr
    assert not db.exists()
