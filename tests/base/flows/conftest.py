"""Fixtures for the flows tests: ``flow_engine``, one engine under test at a time.

Every test of the shared suite takes ``flow_engine`` and runs its flows
through it, so one suite runs against every engine. A test written for it
keeps to what every engine can do: stores and results are JSON data only,
and side effects go to lists of the module or the test (an engine's workers
run in the test's own process).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from nacelle_py.base import Dispatcher, flows

ENGINES_UNDER_TEST = ["serial", "parallel", "worker-based"]
"""The engines the shared suite runs against: all of them (worker-based on the tests' own redis-server)."""

CONCURRENT = {"parallel", "worker-based"}
"""The engines that run unordered atoms at once (serial runs one atom at a time)."""


class EngineUnderTest:
    """One engine, by name: ``run``, ``load`` and ``resume`` pass it to the flows functions.

    An engine that needs more than its name (the worker-based engine's
    dispatcher) puts it in ``options``; every call passes them along.
    """

    def __init__(self, name: str, **options: Any) -> None:
        self.name = name
        self.options = options
        self.concurrent = name in CONCURRENT

    async def run(self, flow: flows.Flow, **kwargs: Any) -> dict[str, Any]:
        """``flows.run(flow, engine=name, **kwargs)``."""
        return await flows.run(flow, engine=self.name, **self.options, **kwargs)

    async def load(self, flow: flows.Flow, **kwargs: Any) -> flows.FlowEngine:
        """``flows.load(flow, engine=name, **kwargs)``."""
        return flows.load(flow, engine=self.name, **self.options, **kwargs)

    async def resume(self, flow: flows.Flow, flow_id: str, **kwargs: Any) -> dict[str, Any]:
        """``flows.resume(flow, flow_id, engine=name, **kwargs)`` (``persistence=`` is the caller's)."""
        return await flows.resume(flow, flow_id, engine=self.name, **self.options, **kwargs)

    def __repr__(self) -> str:
        return f"<engine {self.name}>"


@pytest.fixture(params=ENGINES_UNDER_TEST)
async def flow_engine(request: pytest.FixtureRequest) -> AsyncIterator[EngineUnderTest]:
    """The engine a test of the shared suite runs its flows on (each in turn).

    For the worker-based engine, a Dispatcher on the redis backend (a fresh
    stream, a short lease) consumes in this process for the length of the
    test: the orchestrator and the worker are the same process, as the
    shared suite's side effects need.
    """
    name = str(request.param)
    if name != "worker-based":
        yield EngineUnderTest(name)
        return
    jobs = Dispatcher(
        backend="redis",
        redis_url=request.getfixturevalue("redis_url"),
        stream=f"flows:{uuid.uuid4().hex}",
        lease=1.0,
        max_workers=128,
        task_timeout=60.0,
    )
    async with jobs:
        yield EngineUnderTest(name, dispatcher=jobs)


@pytest.fixture(autouse=True)
def no_flows_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Unset the machine's FLOWS_* settings, prefixed or not, for the length of a test."""
    for key in list(os.environ):
        if "FLOWS_" in key:
            monkeypatch.delenv(key)
    yield
