"""Machine in an App: the root service, a sub-machine per component, the unwind, settings, logged errors."""

from __future__ import annotations

import anyio
import pytest
import structlog
from _support import Boom, serving, wait_until

from nacelle_py import ConfigError, Initializer, Inject, Process
from nacelle_py.base import Machine, MachineOverflowError, Routine
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio


class Worker(Process):
    """Starts a ticking routine (with a slow cleanup) on its own machine, runs until stopped."""

    machine: Machine = Inject("machine")

    def __init__(self, trace: Trace, name: str = "worker") -> None:
        self.trace = trace
        self.name = name
        self.released = anyio.Event()
        self.ticks = 0
        self.routine: Routine | None = None

    async def tick(self, r: Routine) -> None:
        self.trace.add(f"{self.name}.routine.start")
        try:
            while True:
                self.ticks += 1
                await anyio.sleep(0.005)
        finally:
            self.trace.add(f"{self.name}.routine.cancelled")
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.02)  # cleanup that takes a while: the unwind must await it
            self.trace.add(f"{self.name}.routine.end")

    async def run(self) -> None:
        self.routine = await self.machine.go(self.tick, id=f"{self.name}-ticker", tags=("tick",))
        self.trace.add(f"{self.name}.run")
        await self.released.wait()
        self.trace.add(f"{self.name}.run.end")

    async def stop(self) -> None:
        self.trace.add(f"{self.name}.stop")
        self.released.set()

    async def finalize(self) -> None:
        self.trace.add(f"{self.name}.finalize")


async def test_inject_machine_gives_a_process_its_own_sub_machine_of_the_root() -> None:
    app = test_app("t")
    trace = Trace()
    w = app.register(Worker(trace), name="worker")
    other = app.register(Worker(trace, "other"), name="other")
    async with serving(app) as served:
        await wait_until(lambda: w.ticks > 2 and other.ticks > 2)
        root = app.services.get("machine")
        assert isinstance(root, Machine) and isinstance(w.machine, Machine)
        assert w.machine is not root and other.machine is not root and w.machine is not other.machine
        subs = root.stats().subs
        assert {"worker", "other"} <= set(subs)
        assert subs["worker"].name == w.machine.stats().name and w.machine.stats().name.endswith("worker")
        assert {i.id for i in subs["worker"].routines} == {"worker-ticker"}
        assert w.machine.stats().active == 1 and root.stats().active == 0  # counted in the sub
        assert w.routine is not None and w.routine.machine is w.machine and w.routine.state == "running"
    assert served.status == 0, app.errors


async def test_a_process_routines_are_cancelled_and_awaited_when_the_app_unwinds() -> None:
    app = test_app("t")
    trace = Trace()
    w = app.register(Worker(trace), name="worker")
    async with serving(app) as served:
        await wait_until(lambda: w.ticks > 2)
        assert "worker.routine.cancelled" not in trace
    assert served.status == 0, app.errors
    assert w.routine is not None and w.routine.state == "cancelled"
    assert trace.before("worker.stop", "worker.routine.cancelled")
    assert trace.before("worker.run.end", "worker.routine.cancelled")
    assert trace.before("worker.routine.end", "worker.finalize"), trace  # awaited, not just cancelled
    with pytest.raises(RuntimeError):  # the process's machine is closed
        await w.machine.go(w.tick)


async def test_an_initializers_routines_run_while_serving_and_end_after_its_finalize() -> None:
    trace = Trace()

    class Warmup(Initializer):
        machine: Machine = Inject("machine")
        routine: Routine | None = None

        async def init(self) -> None:
            async def keep_warm() -> None:
                trace.add("warm.start")
                try:
                    await anyio.sleep_forever()
                finally:
                    trace.add("warm.end")

            self.routine = await self.machine.go(keep_warm)
            trace.add("init")

        async def finalize(self) -> None:
            trace.add("finalize")

    app = test_app("t")
    warm = app.register(Warmup(), name="warm")
    w = app.register(Worker(trace), name="worker", priority=1)
    async with serving(app) as served:
        await wait_until(lambda: "warm.start" in trace and w.ticks > 2)
        assert warm.routine is not None and warm.routine.state == "running"
    assert served.status == 0, app.errors
    assert warm.routine.state == "cancelled"
    assert trace.before("worker.finalize", "finalize")
    assert trace.before("finalize", "warm.end"), trace


async def test_a_routine_on_the_root_is_cancelled_when_the_app_ends() -> None:
    app = test_app("t")
    trace = Trace()
    app.register(Worker(trace), name="worker")
    async with serving(app) as served:
        root = app.services.get("machine")

        async def loose() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                trace.add("loose.end")

        r = await root.go(loose)
        await wait_until(lambda: r.state == "running")
    assert served.status == 0, app.errors
    assert r.state == "cancelled" and "loose.end" in trace


async def test_a_routine_error_is_logged_and_does_not_fail_the_app() -> None:
    trace = Trace()
    failed = anyio.Event()

    class Flaky(Worker):
        async def run(self) -> None:
            async def fails() -> None:
                raise Boom("routine failed")

            self.routine = await self.machine.go(self.tick, id="sibling")
            bad = await self.machine.go(fails, id="bad-one", tags=("flaky",))
            await wait_until(lambda: bad.done)
            failed.set()
            await self.released.wait()

    app = test_app("t")
    f = app.register(Flaky(trace), name="flaky")
    with structlog.testing.capture_logs() as logs:
        async with serving(app) as served:
            await failed.wait()
            await wait_until(lambda: f.ticks > 2)
            assert f.routine is not None and f.routine.state == "running"  # the sibling is not cancelled
    assert served.status == 0, app.errors
    assert app.errors == ()
    entries = [e for e in logs if e.get("log_level") == "error" and any("bad-one" in str(v) for v in e.values())]
    assert entries, logs
    assert any(
        isinstance(e.get("exc_info"), Boom) or e.get("exc_info") is True or "routine failed" in str(e) for e in entries
    ), entries


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["T_", ""])
async def test_the_machine_settings_apply_to_the_root(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{prefix}MACHINE_MAX_ROUTINES", "2")
    monkeypatch.setenv(f"{prefix}MACHINE_BUFFER", "3")
    app = test_app("t")
    trace = Trace()
    w = app.register(Worker(trace), name="worker")
    async with serving(app) as served:
        await wait_until(lambda: w.ticks > 0)
        root = app.services.get("machine")
        assert root.stats().max_routines == 2
        hold = anyio.Event()

        async def held() -> None:
            await hold.wait()

        second = w.machine.try_go(held)  # the ticker has one of the root's 2 slots
        assert second is not None
        assert w.machine.try_go(held) is None
        assert root.try_go(held) is None
        hold.set()
        await second.wait()

        got: list[int] = []
        holding = anyio.Event()
        release = anyio.Event()

        async def stuck(msg: int) -> None:
            got.append(msg)
            holding.set()
            await release.wait()

        root.subscribe("n", stuck, overflow="error")  # the default buffer: MACHINE_BUFFER
        await root.publish("n", 0)
        await holding.wait()
        for i in range(1, 4):
            await root.publish("n", i)
        with pytest.raises(MachineOverflowError):
            await root.publish("n", 4)
        release.set()

        holding_sub = anyio.Event()
        release_sub = anyio.Event()

        async def stuck_sub(msg: int) -> None:
            holding_sub.set()
            await release_sub.wait()

        w.machine.subscribe("s", stuck_sub, overflow="error")  # a component's sub-machine has the same default
        await w.machine.publish("s", 0)
        await holding_sub.wait()
        for i in range(1, 4):
            await w.machine.publish("s", i)
        with pytest.raises(MachineOverflowError):
            await w.machine.publish("s", 4)
        release_sub.set()
    assert served.status == 0, app.errors
    assert got == [0, 1, 2, 3]


async def test_max_routines_none_means_no_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_MACHINE_MAX_ROUTINES", "none")
    app = test_app("t")
    w = app.register(Worker(Trace()), name="worker")
    async with serving(app) as served:
        await wait_until(lambda: w.ticks > 0)
        root = app.services.get("machine")
        assert root.stats().max_routines is None
        hold = anyio.Event()

        async def held() -> None:
            await hold.wait()

        routines = [w.machine.try_go(held) for _ in range(30)]
        assert all(r is not None for r in routines)
        hold.set()
    assert served.status == 0, app.errors


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("T_MACHINE_MAX_ROUTINES", "0"),
        ("T_MACHINE_MAX_ROUTINES", "-2"),
        ("MACHINE_MAX_ROUTINES", "lots"),
        ("T_MACHINE_MAX_ROUTINES", "1.5"),
        ("T_MACHINE_BUFFER", "0"),
        ("MACHINE_BUFFER", "big"),
    ],
)
async def test_a_bad_machine_setting_fails_boot_with_a_config_error_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    app = test_app("t")
    trace = Trace()
    app.register(Worker(trace), name="worker")
    with anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    assert app.errors, "a bad setting must fail the boot"
    configs = [e for e in app.errors if isinstance(e.cause, ConfigError)]
    assert configs, [str(e) for e in app.errors]
    bare = variable.removeprefix("T_")
    assert any(bare in str(e) for e in configs), [str(e) for e in configs]
    assert "worker.run" not in trace and "worker.routine.start" not in trace
