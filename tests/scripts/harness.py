"""Run an app as a real subprocess and read its JSON log lines with deadlines.

Used by tests/test_signals.py and tests/test_example_app.py. Every wait is
bounded; ``AppProcess`` is a context manager that kills a leftover child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent

Event = dict[str, Any]


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment minus anything the apps under test read, plus JSON logs and ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("EXAMPLE_", "SCRIPT_", "LOG_", "DB_", "HTTP_", "OPS_", "WORKER_", "MACHINE_", "PIPELINE_", "FLOWS_")
        )
        and k
        not in {
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "TICK",
            "API_TOKEN",
            "START_TIMEOUT",
            "SHUTDOWN_TIMEOUT",
            "INIT_TIMEOUT",
            "FINALIZE_TIMEOUT",
            "BACKEND",
            "RELOAD_TIMEOUT",
            "LOOP_BLOCK_WARN",
        }
    }
    env["LOG_ENCODING"] = "json"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` in one unbuffered write: nothing is lost to a SIGKILL right after."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class AppProcess:
    """A child process whose stderr is parsed as JSON log lines (one event dict per line)."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a Ctrl-C in the terminal running pytest does not reach the child
        )
        self._cond = threading.Condition()
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.events: list[Event] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None, is_log: bool) -> None:
        assert stream is not None
        for line in stream:
            with self._cond:
                if is_log:
                    self.stderr_lines.append(line)
                    try:
                        parsed = json.loads(line)
                    except ValueError:
                        parsed = None
                    self.events.append(
                        parsed if isinstance(parsed, dict) else {"event": line.rstrip("\n"), "raw": True}
                    )
                else:
                    self.stdout_lines.append(line)
                self._cond.notify_all()

    # -- reading -------------------------------------------------------------------

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self.stderr_lines)

    @property
    def stdout(self) -> str:
        with self._cond:
            return "".join(self.stdout_lines)

    def dump(self) -> str:
        return f"--- exit: {self.proc.poll()}\n--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float, what: str = "") -> Event:
        """The first event that satisfies ``predicate``, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(r.is_alive() for r in self._readers)):
                    raise AssertionError(f"no log event {what or predicate} within {timeout}s\n{self.dump()}")
                self._cond.wait(min(left, 0.1))

    def wait_event(self, event: str, timeout: float = 10.0, component: str | None = None) -> Event:
        """Wait for a log line whose ``event`` is ``event`` (and, if given, whose component matches)."""
        return self.wait_for(
            lambda e: e.get("event") == event and (component is None or e.get("component") == component),
            timeout,
            f"{event!r}" + (f" from {component}" if component else ""),
        )

    def count(self, event: str, component: str | None = None) -> int:
        with self._cond:
            return sum(
                1
                for e in self.events
                if e.get("event") == event and (component is None or e.get("component") == component)
            )

    def index(self, event: str, component: str | None = None) -> int:
        """Position of the first matching event; fails with the whole log if there is none."""
        with self._cond:
            for i, e in enumerate(self.events):
                if e.get("event") == event and (component is None or e.get("component") == component):
                    return i
        raise AssertionError(f"no log event {event!r} (component {component})\n{self.dump()}")

    def assert_order(self, *steps: tuple[str | None, str]) -> None:
        """Each ``(component, event)`` appears, and in this order."""
        positions = [self.index(event, component) for component, event in steps]
        assert positions == sorted(positions), f"out of order: {list(zip(steps, positions))}\n{self.dump()}"

    # -- driving -------------------------------------------------------------------

    def send(self, signum: signal.Signals) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        """The exit status, waiting at most ``timeout``; then drains the pipes (bounded)."""
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s\n{self.dump()}") from None
        for reader in self._readers:
            reader.join(timeout=5)
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for reader in self._readers:
            reader.join(timeout=2)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> AppProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
