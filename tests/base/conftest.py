"""Fixtures for the tests of the built-in processes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

# Every setting a built-in reads: the machine's own values (with any app prefix) must not steer a test.
BUILTIN_SETTINGS = (
    "PIPELINE_ENGINE",
    "PIPELINE_SHUTDOWN_TIMEOUT",
    "MACHINE_MAX_ROUTINES",
    "MACHINE_BUFFER",
    "WORKER_TICK_INTERVAL",
    "WORKER_STRICT_CLOCK",
    "HTTP_HOST",
    "HTTP_PORT",
    "HTTP_CERT_FILE",
    "HTTP_KEY_FILE",
    "HTTP_SHUTDOWN_TIMEOUT",
    "HTTP_DRAIN_DELAY",
    "HTTP_ACCESS_LOG",
    "GRPC_HOST",
    "GRPC_PORT",
    "GRPC_GRACE_PERIOD",
    "GRPC_DRAIN_DELAY",
    "DISPATCHER_BACKEND",
    "DISPATCHER_STREAM",
    "DISPATCHER_LEASE",
    "DISPATCHER_MAX_DELIVERIES",
    "DISPATCHER_CONSUME",
    "DISPATCHER_KEY_TTL",
    "REDIS_URL",
    "FLOWS_ENGINE",
    "FLOWS_CONCURRENCY",
    "FLOWS_MAX_RUNNING",
    "FLOWS_STORE",
)


@pytest.fixture(autouse=True)
def no_builtin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every built-in's settings, prefixed or not, for the length of a test."""
    for key in list(os.environ):
        if key.endswith(BUILTIN_SETTINGS):
            monkeypatch.delenv(key)


@pytest.fixture
def abort() -> Iterator[threading.Event]:
    """Set when the test ends: endless plain roots check it, so their threads always end."""
    flag = threading.Event()
    yield flag
    flag.set()
