"""example_app's flaky process and its restart policy, as a real subprocess.

``flaky`` is registered with ``restart="on_failure"`` (backoff 0.2s doubling,
``EXAMPLE_FLAKY_MAX_RESTARTS`` within ``EXAMPLE_FLAKY_RESTART_WINDOW``).
Crashed through ``POST /flaky/crash`` it is restarted each time, one
``restarting component`` warning per crash, the restart counted on
``/metrics`` and ``/readyz`` back to 200, and SIGTERM still exits 0;
crashing by itself (``EXAMPLE_FLAKY_CRASH_EVERY``) more often than allowed
escalates: the app unwinds with status 1.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from harness import AppProcess, clean_env  # noqa: E402
from test_example_app import BOOT_TIMEOUT, EXIT_TIMEOUT, boot, command  # noqa: E402
from test_example_app_http import ports  # noqa: E402

CRASHES = 3  # fewer than the default max_restarts (5 within 60s): no escalation
RESTART_TIMEOUT = 10.0  # a backoff is at most 5s (the cap), 0.2-0.8s for the first three
RESTARTS_METRIC = re.compile(r'^nacelle_component_restarts_total\{component="flaky"\} (\S+)$', re.MULTILINE)


def restarts_metric(ops: httpx.Client) -> float:
    found = RESTARTS_METRIC.search(ops.get("/metrics").text)
    assert found, "no nacelle_component_restarts_total for flaky on /metrics"
    return float(found.group(1))


def flaky_status(ops: httpx.Client) -> dict[str, object]:
    return next(c for c in ops.get("/debug/components").json()["components"] if c["name"] == "flaky")


def wait_ready(ops: httpx.Client, app: AppProcess) -> None:
    """Poll /readyz (bounded) until it answers 200."""
    deadline = time.monotonic() + RESTART_TIMEOUT
    while True:
        answer = ops.get("/readyz")
        if answer.status_code == 200:
            return
        assert time.monotonic() < deadline, f"/readyz still {answer.status_code} {answer.text}\n{app.dump()}"
        time.sleep(0.01)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_crashes_through_the_api_are_restarted_and_sigterm_exits_0(backend: str, tmp_path: Path) -> None:
    with boot(backend, tmp_path / "flaky.sqlite3") as app:
        (api_host, api_port), (ops_host, ops_port) = ports(app)
        with (
            httpx.Client(base_url=f"http://{api_host}:{api_port}", timeout=5) as api,
            httpx.Client(base_url=f"http://{ops_host}:{ops_port}", timeout=5) as ops,
        ):
            assert "POST /flaky/crash" in api.get("/").json()["routes"]
            before = flaky_status(ops)
            assert before["restart"] == "on_failure" and before["state"] == "running" and before["restarts"] == 0
            assert restarts_metric(ops) == 0
            assert api.get("/flaky/crash").status_code == 405
            for attempt in range(1, CRASHES + 1):
                crashed = api.post("/flaky/crash")
                assert crashed.status_code == 202, crashed.text
                assert crashed.json() == {"component": "flaky", "run": attempt, "crashing": True}
                if attempt == CRASHES:  # the third backoff is 0.4s at least: time to look at the restart
                    again = api.post("/flaky/crash")
                    assert again.status_code == 409, again.text  # one crash at a time; no run to crash meanwhile
                warning = app.wait_for(
                    lambda e, n=attempt: e.get("event") == "restarting component" and e.get("attempt") == n,
                    RESTART_TIMEOUT,
                    f"restart attempt {attempt}",
                )
                assert warning["component"] == "flaky" and warning["level"] == "warning"
                assert "FlakyCrash: crash requested through POST /flaky/crash" in warning["error"]
                assert f"(run {attempt}," in warning["error"]
                if attempt == CRASHES:
                    waiting = ops.get("/readyz")
                    assert waiting.status_code == 503, waiting.text
                    assert waiting.json()["reasons"] == {"flaky": "restarting"}
                app.wait_for(
                    lambda e, n=attempt: (
                        e.get("event") == "restarted" and e.get("component") == "flaky" and e.get("restarts") == n
                    ),
                    RESTART_TIMEOUT,
                    f"restart {attempt} done",
                )
                wait_ready(ops, app)
                assert restarts_metric(ops) == attempt
                status = flaky_status(ops)
                assert status["state"] == "running" and status["restarts"] == attempt
                assert f"(run {attempt}," in str(status["last_error"])
            assert api.post("/rows", json={"after": "crashes"}).status_code == 201  # the rest of the app ran on
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
    restarting = [e for e in app.events if e.get("event") == "restarting component"]
    assert [(e["component"], e["attempt"]) for e in restarting] == [("flaky", n) for n in range(1, CRASHES + 1)]
    # Those warnings are all: no other warning, no error, one run per crash and the last one stopped cleanly.
    assert [e for e in app.events if e.get("level") in ("warning", "error", "critical")] == restarting, app.dump()
    assert app.count("run starting", "flaky") == CRASHES + 1
    assert app.count("run finished", "flaky") == 1
    assert app.count("run starting", "heartbeat") == 1  # one_for_one: nothing else restarted
    assert app.events[-1]["event"] == "app stopped" and app.events[-1]["status"] == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_crashing_by_itself_too_often_escalates_to_status_1(backend: str, tmp_path: Path) -> None:
    env = clean_env(
        EXAMPLE_DB_PATH=str(tmp_path / "flaky.sqlite3"),
        EXAMPLE_HTTP_PORT="0",
        EXAMPLE_OPS_ADDR="off",
        EXAMPLE_FLAKY_CRASH_EVERY="0.3",
        EXAMPLE_FLAKY_MAX_RESTARTS="2",
        EXAMPLE_FLAKY_RESTART_WINDOW="60",
    )
    with AppProcess(command(backend), env) as app:
        # Three runs of 0.3s and two backoffs of at most 0.4s: it escalates within seconds.
        assert app.wait(BOOT_TIMEOUT) == 1, app.dump()
    restarting = [e for e in app.events if e.get("event") == "restarting component"]
    assert [(e["component"], e["attempt"]) for e in restarting] == [("flaky", 1), ("flaky", 2)], app.dump()
    assert all("crashed by itself after 0.3s (EXAMPLE_FLAKY_CRASH_EVERY" in e["error"] for e in restarting)
    errors = [e for e in app.events if e.get("level") == "error" and e.get("operation") == "restart"]
    assert len(errors) == 1, app.dump()
    assert errors[0]["component"] == "flaky"
    assert "restart intensity exceeded" in errors[0]["event"] and "max_restarts=2" in errors[0]["event"]
    assert "(EXAMPLE_FLAKY_CRASH_EVERY; run 3)" in errors[0]["event"]  # the third crash is the one too many
    escalated = app.events.index(errors[0])
    assert (
        app.index("restarted", "flaky")
        < escalated
        < app.index("shutdown requested")
        < app.index("database closed", "db")
    )
    assert app.events[app.index("shutdown requested")]["reason"] == "flaky: restart intensity exceeded"
    assert app.count("run starting", "flaky") == 3
    assert app.events[-1]["event"] == "app stopped with errors" and app.events[-1]["status"] == 1


def test_a_bad_flaky_setting_is_a_config_error(tmp_path: Path) -> None:
    """(That --help lists the flaky settings is checked with every other setting in test_example_app.py.)"""
    db = tmp_path / "flaky.sqlite3"
    with AppProcess(command("asyncio"), clean_env(EXAMPLE_DB_PATH=str(db), EXAMPLE_FLAKY_MAX_RESTARTS="-1")) as app:
        assert app.wait(BOOT_TIMEOUT) == 1, app.dump()
        errors = [e for e in app.events if e.get("level") == "error" and e.get("operation") == "config"]
        assert len(errors) == 1 and "EXAMPLE_FLAKY_MAX_RESTARTS" in errors[0]["event"], app.dump()
        assert app.count("init starting") == 0, app.dump()
    assert not db.exists()
