"""The worker-based engine with real replicas: a worker killed mid-atom does not stall the flow.

The orchestrator (this test) keeps the flow's state and only queues atoms (its
Dispatcher does not consume); two replicas (``tests/scripts/flows_worker.py``)
run them. The replica that takes ``Slow`` is killed with SIGKILL in the middle
of it; once its lease has passed, the other replica reclaims the entry and runs
``Slow`` again, and the flow ends SUCCESS. Every other task ran exactly once.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from nacelle_py.base import Dispatcher, flows

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from flows_worker import FLOW  # noqa: E402
from harness import AppProcess, clean_env  # noqa: E402

pytestmark = pytest.mark.anyio

SCRIPT = str(Path(__file__).resolve().parents[2] / "scripts" / "flows_worker.py")


async def wait_file(path: Path, limit: float) -> str:
    with anyio.fail_after(limit):
        while not path.exists() or not path.read_text():
            await anyio.sleep(0.05)
    return path.read_text()


async def test_a_worker_killed_mid_atom_is_reclaimed_and_the_flow_ends(
    redis_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    stream = f"flows:{uuid.uuid4().hex}"
    env = clean_env(
        DISPATCHER_BACKEND="redis",
        REDIS_URL=redis_url,
        DISPATCHER_STREAM=stream,
        DISPATCHER_LEASE="1",
        FLOWS_TEST_DIR=str(tmp_path),
        BACKEND=anyio_backend,
    )
    os.environ["FLOWS_TEST_DIR"] = str(tmp_path)  # where this process's copy of the tasks would mark
    orchestrator = Dispatcher(backend="redis", redis_url=redis_url, stream=stream, consume=False)
    with AppProcess([SCRIPT], env) as one, AppProcess([SCRIPT], env) as two:
        for replica in (one, two):
            replica.wait_event("app healthy; supervising", timeout=30)
        async with orchestrator:
            async with anyio.create_task_group() as tg:
                outcome: dict[str, object] = {}

                async def run() -> None:
                    outcome["values"] = await flows.run(
                        FLOW, store={"x": 1}, engine="worker-based", dispatcher=orchestrator
                    )

                tg.start_soon(run)
                victim = int(await wait_file(tmp_path / "slow-started", 30))
                by_pid = {one.proc.pid: one, two.proc.pid: two}
                assert victim in by_pid, (victim, list(by_pid))
                by_pid[victim].send(signal.SIGKILL)
                with anyio.fail_after(60):  # the lease (1 s) plus the reclaim's scan: well under this
                    while "values" not in outcome:
                        await anyio.sleep(0.05)
    assert outcome["values"] == {"x": 1, "a": 2, "b": 20, "c": 21}
    runs = [line.split() for line in (tmp_path / "runs.log").read_text().splitlines()]
    assert [t for t, _ in runs].count("First") == 1
    assert [t for t, _ in runs].count("Last") == 1
    slow = [int(pid) for t, pid in runs if t == "Slow"]
    assert len(slow) == 2 and slow[0] == victim and slow[1] != victim, runs


async def test_worker_based_without_a_dispatcher_is_refused_with_what_to_do() -> None:
    with pytest.raises(TypeError, match="dispatcher="):
        await flows.run(FLOW, store={"x": 1}, engine="worker-based")


async def test_an_atom_of_a_flow_no_replica_knows_fails_the_flow_with_what_to_do(redis_url: str) -> None:
    stream = f"flows:{uuid.uuid4().hex}"
    worker = Dispatcher(backend="redis", redis_url=redis_url, stream=stream, lease=1.0)
    orchestrator = Dispatcher(backend="redis", redis_url=redis_url, stream=stream, consume=False)

    class Hello(flows.Task):
        provides = "greeting"

        async def execute(self, name: str) -> str:
            return f"hello {name}"

    unknown = flows.linear("unknown-here", Hello())
    flows.serve(worker)  # the replica registers the named task but knows no flow
    async with worker, orchestrator:
        with anyio.fail_after(30):
            with pytest.raises(flows.FlowFailed) as caught:
                await flows.run(unknown, store={"name": "x"}, engine="worker-based", dispatcher=orchestrator)
    # The orchestrator's own dispatcher does not consume, so only the worker could run it, and it does not
    # know the flow. Hello has no revert() of its own, so nothing is sent to undo it: REVERTED.
    assert caught.value.state is flows.REVERTED
    assert [(f.task, f.operation, f.type) for f in caught.value.failures] == [("Hello", "execute", "LookupError")]
    assert "flows.serve" in caught.value.failures[0].message


async def test_worker_based_in_one_process_runs_and_reverts(redis_url: str) -> None:
    log: list[str] = []

    class Reserve(flows.Task):
        provides = "reservation"

        async def execute(self, order_id: str) -> str:
            log.append("reserve")
            return f"r-{order_id}"

        async def revert(self, order_id: str, result: object, failures: flows.Failures) -> None:
            log.append(f"unreserve {result}")

    class Charge(flows.Task):
        def execute(self, reservation: str) -> int:
            log.append("charge")
            raise ValueError("card declined")

        def revert(self, result: object, failures: flows.Failures) -> None:
            assert isinstance(result, flows.Failure) and result.type == "ValueError"
            assert list(failures) == ["Charge"]
            log.append("refund")

    flow = flows.linear("checkout-wb", Reserve(), Charge())
    jobs = Dispatcher(backend="redis", redis_url=redis_url, stream=f"flows:{uuid.uuid4().hex}", lease=1.0)
    async with jobs:
        with anyio.fail_after(30), pytest.raises(flows.FlowFailed) as caught:
            await flows.run(flow, store={"order_id": "o-1"}, engine="worker-based", dispatcher=jobs)
    assert caught.value.state is flows.REVERTED
    assert log == ["reserve", "charge", "refund", "unreserve r-o-1"]
    assert "Charge.execute: ValueError: card declined" in str(caught.value)
