"""Fixtures for the tests of the built-in processes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_pipeline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own PIPELINE_* settings (with any app prefix) must not steer a test."""
    for key in list(os.environ):
        if key.endswith(("PIPELINE_ENGINE", "PIPELINE_SHUTDOWN_TIMEOUT")):
            monkeypatch.delenv(key)


@pytest.fixture
def abort() -> Iterator[threading.Event]:
    """Set when the test ends: endless plain roots check it, so their threads always end."""
    flag = threading.Event()
    yield flag
    flag.set()
