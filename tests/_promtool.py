"""``promtool check metrics``, Prometheus' own linter, over a ``/metrics`` body, for the tests.

Debian ships promtool in its ``prometheus`` package (``make test`` as root installs it, without
starting a Prometheus server). Without it the tests that use it skip with one line saying how to
install it; with ``CI=true`` that is a failure instead, as for the Redis tests, so CI cannot go
green by skipping them.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from _redis import missing_server_outcome

__all__ = ["MISSING_PROMTOOL", "promtool_check", "require_promtool"]

MISSING_PROMTOOL = (
    "promtool not found on PATH: install Debian's prometheus package "
    "(`apt-get install --no-install-recommends prometheus`; `make test` as root does it)"
)
CHECK_TIMEOUT = 30.0  # seconds promtool gets to read one exposition


def require_promtool() -> str:
    """The ``promtool`` path; skips the test without one (fails it when ``CI=true``)."""
    binary = shutil.which("promtool")
    outcome = missing_server_outcome(binary, os.environ)  # the same rule as for redis-server
    if outcome == "skip":
        pytest.skip(MISSING_PROMTOOL)
    if outcome == "fail":
        pytest.fail(f"{MISSING_PROMTOOL} (CI=true: a missing promtool fails the run)", pytrace=False)
    assert binary is not None
    return binary


def promtool_check(binary: str, exposition: str) -> tuple[int, str]:
    """``promtool check metrics`` on ``exposition``: its exit status and what it printed (bounded)."""
    done = subprocess.run(
        [binary, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
    )
    return done.returncode, (done.stdout + done.stderr).strip()
