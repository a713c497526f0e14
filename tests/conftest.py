"""Every async test runs on asyncio and trio through anyio's pytest plugin."""

from __future__ import annotations

import os

import pytest

# The App's own operational settings: a machine running the tests under systemd, or with
# an ops endpoint configured, must not steer any test (tests that want them set them).
OPS_SETTINGS = ("OPS_ADDR", "OPS_METRICS", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def no_ops_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset the ops and systemd settings, prefixed or not, for the length of a test."""
    for key in list(os.environ):
        if key.endswith(OPS_SETTINGS):
            monkeypatch.delenv(key)
