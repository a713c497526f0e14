"""Worker: ticks on an interval (plain or strict clock), stop cancels a tick, errors, settings, App."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
from _support import Boom, serving, wait_until

from nacelle_py import ConfigError, RegistrationError
from nacelle_py.base import Worker
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio


async def run_until(w: Worker, done: Any, limit: float = 5.0) -> None:
    """Run ``w`` standalone until ``done()`` holds, then stop it; bounded."""
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            tg.start_soon(w.run)
            await wait_until(done, limit)
            await w.stop()


async def test_ticks_at_once_then_every_interval_until_stopped() -> None:
    starts: list[float] = []

    async def tick() -> None:
        starts.append(time.monotonic())

    w = Worker(tick, interval=0.02)
    await run_until(w, lambda: len(starts) >= 5)
    assert w.stats().ticks == len(starts) >= 5
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.018  # never sooner than the interval


async def test_the_interval_counts_from_the_end_of_a_tick_unless_strict() -> None:
    async def slow() -> None:
        await anyio.sleep(0.05)

    loose_starts: list[float] = []
    strict_starts: list[float] = []

    async def loose_tick() -> None:
        loose_starts.append(time.monotonic())
        await slow()

    async def strict_tick() -> None:
        strict_starts.append(time.monotonic())
        await slow()

    await run_until(Worker(loose_tick, interval=0.1), lambda: len(loose_starts) >= 3)
    await run_until(Worker(strict_tick, interval=0.1, strict=True), lambda: len(strict_starts) >= 3)
    loose = [b - a for a, b in zip(loose_starts, loose_starts[1:])]
    strict = [b - a for a, b in zip(strict_starts, strict_starts[1:])]
    assert min(loose) >= 0.14  # 0.05 of tick + 0.1 of interval
    assert min(strict) >= 0.095 and min(strict) < min(loose)  # the tick's duration is subtracted


async def test_stop_cancels_the_tick_in_progress() -> None:
    trace: list[str] = []
    started = anyio.Event()

    async def tick() -> None:
        trace.append("tick")
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            trace.append("cancelled")
            raise

    w = Worker(tick, interval=10)
    await run_until(w, started.is_set)
    assert trace == ["tick", "cancelled"]
    assert w.stats().ticks == 0


async def test_a_tick_error_is_the_run_error() -> None:
    calls: list[int] = []

    async def tick() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Boom("third")

    with anyio.fail_after(5), pytest.raises(Boom):
        await Worker(tick, interval=0.001).run()
    assert len(calls) == 3


async def test_tolerated_errors_are_counted_and_the_worker_goes_on() -> None:
    calls: list[int] = []

    def tick() -> None:  # a plain function: runs on a thread
        calls.append(threading.get_ident())
        if len(calls) % 2:
            raise Boom("odd")

    w = Worker(tick, interval=0.001, tolerate_errors=True)
    await run_until(w, lambda: len(calls) >= 6)
    stats = w.stats()
    assert stats.errors >= 3 and stats.ticks >= 2 and stats.errors + stats.ticks == len(calls)
    assert threading.get_ident() not in calls


async def test_a_subclass_overrides_tick() -> None:
    class Counter(Worker):
        n = 0

        async def tick(self) -> None:
            self.n += 1

    w = Counter(interval=0.001)
    await run_until(w, lambda: w.n >= 3)
    assert w.stats().ticks == w.n


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"interval": 0}, "interval"),
        ({"interval": -1}, "interval"),
        ({"interval": "1"}, "interval"),
        ({"interval": float("nan")}, "interval"),
        ({"strict": 1}, "strict"),
        ({"tolerate_errors": "yes"}, "tolerate"),
    ],
)
def test_bad_options_are_registration_errors(kwargs: dict[str, Any], needle: str) -> None:
    async def tick() -> None:
        pass

    with pytest.raises(RegistrationError, match=needle):
        Worker(tick, **kwargs)


def test_a_worker_needs_a_tick() -> None:
    with pytest.raises(RegistrationError, match="tick"):
        Worker()
    with pytest.raises(RegistrationError, match="callable"):
        Worker(42)  # type: ignore[arg-type]


async def test_settings_override_the_code_and_are_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[float] = []

    async def tick() -> None:
        starts.append(time.monotonic())

    w = Worker(tick, interval=10)
    monkeypatch.setenv("WORKER_TICK_INTERVAL", "0.01")
    monkeypatch.setenv("WORKER_STRICT_CLOCK", "true")
    await run_until(w, lambda: len(starts) >= 3)
    assert (w.interval, w.strict) == (0.01, True)
    monkeypatch.delenv("WORKER_TICK_INTERVAL")
    monkeypatch.delenv("WORKER_STRICT_CLOCK")
    await run_until(w, lambda: len(starts) >= 4)
    assert (w.interval, w.strict) == (10, False)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "inf"])
async def test_a_bad_interval_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    async def tick() -> None:
        pass

    monkeypatch.setenv("WORKER_TICK_INTERVAL", value)
    with pytest.raises(ConfigError, match="WORKER_TICK_INTERVAL"):
        await Worker(tick).run()


async def test_in_an_app_health_follows_tolerated_errors_and_stop_ends_it() -> None:
    fail = threading.Event()
    ticks: list[int] = []

    async def tick() -> None:
        ticks.append(1)
        if fail.is_set():
            raise Boom("down")

    app = test_app("t")
    w = app.register(Worker(tick, interval=0.005, tolerate_errors=True), name="poller")
    async with serving(app) as served:
        flag = app.health.get("poller")
        await wait_until(lambda: len(ticks) >= 2 and flag.healthy)
        fail.set()
        await wait_until(lambda: not flag.healthy)
        fail.clear()
        await wait_until(lambda: flag.healthy)
    assert served.status == 0, app.errors
    assert w.stats().errors >= 1


async def test_in_an_app_a_tick_error_fails_the_app_naming_the_worker() -> None:
    async def tick() -> None:
        raise Boom("broken")

    app = test_app("t")
    app.register(Worker(tick, interval=0.01), name="poller")
    with anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    assert [(e.component, e.operation) for e in app.errors] == [("poller", "run")]
    assert isinstance(app.errors[0].cause, Boom)


async def test_in_an_app_the_prefixed_setting_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[float] = []

    async def tick() -> None:
        starts.append(time.monotonic())

    monkeypatch.setenv("T_WORKER_TICK_INTERVAL", "0.01")
    app = test_app("t")
    w = app.register(Worker(tick, interval=30), name="poller")
    async with serving(app):
        await wait_until(lambda: len(starts) >= 3)
    assert w.interval == 0.01
