"""Fixtures for the flows tests: ``flow_engine``, one engine under test at a time.

Every test of the shared suite takes ``flow_engine`` and runs its flows
through it, so one suite runs against every engine. A test written for it
keeps to what every engine can do: stores and results are JSON data only,
and side effects go to lists of the module or the test (an engine's workers
run in the test's own process).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from nacelle_py.base import flows

ENGINES_UNDER_TEST = ["serial", "parallel"]
"""The engines the shared suite runs against (the worker-based engine joins once it is built)."""

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
def flow_engine(request: pytest.FixtureRequest) -> EngineUnderTest:
    """The engine a test of the shared suite runs its flows on (each in turn)."""
    return EngineUnderTest(str(request.param))


@pytest.fixture(autouse=True)
def no_flows_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Unset the machine's FLOWS_* settings, prefixed or not, for the length of a test."""
    for key in list(os.environ):
        if "FLOWS_" in key:
            monkeypatch.delenv(key)
    yield
