"""FlowRunner: submitted flows run a bounded number at once, end in stats and /metrics, and survive restarts."""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from nacelle_py import App, RegistrationError
from nacelle_py.base import FlowRunner, flows
from nacelle_py.testing import BootError, override_settings, running

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from harness import AppProcess, clean_env  # noqa: E402

pytestmark = pytest.mark.anyio

SCRIPT = str(Path(__file__).resolve().parents[2] / "scripts" / "flows_runner_app.py")


class Add(flows.Task):
    provides = "total"

    async def execute(self, a: int, b: int) -> int:
        return a + b


class Fail(flows.Task):
    async def execute(self, total: int) -> None:
        raise ValueError(f"no {total}")


class Gate(flows.Task):
    """Waits for its gate (a test's event), counting how many wait at once."""

    def __init__(self, gate: anyio.Event, inside: list[int], name: str = "Gate") -> None:
        super().__init__(name)
        self.gate = gate
        self.inside = inside

    async def execute(self) -> None:
        self.inside[0] += 1
        self.inside[1] = max(self.inside[1], self.inside[0])
        await self.gate.wait()
        self.inside[0] -= 1


def app_with(runner: FlowRunner) -> App:
    app = App("shop", parse_args=False, ops_addr="127.0.0.1:0")
    app.register(runner, name="flows", priority=1)
    return app


async def test_submitted_flows_end_with_their_values_or_their_failure_in_stats_and_metrics() -> None:
    ok = flows.linear("sum", Add())
    bad = flows.linear("sum-then-fail", Add(), Fail())
    runner = FlowRunner([ok, bad], engine="parallel")
    async with running(app_with(runner)) as handle:
        first = await runner.submit("sum", {"a": 1, "b": 2})
        assert await runner.result(first, timeout=10) == {"a": 1, "b": 2, "total": 3}
        assert runner.state(first) is flows.SUCCESS
        second = await runner.submit(bad, {"a": 2, "b": 2})
        with pytest.raises(flows.FlowFailed, match="Fail.execute: ValueError: no 4") as caught:
            await runner.result(second, timeout=10)
        assert caught.value.state is flows.REVERTED and runner.state(second) is flows.REVERTED
        assert runner.stats() == flows.FlowRunnerStats(0, 0, 1, 1, 0, 0, 0)
        assert handle.ops_url is not None
        async with httpx.AsyncClient() as client:
            text = (await client.get(handle.ops_url + "/metrics")).text
        lines = text.splitlines()
        for metric, value in (("running", 0), ("succeeded_total", 1), ("reverted_total", 1), ("failed_total", 0)):
            assert f'nacelle_flowrunner_{metric}{{component="flows"}} {value:.1f}' in lines, text


async def test_at_most_max_running_flows_run_at_once() -> None:
    gate = anyio.Event()
    inside = [0, 0]
    flow = flows.linear("gated", Gate(gate, inside))
    runner = FlowRunner([flow], max_running=2)
    async with running(app_with(runner)):
        ids = [await runner.submit("gated") for _ in range(5)]
        with anyio.fail_after(10):
            while inside[0] < 2:
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # were a third to start, it would be inside by now
        stats = runner.stats()
        assert (stats.running, stats.waiting, inside[0]) == (2, 3, 2)
        gate.set()
        for flow_id in ids:
            await runner.result(flow_id, timeout=10)
    assert inside[1] == 2
    assert runner.stats().succeeded == 5


async def test_submit_mistakes_are_clear() -> None:
    runner = FlowRunner([flows.linear("sum", Add())])
    with pytest.raises(RuntimeError, match="not running"):
        await runner.submit("sum", {"a": 1, "b": 1})
    async with running(app_with(runner)):
        with pytest.raises(LookupError, match="no flow named 'nope'.*known: sum"):
            await runner.submit("nope")
        with pytest.raises(flows.FlowError, match="missing requirements 'b'"):
            await runner.submit("sum", {"a": 1})
        with pytest.raises(LookupError, match="no flow 'x'"):
            await runner.result("x")
    with pytest.raises(RegistrationError, match="max_running"):
        FlowRunner(max_running=0)
    with pytest.raises(RegistrationError, match="unknown engine 'fast'"):
        FlowRunner(engine="fast")
    with pytest.raises(RegistrationError, match="two flows are named 'sum'"):
        FlowRunner([flows.linear("sum", Add()), flows.linear("sum", Add())])


async def test_the_worker_based_engine_without_a_dispatcher_fails_boot_naming_the_setting() -> None:
    app = app_with(FlowRunner([flows.linear("sum", Add())]))
    with override_settings(app, FLOWS_ENGINE="worker-based"), pytest.raises(BootError) as caught:
        async with running(app):
            pass
    assert "FLOWS_ENGINE" in str(caught.value.errors) or "FLOWS_ENGINE" in str(caught.value)


async def test_settings_override_the_code(tmp_path: Path) -> None:
    runner = FlowRunner([flows.linear("sum", Add())], engine="serial", max_running=3)
    app = app_with(runner)
    with override_settings(app, FLOWS_ENGINE="parallel", FLOWS_MAX_RUNNING="7", FLOWS_STORE=str(tmp_path / "f.db")):
        async with running(app):
            assert (runner.engine, runner.max_running) == ("parallel", 7)
            flow_id = await runner.submit("sum", {"a": 1, "b": 1})
            await runner.result(flow_id, timeout=10)
    recorded = sqlite3.connect(tmp_path / "f.db").execute("select state from flows where flow_id = ?", (flow_id,))
    assert recorded.fetchone() == ("SUCCESS",)


async def test_a_stop_suspends_running_flows_into_the_store_and_the_next_start_resumes_them(tmp_path: Path) -> None:
    gate = anyio.Event()
    inside = [0, 0]
    runs: list[str] = []

    class After(flows.Task):
        async def execute(self) -> None:
            runs.append("after")

    flow = flows.linear("held", Gate(gate, inside), After())
    store = tmp_path / "flows.db"
    runner = FlowRunner([flow], store=store)
    async with running(app_with(runner)) as handle:
        flow_id = await runner.submit("held")
        with anyio.fail_after(10):
            while inside[0] < 1:
                await anyio.sleep(0.01)
        handle.shutdown()
        with anyio.fail_after(10):
            while handle.states["flows"] != "stopping":
                await anyio.sleep(0.01)
        gate.set()  # the atom in flight finishes during the stop; After does not start
    assert runner.stats().suspended == 1 and runs == []
    saved = flows.SQLiteStore(store)
    assert saved.states(flow_id) == {"flow": "SUSPENDED", "Gate": "SUCCESS"}
    saved.close()
    again = FlowRunner([flow], store=store)
    async with running(app_with(again)):
        assert await again.result(flow_id, timeout=10) == {}
    assert runs == ["after"] and inside[1] == 1  # Gate did not run again
    assert again.stats().resumed == 1


async def test_an_app_killed_mid_flow_resumes_it_at_the_next_boot(tmp_path: Path, anyio_backend: str) -> None:
    env = clean_env(
        FLOWS_STORE=str(tmp_path / "flows.db"),
        RUNNER_TEST_DIR=str(tmp_path),
        RUNNER_TEST_SUBMIT="1",
        BACKEND=anyio_backend,
    )
    (tmp_path / "hold").write_text("")
    with AppProcess([SCRIPT], env) as app:
        with anyio.fail_after(30):
            while "Pack" not in _runs(tmp_path):
                await anyio.sleep(0.05)
        app.send(signal.SIGKILL)
        app.wait(10)
    assert _runs(tmp_path) == ["Pick", "Pack"]
    (tmp_path / "hold").unlink()
    env["RUNNER_TEST_SUBMIT"] = "0"
    with AppProcess([SCRIPT], env) as app:
        app.wait_event("resuming an unfinished flow", timeout=30)
        with anyio.fail_after(30):
            while "Ship" not in _runs(tmp_path):
                await anyio.sleep(0.05)
        app.send(signal.SIGTERM)
        assert app.wait(15) == 0, app.dump()
    assert _runs(tmp_path) == ["Pick", "Pack", "Pack", "Ship"]  # Pick once; Pack again (it was in flight)
    saved = flows.SQLiteStore(tmp_path / "flows.db")
    assert saved.states("order-o-7") == {"flow": "SUCCESS", "Pick": "SUCCESS", "Pack": "SUCCESS", "Ship": "SUCCESS"}
    assert saved.unfinished() == []
    saved.close()


def _runs(folder: Path) -> list[str]:
    log = folder / "runs.log"
    return log.read_text().split() if log.exists() else []
