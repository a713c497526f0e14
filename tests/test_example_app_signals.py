"""example_app as a real subprocess, on asyncio and trio: SIGHUP reloads, SIGUSR1 dumps, SIGTERM still stops.

The heartbeat's tick lives in a real settings file (``EXAMPLE_ENV_FILE``),
the one thing about a running process an operator can change from outside;
the test edits it between signals. Logs are JSON, asserted on the parsed
events; every wait is bounded.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from harness import AppProcess, clean_env  # noqa: E402

BOOT_TIMEOUT = 30.0
STEP_TIMEOUT = 10.0
TRIO_MAIN = "from example_app import build_app; raise SystemExit(build_app().boot(backend='trio'))"


def command(backend: str) -> list[str]:
    return ["-m", "example_app"] if backend == "asyncio" else ["-c", TRIO_MAIN]


def boot(backend: str, tmp_path: Path, settings: Path) -> AppProcess:
    """Start the example with its settings file and wait (bounded) until it is healthy and has beaten."""
    env = clean_env(
        EXAMPLE_ENV_FILE=str(settings),
        EXAMPLE_DB_PATH=str(tmp_path / "beats.sqlite3"),
        EXAMPLE_HTTP_PORT="0",
        EXAMPLE_OPS_ADDR="127.0.0.1:0",
        EXAMPLE_HTTP_DRAIN_DELAY="0",
    )
    app = AppProcess(command(backend), env)
    try:
        app.wait_event("app healthy; supervising", BOOT_TIMEOUT)
        app.wait_for(lambda e: e.get("event") == "heartbeat" and e.get("beat") == 2, STEP_TIMEOUT, "beat 2")
    except BaseException:
        app.close()
        raise
    return app


def beat_after(app: AppProcess, index: int) -> None:
    """Wait for a heartbeat logged after event ``index``: the app still runs."""
    app.wait_for(
        lambda e: e.get("event") == "heartbeat" and app.events.index(e) > index, STEP_TIMEOUT, "a later heartbeat"
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sighup_reloads_sigusr1_dumps_and_sigterm_still_stops(backend: str, tmp_path: Path) -> None:
    settings = tmp_path / "example.env"
    settings.write_text("EXAMPLE_TICK=0.05\n")
    with boot(backend, tmp_path, settings) as app:
        started = app.wait_event("heartbeat started", 1, component="heartbeat")
        assert started["tick"] == 0.05

        # A new tick in the file: SIGHUP re-reads it and the heartbeat's reload() takes it.
        settings.write_text("EXAMPLE_TICK=0.07\n")
        app.send(signal.SIGHUP)
        reloaded = app.wait_event("heartbeat settings reloaded", STEP_TIMEOUT, component="heartbeat")
        assert reloaded["tick"] == 0.07, app.dump()
        done = app.wait_event("reloaded", STEP_TIMEOUT)
        assert done["settings_changed"] == ["HeartbeatSettings"] and done["failed"] == 0, app.dump()
        config = app.wait_event("config reloaded", 1)
        assert config["values"]["tick"] == 0.07 and config["values"]["api_token"] == "**********"
        beat_after(app, app.events.index(done))

        # An invalid file: every problem logged, the current settings kept, still running.
        settings.write_text("EXAMPLE_TICK=0\nEXAMPLE_LOAD_EVERY=often\n")
        app.send(signal.SIGHUP)
        rejected = app.wait_event("reload rejected: invalid configuration; the current settings stay", STEP_TIMEOUT)
        assert rejected["level"] == "error" and rejected["problems"] == 2
        assert sorted(e.split(":")[0] for e in rejected["errors"]) == ["EXAMPLE_LOAD_EVERY", "EXAMPLE_TICK"], rejected
        assert app.count("heartbeat settings reloaded") == 1
        beat_after(app, app.events.index(rejected))

        # SIGUSR1: states and stacks, nothing stopped.
        app.send(signal.SIGUSR1)
        components = app.wait_event("dump: components", STEP_TIMEOUT)
        states = {c["name"]: (c["kind"], c["state"], c["priority"]) for c in components["components"]}
        assert states["db"] == ("initializer", "initialized", 0)
        assert states["heartbeat"] == ("process", "running", 2)
        assert states["api"] == ("process", "running", 3)
        tasks = app.wait_event("dump: tasks", STEP_TIMEOUT)
        assert tasks["backend"] == backend
        assert "task 'nacelle run heartbeat'" in tasks["stack"] and "heartbeat.py" in tasks["stack"]
        threads = app.wait_event("dump: threads", STEP_TIMEOUT)
        assert "thread 'nacelle loop watch'" in threads["stack"]
        beat_after(app, app.events.index(threads))

        assert app.count("signal received; shutting down gracefully") == 0
        app.send(signal.SIGTERM)
        assert app.wait(STEP_TIMEOUT) == 0, app.dump()
        app.assert_order(
            (None, "reloaded"),
            (None, "reload rejected: invalid configuration; the current settings stay"),
            (None, "dump: components"),
            (None, "signal received; shutting down gracefully"),
            ("heartbeat", "heartbeat stopped"),
            (None, "app stopped"),
        )
