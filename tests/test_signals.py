"""Real signals to real subprocesses: a process that ignores stop(), a second signal, shutdown timeouts.

tests/scripts/stubborn_app.py runs an app whose process never returns from
run() on its own, on either backend, as an async run, a plain ``def`` run
blocking a worker thread, or an async run shielded from cancellation. Order
is asserted on the parsed JSON log events; the only timings asserted are
the promised upper bounds (exit within about a second of a second signal).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from harness import SCRIPTS, AppProcess, clean_env  # noqa: E402

BACKENDS = ["asyncio", "trio"]
BOOT_TIMEOUT = 30.0  # cold interpreter + imports on a busy machine
FORCED_EXIT_LIMIT = 1.0  # issue 2, lifecycle rule 7: exit within 1 s of the second signal
FORCED_EXIT_SLACK = 0.25  # process teardown and the test's own scheduling


def start(backend: str, mode: str, shutdown_timeout: float | None = None) -> AppProcess:
    args = [str(SCRIPTS / "stubborn_app.py"), backend, mode]
    if shutdown_timeout is not None:
        args.append(str(shutdown_timeout))
    app = AppProcess(args, clean_env())
    try:
        app.wait_event("app healthy; supervising", BOOT_TIMEOUT)
        if mode == "thread":
            app.wait_event("blocking in a worker thread", BOOT_TIMEOUT, component="stubborn")
    except BaseException:
        app.close()
        raise
    return app


def first_signal_handled(app: AppProcess, signum: signal.Signals) -> None:
    app.send(signum)
    app.wait_event("signal received; shutting down gracefully", 10)
    app.wait_event("stop ignored", 10, component="stubborn")
    # Different signals are never merged, but the same one within 50 ms is (make's double
    # SIGTERM); pause past that window so both variants mean "a second request".
    time.sleep(0.1)


def force_and_time(app: AppProcess, signum: signal.Signals) -> tuple[int, float]:
    sent = time.monotonic()
    app.send(signum)
    status = app.wait(timeout=5)
    return status, time.monotonic() - sent


def mode_param(mode: str) -> object:
    return mode


def last_event(mode: str) -> str:
    """A run shielded from cancellation cannot end: boot() then ends the process itself."""
    return "exiting now with status 1" if mode == "shielded" else "app stopped with errors"


@pytest.mark.parametrize("mode", [mode_param(m) for m in ("async", "thread", "shielded")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_signal_forces_exit_within_a_second(backend: str, mode: str) -> None:
    with start(backend, mode) as app:
        first_signal_handled(app, signal.SIGTERM)
        assert app.proc.poll() is None, "the app must still be waiting for the stubborn run"
        status, elapsed = force_and_time(app, signal.SIGINT)
        assert status == 1, app.dump()
        assert elapsed < FORCED_EXIT_LIMIT + FORCED_EXIT_SLACK, f"exit took {elapsed:.2f}s\n{app.dump()}"
        app.assert_order(
            ("resource", "resource acquired"),
            (None, "app healthy; supervising"),
            (None, "signal received; shutting down gracefully"),
            ("stubborn", "stop starting"),
            ("stubborn", "stop ignored"),
            (None, "second signal; forcing shutdown"),
            ("resource", "finalize starting"),  # finalizers still get their short pass
            ("resource", "resource released"),
            (None, last_event(mode)),
        )
        forced = [e for e in app.events if e.get("operation") == "shutdown"]
        assert len(forced) == 1 and "forced by second signal SIGINT" in forced[0]["event"], app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_signal_twice_after_the_window_forces_exit(backend: str) -> None:
    with start(backend, "thread") as app:
        first_signal_handled(app, signal.SIGTERM)
        status, elapsed = force_and_time(app, signal.SIGTERM)
        assert status == 1, app.dump()
        assert elapsed < FORCED_EXIT_LIMIT + FORCED_EXIT_SLACK, f"exit took {elapsed:.2f}s\n{app.dump()}"
        app.assert_order(
            (None, "signal received; shutting down gracefully"),
            (None, "second signal; forcing shutdown"),
            (None, "app stopped with errors"),
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_signal_alone_keeps_waiting_for_the_run(backend: str) -> None:
    """Without a second signal the app waits out shutdown_timeout (30 s here) rather than exiting."""
    with start(backend, "async") as app:
        first_signal_handled(app, signal.SIGINT)
        with pytest.raises(AssertionError, match="still running"):
            app.wait(timeout=1.0)
        assert app.count("finalize starting") == 0, app.dump()


@pytest.mark.parametrize("mode", [mode_param(m) for m in ("async", "thread", "shielded")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_timeout_expiry_exits_1(backend: str, mode: str) -> None:
    with start(backend, mode, shutdown_timeout=0.5) as app:
        app.send(signal.SIGTERM)
        status = app.wait(timeout=8)
        assert status == 1, app.dump()
        errors = [e for e in app.events if e.get("level") == "error" and e.get("component") == "stubborn"]
        assert len(errors) == (2 if mode == "shielded" else 1), app.dump()
        if mode == "shielded":
            assert errors[1]["event"] == "stubborn: stop failed: run() ignored cancellation; abandoned", app.dump()
        assert errors[0]["operation"] == "stop"
        assert errors[0]["event"].startswith("stubborn: stop failed: run() did not return within 0.5s"), app.dump()
        timeout_at = app.events.index(errors[0])
        assert app.index("stop starting", "stubborn") < timeout_at < app.index("finalize starting", "resource")
        app.assert_order(
            (None, "signal received; shutting down gracefully"),
            ("stubborn", "stop starting"),
            ("stubborn", "stop ignored"),
            ("resource", "finalize starting"),
            ("resource", "resource released"),
            ("resource", "finalize finished"),
            (None, last_event(mode)),
        )
        assert app.count("second signal; forcing shutdown") == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_sigints_in_quick_succession_both_count(backend: str) -> None:
    """Each arrival counts, on both backends: no waiting for the first to be handled.

    20 ms apart: far enough that a busy machine still delivers them as two signals
    (the kernel merges a signal that is still pending), close enough that nothing
    has happened in between.
    """
    with start(backend, "async") as app:
        app.send(signal.SIGINT)
        deadline = time.perf_counter() + 0.02
        while time.perf_counter() < deadline:
            pass
        app.send(signal.SIGINT)
        status = app.wait(timeout=5)
        assert status == 1, app.dump()
        assert app.count("second signal; forcing shutdown") == 1, app.dump()
