"""Health: registration, updates from any thread, subscriptions, and how the runner uses it."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from nacelle_py import App, ComponentTimeoutError, Health, HealthComponent, Initializer, Inject, Process, ServiceError
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio


async def serve(app: App, limit: float = 10) -> int:
    with anyio.fail_after(limit):
        return await app.serve()


def test_registered_component_starts_unhealthy() -> None:
    health = Health()
    assert health.healthy  # nothing registered
    flag = health.register("db")
    assert isinstance(flag, HealthComponent)
    assert not flag.healthy and not health.healthy
    assert [s.key for s in health.unhealthy()] == ["db"]
    flag.update(True)
    assert flag.healthy and health.healthy and health.unhealthy() == []
    flag.update(False, "connection lost")
    assert not health.healthy
    (status,) = health.unhealthy()
    assert status.reason == "connection lost" and not status.healthy


def test_repeated_updates_keep_the_count_right() -> None:
    health = Health()
    a, b = health.register("a"), health.register("b")
    for _ in range(3):
        a.update(True)
    assert not health.healthy  # b still unhealthy
    b.update(True)
    b.update(True)
    assert health.healthy
    a.update(False)
    a.update(False)
    a.update(True)
    assert health.healthy


def test_duplicate_key_names_the_owner() -> None:
    health = Health()
    health.for_component("first").register("db")
    with pytest.raises(ServiceError, match="first"):
        health.for_component("second").register("db")


@pytest.mark.parametrize("key", ["", None])
def test_keys_are_non_empty_strings(key: object) -> None:
    with pytest.raises(ServiceError):
        Health().register(key)  # type: ignore[arg-type]


def test_update_takes_a_bool() -> None:
    flag = Health().register("x")
    with pytest.raises(TypeError):
        flag.update(1)  # type: ignore[arg-type]


def test_get_and_statuses() -> None:
    health = Health()
    view = health.for_component("owner")
    flag = view.register("k")
    assert health.get("k") is flag
    with pytest.raises(ServiceError):
        health.get("missing")
    assert [(s.key, s.component, s.healthy) for s in health.statuses()] == [("k", "owner", False)]


def test_views_share_state() -> None:
    health = Health()
    health.for_component("x").register("k").update(True)
    health.for_component("y").register("j")
    assert not health.healthy
    health.get("j").update(True)
    assert health.for_component("z").healthy


def test_subscribe_and_unsubscribe() -> None:
    health = Health()
    seen: list[tuple[str, bool]] = []
    unsubscribe = health.subscribe(lambda c: seen.append((c.key, c.healthy)))
    flag = health.register("k")
    flag.update(True)
    flag.update(True)  # no change: no notification
    flag.update(False)
    unsubscribe()
    flag.update(True)
    assert seen == [("k", False), ("k", True), ("k", False)]
    unsubscribe()  # twice is harmless


def test_updates_from_many_threads() -> None:
    health = Health()
    flags = [health.register(f"k{i}") for i in range(16)]
    barrier = threading.Barrier(len(flags))

    def flip(flag: HealthComponent) -> None:
        barrier.wait()
        for i in range(200):
            flag.update(i % 2 == 0)
        flag.update(True)

    threads = [threading.Thread(target=flip, args=(f,)) for f in flags]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert health.healthy and health.unhealthy() == []


# -- through the runner ----------------------------------------------------------------


class Reporter(Process):
    """Registers ``key`` in init and reports healthy from a worker thread after ``delay``."""

    health: Health = Inject("health")

    def __init__(self, trace: Trace, key: str, delay: float | None) -> None:
        self.trace, self.key, self.delay = trace, key, delay

    async def init(self) -> None:
        self.flag = self.health.register(self.key)
        self.done = anyio.Event()

    async def run(self) -> None:
        if self.delay is not None:

            def later() -> None:
                time.sleep(self.delay or 0)
                self.trace.add(f"{self.key}.healthy")
                self.flag.update(True)

            threading.Thread(target=later, daemon=True).start()
        await self.done.wait()

    async def stop(self) -> None:
        self.done.set()


class Mark(Initializer):
    def __init__(self, trace: Trace, name: str) -> None:
        self.trace, self.name = trace, name

    async def init(self) -> None:
        self.trace.add(f"{self.name}.init")


async def test_thread_update_releases_the_next_group() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Reporter(trace, "slow", 0.1), name="slow", start_timeout=5)
    app.register(Mark(trace, "next"), name="next", priority=1)
    app.on_ready(app.shutdown)
    started = time.monotonic()
    assert await serve(app) == 0, app.errors
    assert time.monotonic() - started < 3  # woken by the update, not by the 5 s timeout
    assert trace.events == ["slow.healthy", "next.init"]
    assert app.health.get("slow").component == "slow"


async def test_initializer_health_key_gates_the_group() -> None:
    trace = Trace()

    class WarmInit(Initializer):
        health: Health = Inject("health")

        async def init(self) -> None:
            flag = self.health.register("warm")

            def later() -> None:
                time.sleep(0.05)
                trace.add("warm.healthy")
                flag.update(True)

            threading.Thread(target=later, daemon=True).start()

    app = test_app("t")
    app.register(WarmInit(), name="warm", start_timeout=5)
    app.register(Mark(trace, "next"), name="next", priority=1)
    app.on_ready(app.shutdown)
    assert await serve(app) == 0, app.errors
    assert trace.events == ["warm.healthy", "next.init"]


async def test_start_timeout_names_keys_owners_and_reasons() -> None:
    trace = Trace()

    class Degraded(Reporter):
        async def run(self) -> None:
            self.flag.update(False, "disk full")
            await self.done.wait()

    app = test_app("t")
    app.register(Reporter(trace, "fine", 0.0), name="fine-owner")
    app.register(Degraded(trace, "disk", None), name="disk-owner", start_timeout=0.2)
    app.register(Reporter(trace, "never", None), name="never-owner")
    app.register(Mark(trace, "next"), name="next", priority=1)
    assert await serve(app) == 1
    disk, never = app.errors  # one error per owner, each named by the registered name (issue 13)
    assert all(isinstance(e, ComponentTimeoutError) and e.operation == "start" for e in (disk, never))
    assert (disk.component, never.component) == ("disk-owner", "never-owner")
    assert "'disk' (registered by disk-owner): disk full" in str(disk)
    assert "'never' (registered by never-owner)" in str(never)
    assert not any("fine" in str(e).replace("fine-owner", "") for e in (disk, never))  # healthy keys unnamed
    assert "next.init" not in trace


async def test_key_registered_on_the_app_health_is_owned_by_the_app() -> None:
    app = test_app("t")
    app.health.register("external")

    class P(Process):
        async def run(self) -> None:
            await anyio.sleep_forever()

    app.register(P(), name="p", start_timeout=0.1)
    assert await serve(app) == 1
    (err,) = app.errors
    assert "'external' (registered by the app)" in str(err)
