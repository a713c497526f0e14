"""Every async test runs on asyncio and trio through anyio's pytest plugin."""

from __future__ import annotations

import os
import socket
from collections.abc import Generator, Iterator

import pytest

# The Redis fixtures: redis_server (session), redis_url and redis_factory; see tests/_redis.py.
from _redis import fold_missing_server_skip, redis_factory, redis_server, redis_url  # noqa: F401

# The App's own operational settings: a machine running the tests under systemd, or with
# an ops endpoint configured, must not steer any test (tests that want them set them).
OPS_SETTINGS = ("OPS_ADDR", "OPS_METRICS", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a socket of the test listens on (for "address in use" paths)."""
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        yield blocker.getsockname()[1]
    finally:
        blocker.close()


@pytest.fixture(autouse=True)
def no_ops_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset the ops and systemd settings, prefixed or not, for the length of a test."""
    for key in list(os.environ):
        if key.endswith(OPS_SETTINGS):
            monkeypatch.delenv(key)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport() -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fold every "no redis-server" skip into one summary line (see tests/_redis.py)."""
    report = yield
    fold_missing_server_skip(report)
    return report
