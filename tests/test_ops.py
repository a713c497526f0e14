"""The App's ops endpoint: /livez, /readyz, /metrics, /debug/components, OPS_ADDR and OPS_METRICS, the extras.

Every test talks to the real endpoint on 127.0.0.1 with a real client (httpx) and runs on asyncio
and trio. Lifecycle order is driven by events the test controls and asserted on what the endpoint
answers at each step, never on how long something took; every wait is bounded.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import anyio
import httpx
import prometheus_client
import pytest
import structlog
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from nacelle_py import App, ConfigError, Health, Initializer, Inject, Process, RegistrationError
from nacelle_py._extras import MissingExtraError, require
from nacelle_py.base import Dispatcher, Machine, Pipeline, Stage, Worker
from nacelle_py.testing import Trace

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """The error a test's component raises on purpose."""


@pytest.fixture
def ops_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ops endpoint on any free port of 127.0.0.1."""
    monkeypatch.setenv("OPS_ADDR", "127.0.0.1:0")


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``predicate`` every 2 ms; fail the test after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.002)


def listening_sockets() -> set[int]:
    """The inodes of this process's TCP sockets in LISTEN state (Linux: /proc)."""
    listening: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A":
                listening.add(int(fields[9]))
    ours: set[int] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(int(target[8:-1]))
    return listening & ours


# -- components ------------------------------------------------------------------------------------


class Gate(Process):
    """Registers its health key (its name) in init and reports healthy once ``run`` starts.

    ``init_gate`` holds init, ``healthy_gate`` holds the first healthy report, ``stop_gate``
    holds ``stop()``; each step is recorded in the trace. ``flag`` flips the key afterwards.
    """

    health: Health = Inject("health")

    def __init__(
        self,
        trace: Trace,
        key: str,
        *,
        init_gate: anyio.Event | None = None,
        healthy_gate: anyio.Event | None = None,
        stop_gate: anyio.Event | None = None,
    ) -> None:
        self.trace, self.key = trace, key
        self.init_gate, self.healthy_gate, self.stop_gate = init_gate, healthy_gate, stop_gate

    async def init(self) -> None:
        self.flag = self.health.register(self.key)
        self.released = anyio.Event()
        if self.init_gate is not None:
            self.trace.add(f"{self.key}.init.waiting")
            await self.init_gate.wait()
        self.trace.add(f"{self.key}.init")

    async def run(self) -> None:
        if self.healthy_gate is not None:
            self.trace.add(f"{self.key}.healthy.waiting")
            await self.healthy_gate.wait()
        self.flag.update(True)
        self.trace.add(f"{self.key}.run")
        await self.released.wait()

    async def stop(self) -> None:
        if self.stop_gate is not None:
            self.trace.add(f"{self.key}.stop.waiting")
            await self.stop_gate.wait()
        self.trace.add(f"{self.key}.stop")
        self.released.set()


class Mark(Initializer):
    """An initializer that records its init (and waits for ``finalize_gate`` in finalize)."""

    def __init__(
        self, trace: Trace, name: str, *, fail: bool = False, finalize_gate: anyio.Event | None = None
    ) -> None:
        self.trace, self.name, self.fail, self.finalize_gate = trace, name, fail, finalize_gate

    async def init(self) -> None:
        await anyio.sleep(0)
        if self.fail:
            self.trace.add(f"{self.name}.init.fail")
            raise Boom(f"{self.name}: disk full")
        self.trace.add(f"{self.name}.init")

    async def finalize(self) -> None:
        if self.finalize_gate is not None:
            self.trace.add(f"{self.name}.finalize.waiting")
            await self.finalize_gate.wait()
        self.trace.add(f"{self.name}.finalize")


class Roamer(Process):
    """Injects the app's machine and runs a routine on it (each until ``finish`` is set) until stopped."""

    machine: Machine = Inject("machine")

    async def init(self) -> None:
        self.finish = anyio.Event()
        self.started = 0
        self.released = anyio.Event()

    async def routine(self) -> None:
        self.started += 1
        await self.finish.wait()

    async def run(self) -> None:
        await self.machine.go(self.routine, id="roam-1")
        await self.released.wait()

    async def stop(self) -> None:
        self.released.set()


# -- the served app and its endpoint -------------------------------------------------------------


class Ops:
    """A background ``serve()`` and a client for its ops endpoint."""

    def __init__(self, app: App, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client
        self.status: int | None = None
        self.done = anyio.Event()

    @property
    def base(self) -> str:
        address = self.app.ops_address
        assert address is not None, "the ops endpoint is not listening"
        host, port = address
        return f"http://{host}:{port}"

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(self.base + path, **kwargs)

    async def json(self, path: str, expect: int = 200) -> Any:
        response = await self.get(path)
        assert response.status_code == expect, (path, response.status_code, response.text)
        assert response.headers["content-type"] == "application/json"
        return response.json()

    async def metrics(self) -> Samples:
        response = await self.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return Samples(response.text)

    async def component(self, name: str) -> dict[str, Any]:
        body = await self.json("/debug/components")
        (found,) = [c for c in body["components"] if c["name"] == name]
        return dict(found)

    async def wait_status(self, path: str, status: int, limit: float = 5.0) -> httpx.Response:
        """Poll ``path`` until it answers ``status``; bounded."""
        with anyio.fail_after(limit):
            while True:
                response = await self.get(path)
                if response.status_code == status:
                    return response
                await anyio.sleep(0.005)


class Samples:
    """One scrape in Prometheus' text format, parsed by prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [(s.name, dict(s.labels), s.value) for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample called ``name`` with exactly these labels."""
        found = [v for n, ls, v in self.samples if n == name and ls == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples in\n{self.text}"
        return found[0]

    def labelled(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample called ``name``."""
        return [ls for n, ls, _ in self.samples if n == name]


@asynccontextmanager
async def serving(app: App, *, wait_ready: bool = True, limit: float = 15.0) -> AsyncIterator[Ops]:
    """Serve ``app`` in the background until the block ends (which calls ``app.shutdown()``).

    With ``wait_ready`` the block starts once the app is up and healthy; without, as soon as
    the ops endpoint listens (or ``serve()`` returned).
    """
    ready = anyio.Event()
    app.on_ready(ready.set)
    with anyio.fail_after(limit):
        async with httpx.AsyncClient(timeout=5.0) as client, anyio.create_task_group() as tg:
            ops = Ops(app, client)

            async def serve() -> None:
                ops.status = await app.serve()
                ready.set()  # a boot that fails must not leave the block waiting
                ops.done.set()

            tg.start_soon(serve)
            if wait_ready:
                await ready.wait()
            else:
                await wait_until(lambda: app.ops_address is not None or ops.done.is_set())
            try:
                yield ops
            finally:
                app.shutdown()


def make_app(name: str = "t", **kwargs: Any) -> App:
    return App(name, handle_signals=False, **kwargs)


# -- off unless OPS_ADDR is set ------------------------------------------------------------------


async def test_without_ops_addr_nothing_listens() -> None:
    trace = Trace()
    app = make_app()
    app.register(Gate(trace, "db"), name="db")
    before = listening_sockets()
    async with serving(app) as ops:
        assert app.ops_address is None
        assert listening_sockets() == before
    assert ops.status == 0, app.errors


@pytest.mark.parametrize("value", ["off", "none", "", "OFF", "  "])
async def test_ops_addr_off_none_or_empty_means_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("OPS_ADDR", value)
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    before = listening_sockets()
    async with serving(app) as ops:
        assert app.ops_address is None
        assert listening_sockets() == before
    assert ops.status == 0, app.errors


async def test_ops_addr_listens_on_the_port_it_reports(ops_on: None) -> None:
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    before = listening_sockets()
    async with serving(app) as ops:
        address = app.ops_address
        assert address is not None and address[0] == "127.0.0.1" and address[1] > 0
        assert len(listening_sockets() - before) == 1
        assert (await ops.get("/livez")).status_code == 200
    assert ops.status == 0, app.errors
    assert listening_sockets() == before  # the endpoint closed with the app


async def test_the_prefixed_ops_addr_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_ADDR", "bad address")  # would be a config error if it were read
    monkeypatch.setenv("T_OPS_ADDR", "127.0.0.1:0")
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    async with serving(app) as ops:
        assert (await ops.get("/livez")).status_code == 200
    assert ops.status == 0, app.errors


async def test_app_ops_addr_turns_the_endpoint_on_and_ops_addr_off_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app(ops_addr="127.0.0.1:0")
    app.register(Gate(Trace(), "db"), name="db")
    async with serving(app) as ops:
        assert app.ops_address is not None
        assert (await ops.get("/livez")).status_code == 200
    assert ops.status == 0, app.errors

    monkeypatch.setenv("OPS_ADDR", "off")
    app = make_app(ops_addr="127.0.0.1:0")
    app.register(Gate(Trace(), "db"), name="db")
    before = listening_sockets()
    async with serving(app) as ops:
        assert app.ops_address is None
        assert listening_sockets() == before
    assert ops.status == 0, app.errors


def test_a_bad_app_ops_addr_is_a_registration_error() -> None:
    with pytest.raises(RegistrationError, match="ops_addr"):
        make_app(ops_addr="9090")


# -- probes --------------------------------------------------------------------------------------


async def test_livez_and_readyz_answer_200_json_when_every_key_is_healthy(ops_on: None) -> None:
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    app.register(Gate(Trace(), "cache"), name="cache", priority=1)
    async with serving(app) as ops:
        assert await ops.json("/livez") == {"status": "alive", "phase": "running"}
        assert await ops.json("/readyz") == {"status": "ready", "phase": "running"}
        response = await ops.get("/readyz")
        assert response.headers["cache-control"] == "no-store"
    assert ops.status == 0, app.errors


async def test_readyz_503_names_the_unhealthy_keys_until_they_recover(ops_on: None) -> None:
    trace = Trace()
    app = make_app()
    db = app.register(Gate(trace, "db"), name="db")
    app.register(Gate(trace, "cache"), name="cache")
    async with serving(app) as ops:
        assert (await ops.get("/readyz")).status_code == 200
        db.flag.update(False, "connection lost")
        body = await ops.json("/readyz", expect=503)
        assert body == {
            "status": "not ready",
            "phase": "running",
            "unhealthy": ["db"],
            "reasons": {"db": "connection lost"},
        }
        assert await ops.json("/livez") == {"status": "alive", "phase": "running"}  # alive, just not ready
        db.flag.update(False)  # no reason given: named, without a reason
        assert (await ops.json("/readyz", expect=503))["unhealthy"] == ["db"]
        db.flag.update(True)
        assert await ops.json("/readyz") == {"status": "ready", "phase": "running"}
    assert ops.status == 0, app.errors


async def test_readyz_503_while_an_init_waits_during_boot(ops_on: None) -> None:
    trace = Trace()
    init_gate = anyio.Event()
    app = make_app()
    app.register(Gate(trace, "base"), name="base")
    app.register(Gate(trace, "slow", init_gate=init_gate), name="slow", priority=1)
    async with serving(app, wait_ready=False) as ops:
        await wait_until(lambda: "slow.init.waiting" in trace)
        for _ in range(3):  # polled while it waits: the same answer each time
            body = await ops.json("/readyz", expect=503)
            assert body["status"] == "not ready" and body["phase"] == "starting"
            assert body["unhealthy"] == ["slow"]  # registered in init, not yet healthy
        assert await ops.json("/livez") == {"status": "alive", "phase": "starting"}
        assert (await ops.component("base"))["state"] == "running"
        assert (await ops.component("slow"))["state"] == "initializing"
        samples = await ops.metrics()
        assert samples.value("nacelle_app_ready") == 0
        assert samples.value("nacelle_app_phase", phase="starting") == 1
        assert samples.value("nacelle_component_state", component="slow", state="initializing") == 1
        assert samples.value("nacelle_health_healthy", key="slow", component="slow") == 0
        trace.add("test.release")
        init_gate.set()
        await ops.wait_status("/readyz", 200)
        assert (await ops.component("slow"))["state"] == "running"
    assert ops.status == 0, app.errors
    assert trace.before("test.release", "slow.init")


async def test_readyz_503_while_a_run_has_not_reported_healthy(ops_on: None) -> None:
    trace = Trace()
    healthy_gate = anyio.Event()
    app = make_app()
    app.register(Gate(trace, "warm", healthy_gate=healthy_gate), name="warm")
    async with serving(app, wait_ready=False) as ops:
        await wait_until(lambda: "warm.healthy.waiting" in trace)
        body = await ops.json("/readyz", expect=503)
        assert body["phase"] == "starting"
        assert body["unhealthy"] == ["warm"]
        assert body["reasons"] == {"warm": "not yet reported healthy"}
        assert (await ops.component("warm"))["state"] == "running"  # running, not healthy yet
        healthy_gate.set()
        assert (await ops.wait_status("/readyz", 200)).json()["phase"] == "running"
    assert ops.status == 0, app.errors


async def test_readyz_503_during_the_unwind_while_livez_still_answers(ops_on: None) -> None:
    trace = Trace()
    stop_gate = anyio.Event()
    app = make_app()
    app.register(Gate(trace, "db", stop_gate=stop_gate), name="db")
    async with serving(app) as ops:
        assert (await ops.get("/readyz")).status_code == 200
        app.shutdown()
        await wait_until(lambda: "db.stop.waiting" in trace)
        body = await ops.json("/readyz", expect=503)
        assert body["status"] == "not ready" and body["phase"] == "stopping"
        assert body["unhealthy"] == []  # every key is still healthy: the phase alone is why
        assert await ops.json("/livez") == {"status": "alive", "phase": "stopping"}
        assert (await ops.component("db"))["state"] == "stopping"
        samples = await ops.metrics()
        assert samples.value("nacelle_app_ready") == 0
        assert samples.value("nacelle_app_phase", phase="stopping") == 1
        stop_gate.set()
        with anyio.fail_after(5):
            await ops.done.wait()
    assert ops.status == 0, app.errors
    assert trace.events.index("db.stop") > trace.events.index("db.stop.waiting")


async def test_head_answers_without_a_body_other_methods_405_unknown_paths_404(ops_on: None) -> None:
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    async with serving(app) as ops:
        for path in ("/livez", "/readyz", "/metrics", "/debug/components"):
            head = await ops.client.head(ops.base + path)
            assert head.status_code == 200, path
            assert head.content == b"", path
        get = await ops.get("/livez")
        assert head.headers["content-type"]  # HEAD says what GET would send
        assert (await ops.client.head(ops.base + "/livez")).headers["content-length"] == get.headers["content-length"]
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = await ops.client.request(method, ops.base + "/livez")
            assert response.status_code == 405, method
            assert response.headers["allow"] == "GET, HEAD"
            assert "GET" in response.json()["error"]
        response = await ops.client.post(ops.base + "/readyz", content=b"{}")
        assert response.status_code == 405
        missing = await ops.get("/nope")
        assert missing.status_code == 404
        assert missing.json() == {
            "error": "not found",
            "paths": ["/livez", "/readyz", "/debug/components", "/metrics"],
        }
        assert (await ops.get("/")).status_code == 404
        assert (await ops.get("/livez/")).status_code == 200  # a trailing slash is the same path
        assert (await ops.get("/livez?verbose=1")).status_code == 200
    assert ops.status == 0, app.errors


# -- /debug/components ---------------------------------------------------------------------------


async def test_debug_components_lists_name_kind_priority_state_timings_and_health(ops_on: None) -> None:
    trace = Trace()
    app = make_app()
    app.register(Mark(trace, "config"), name="config")
    app.register(Gate(trace, "db"), name="db", priority=1)
    app.register(Roamer(), name="roamer", priority=2)
    wall_before = time.time()
    async with serving(app) as ops:
        body = await ops.json("/debug/components")
        wall_after = time.time()
        assert body["phase"] == "running"
        by_name = {c["name"]: c for c in body["components"]}
        assert [c["name"] for c in body["components"]] == ["config", "db", "roamer"]  # registration order
        config, db, roamer = by_name["config"], by_name["db"], by_name["roamer"]

        assert (config["kind"], config["priority"], config["state"]) == ("initializer", 0, "initialized")
        assert config["health"] == [] and config["errors"] == [] and config["restarts"] == 0
        assert config["timings"]["init_ms"] >= 0
        assert "started_at" not in config["timings"]  # an initializer has no run

        assert (db["kind"], db["priority"], db["state"]) == ("process", 1, "running")
        assert db["health"] == [{"key": "db", "healthy": True, "reason": None}]
        assert db["errors"] == [] and db["restarts"] == 0
        assert db["timings"]["init_ms"] >= 0
        assert wall_before <= db["timings"]["started_at"] <= wall_after

        assert (roamer["kind"], roamer["priority"], roamer["state"]) == ("process", 2, "running")
        assert wall_before <= roamer["timings"]["started_at"] <= wall_after

        app.health.get("db").update(False, "replica lag")
        db = await ops.component("db")
        assert db["health"] == [{"key": "db", "healthy": False, "reason": "replica lag"}]
        app.health.get("db").update(True)
    assert ops.status == 0, app.errors


async def test_debug_components_shows_a_failed_component_with_its_error(ops_on: None) -> None:
    trace = Trace()
    stop_gate = anyio.Event()
    app = make_app()
    app.register(Gate(trace, "holder", stop_gate=stop_gate), name="holder")
    app.register(Mark(trace, "broken", fail=True), name="broken", priority=1)
    app.register(Mark(trace, "never"), name="never", priority=2)
    before = listening_sockets()
    async with serving(app, wait_ready=False) as ops:
        await wait_until(lambda: "holder.stop.waiting" in trace)  # the failed boot unwinds
        body = await ops.json("/debug/components")
        assert body["phase"] == "stopping"
        by_name = {c["name"]: c for c in body["components"]}
        broken = by_name["broken"]
        assert broken["state"] == "failed"
        (error,) = broken["errors"]
        assert "broken" in error and "init" in error and "disk full" in error
        assert "init_ms" in broken["timings"]
        assert by_name["holder"]["state"] == "stopping"
        assert by_name["holder"]["errors"] == []
        assert by_name["never"]["state"] == "registered"  # its priority never began
        assert by_name["never"]["timings"] == {}
        samples = await ops.metrics()
        assert samples.value("nacelle_component_state", component="broken", state="failed") == 1
        assert samples.value("nacelle_component_errors_total", component="broken") == 1
        assert samples.value("nacelle_component_errors_total", component="holder") == 0
        stop_gate.set()
        with anyio.fail_after(5):
            await ops.done.wait()
    assert ops.status == 1
    assert [(e.component, e.operation) for e in app.errors] == [("broken", "init")]
    assert "never.init" not in trace
    assert listening_sockets() == before  # a failed boot closes the endpoint too


async def test_debug_components_during_finalize_shows_what_the_unwind_did(ops_on: None) -> None:
    trace = Trace()
    finalize_gate = anyio.Event()
    app = make_app()
    app.register(Mark(trace, "store", finalize_gate=finalize_gate), name="store")
    app.register(Gate(trace, "api"), name="api", priority=1)
    async with serving(app) as ops:
        app.shutdown()
        await wait_until(lambda: "store.finalize.waiting" in trace)
        body = await ops.json("/debug/components")
        by_name = {c["name"]: c for c in body["components"]}
        assert body["phase"] == "stopping"
        assert by_name["store"]["state"] == "finalizing"
        api = by_name["api"]
        assert api["state"] == "finalized"  # stopped, and (without a finalize) finalized
        assert {"init_ms", "started_at", "run_ms", "stop_ms"} <= set(api["timings"])
        assert all(v >= 0 for v in api["timings"].values())
        finalize_gate.set()
        with anyio.fail_after(5):
            await ops.done.wait()
    assert ops.status == 0, app.errors


# -- /metrics ------------------------------------------------------------------------------------


async def test_metrics_report_readiness_states_restarts_and_health(ops_on: None) -> None:
    trace = Trace()
    app = make_app()
    app.register(Mark(trace, "config"), name="config")
    db = app.register(Gate(trace, "db"), name="db", priority=3)
    async with serving(app) as ops:
        samples = await ops.metrics()
        assert samples.families["nacelle_app_ready"].type == "gauge"
        assert samples.value("nacelle_app_ready") == 1
        assert samples.value("nacelle_app_phase", phase="running") == 1
        assert samples.value("nacelle_app_phase", phase="starting") == 0
        for name, current in (("config", "initialized"), ("db", "running")):
            states = {
                ls["state"]: v
                for n, ls, v in samples.samples
                if n == "nacelle_component_state" and ls["component"] == name
            }
            assert states[current] == 1, (name, states)
            assert sum(states.values()) == 1, (name, states)  # one current state
            assert {"registered", "running", "stopped", "failed", "finalized"} <= set(states)
        assert samples.families["nacelle_component_restarts"].type == "counter"
        assert samples.value("nacelle_component_restarts_total", component="db") == 0
        assert samples.value("nacelle_component_restarts_total", component="config") == 0
        assert samples.value("nacelle_component_priority", component="db") == 3
        assert samples.value("nacelle_health_healthy", key="db", component="db") == 1
        assert samples.value("nacelle_component_started_time_seconds", component="db") > 0
        assert samples.value("nacelle_component_phase_seconds", component="db", phase="init") >= 0

        db.flag.update(False, "down")
        samples = await ops.metrics()
        assert samples.value("nacelle_health_healthy", key="db", component="db") == 0
        assert samples.value("nacelle_app_ready") == 0
        db.flag.update(True)
        assert (await ops.metrics()).value("nacelle_app_ready") == 1
    assert ops.status == 0, app.errors


async def test_metrics_label_a_key_the_app_registered_with_an_empty_component(ops_on: None) -> None:
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    flag = app.health.register("app-key")
    flag.update(True)
    async with serving(app) as ops:
        samples = await ops.metrics()
        assert samples.value("nacelle_health_healthy", key="app-key", component="") == 1
    assert ops.status == 0, app.errors


async def test_metrics_carry_the_stats_of_built_ins_and_follow_their_work(ops_on: None) -> None:
    app = make_app()
    jobs = app.register(Dispatcher(min_workers=1, max_workers=2), name="jobs")

    async def tick() -> None:
        await anyio.sleep(0)

    ticker = app.register(Worker(tick, interval=0.01), name="ticker")
    send, receive = anyio.create_memory_object_stream[int](16)
    got: list[int] = []

    async def numbers(emit: Any) -> None:
        async with receive:
            async for i in receive:
                await emit(i)

    async def square(msg: int, emit: Any) -> None:
        await emit(msg * msg)

    async def sink(msg: int) -> None:
        got.append(msg)

    flow = app.register(
        Pipeline([Stage("numbers", numbers, [Stage("square", square, [Stage("sink", sink)])])]),
        name="flow",
    )
    roamer = app.register(Roamer(), name="roamer")
    async with serving(app) as ops:
        await wait_until(lambda: roamer.started == 1)
        first = await ops.metrics()
        assert first.value("nacelle_dispatcher_completed_total", component="jobs") == 0
        assert first.value("nacelle_dispatcher_accepted_total", component="jobs") == 0
        assert first.value("nacelle_dispatcher_workers", component="jobs") >= 1
        ticks = first.value("nacelle_worker_ticks_total", component="ticker")
        assert ticks >= 1  # it ticks at once
        assert first.value("nacelle_worker_errors_total", component="ticker") == 0
        for stage in ("square", "sink"):
            assert first.value("nacelle_stage_messages_in_total", component="flow", stage=stage) == 0
        assert first.value("nacelle_stage_messages_out_total", component="flow", stage="numbers") == 0
        assert first.value("nacelle_machine_active", component="roamer", machine="machine/roamer") == 1
        assert first.value("nacelle_machine_routines_total", component="roamer", machine="machine/roamer") == 1
        assert first.value("nacelle_machine_active", component="", machine="machine") == 0  # the root runs none itself
        # the built-ins' own health keys are there too
        for key in ("jobs", "ticker", "flow"):
            assert first.value("nacelle_health_healthy", key=key, component=key) == 1

        async def job() -> None:
            await anyio.sleep(0)

        for _ in range(5):
            assert jobs.dispatch(job)
        for i in range(3):
            await send.send(i)
        await roamer.machine.go(roamer.routine, id="roam-2")  # the component's machine, from outside
        await wait_until(lambda: jobs.stats().completed == 5)
        await wait_until(lambda: len(got) == 3 and flow.stats()["sink"].messages_in == 3)
        await wait_until(lambda: roamer.started == 2)
        await wait_until(lambda: ticker.stats().ticks > ticks)

        second = await ops.metrics()
        assert second.value("nacelle_dispatcher_completed_total", component="jobs") == 5
        assert second.value("nacelle_dispatcher_accepted_total", component="jobs") == 5
        assert second.value("nacelle_dispatcher_failed_total", component="jobs") == 0
        assert second.value("nacelle_dispatcher_status", component="jobs", status="running") == 1
        assert second.value("nacelle_dispatcher_status", component="jobs", status="stopped") == 0
        # the first task dispatched carries its dispatch time: the latency histogram has it
        assert second.families["nacelle_dispatcher_latency_seconds"].type == "histogram"
        assert second.value("nacelle_dispatcher_latency_seconds_count", component="jobs") >= 1
        assert second.value("nacelle_dispatcher_latency_seconds_bucket", component="jobs", le="+Inf") >= 1
        for family, kind in (
            ("nacelle_dispatcher_completed", "counter"),
            ("nacelle_dispatcher_workers", "gauge"),
            ("nacelle_worker_last_duration_seconds", "gauge"),
            ("nacelle_stage_busy_seconds", "counter"),
            ("nacelle_machine_routines", "counter"),
            ("nacelle_machine_active", "gauge"),
        ):
            assert second.families[family].type == kind, family
        assert second.value("nacelle_worker_ticks_total", component="ticker") > ticks
        assert second.value("nacelle_stage_messages_in_total", component="flow", stage="square") == 3
        assert second.value("nacelle_stage_messages_in_total", component="flow", stage="sink") == 3
        assert second.value("nacelle_stage_messages_out_total", component="flow", stage="numbers") == 3
        assert second.value("nacelle_stage_errors_total", component="flow", stage="sink") == 0
        assert second.value("nacelle_machine_active", component="roamer", machine="machine/roamer") == 2
        assert second.value("nacelle_machine_routines_total", component="roamer", machine="machine/roamer") == 2

        roamer.finish.set()
        await wait_until(lambda: roamer.machine.stats().active == 0)
        third = await ops.metrics()
        assert third.value("nacelle_machine_active", component="roamer", machine="machine/roamer") == 0
        assert third.value("nacelle_machine_routines_total", component="roamer", machine="machine/roamer") == 2
    assert ops.status == 0, app.errors
    assert got == [0, 1, 4]


async def test_metrics_from_a_component_s_own_stats_and_a_broken_one(ops_on: None) -> None:
    class QueueStats(NamedTuple):
        depth: int
        paused: bool
        label: str  # not a number: left out

    class Queue(Gate):
        def stats(self) -> QueueStats:
            return QueueStats(7, True, "x")

    class Broken(Gate):
        def stats(self) -> QueueStats:
            raise Boom("stats broke")

    app = make_app()
    app.register(Queue(Trace(), "q"), name="q")
    app.register(Broken(Trace(), "b"), name="b")
    async with serving(app) as ops:
        samples = await ops.metrics()  # a broken stats() does not break the scrape
        assert samples.value("nacelle_queue_depth", component="q") == 7
        assert samples.value("nacelle_queue_paused", component="q") == 1
        assert "nacelle_queue_label" not in samples.families
        assert samples.labelled("nacelle_queue_depth") == [{"component": "q"}]  # nothing of "b"
        assert samples.value("nacelle_app_ready") == 1
    assert ops.status == 0, app.errors


async def test_metrics_escape_odd_component_names(ops_on: None) -> None:
    odd = 'we"ird\\name\nline'
    app = make_app()
    app.register(Gate(Trace(), "k"), name=odd)
    async with serving(app) as ops:
        samples = await ops.metrics()
        assert samples.value("nacelle_component_state", component=odd, state="running") == 1
        assert samples.value("nacelle_health_healthy", key="k", component=odd) == 1
        components = await ops.json("/debug/components")
        assert [c["name"] for c in components["components"]] == [odd]
    assert ops.status == 0, app.errors


async def test_metrics_speak_openmetrics_when_the_scraper_asks(ops_on: None) -> None:
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    app.register(Dispatcher(), name="jobs")
    async with serving(app) as ops:
        accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        response = await ops.get("/metrics", headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")
        families = {f.name: f for f in openmetrics_families(response.text)}  # type: ignore[no-untyped-call]  # strict parser
        assert families["nacelle_component_restarts"].type == "counter"
        (ready,) = families["nacelle_app_ready"].samples
        assert ready.value == 1
        assert families["nacelle_dispatcher_completed"].type == "counter"
        assert any(s.labels == {"component": "jobs"} for s in families["nacelle_dispatcher_completed"].samples)
        assert families["nacelle_dispatcher_latency_seconds"].type == "histogram"

        plain = await ops.get("/metrics", headers={"Accept": "text/plain"})
        assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# EOF" not in plain.text
        default = await ops.get("/metrics", headers={"Accept": "*/*"})
        assert default.headers["content-type"].startswith("text/plain")
    assert ops.status == 0, app.errors


async def test_ops_metrics_false_turns_metrics_off_and_keeps_the_probes(
    ops_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPS_METRICS", "false")
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    async with serving(app) as ops:
        missing = await ops.get("/metrics")
        assert missing.status_code == 404
        assert "/metrics" not in missing.json()["paths"]
        assert (await ops.get("/livez")).status_code == 200
        assert (await ops.get("/readyz")).status_code == 200
        assert (await ops.get("/debug/components")).status_code == 200
    assert ops.status == 0, app.errors


async def test_two_apps_in_one_process_have_separate_metrics(ops_on: None) -> None:
    first, second = make_app("first"), make_app("second")
    first.register(Gate(Trace(), "alpha"), name="alpha")
    first.register(Roamer(), name="roamer")
    second.register(Gate(Trace(), "beta"), name="beta")
    async with serving(first) as a, serving(second) as b:
        assert first.ops_address != second.ops_address
        ma, mb = await a.metrics(), await b.metrics()
        assert {ls["component"] for ls in ma.labelled("nacelle_component_state")} == {"alpha", "roamer"}
        assert {ls["component"] for ls in mb.labelled("nacelle_component_state")} == {"beta"}
        assert [ls["key"] for ls in ma.labelled("nacelle_health_healthy")] == ["alpha"]
        assert [ls["key"] for ls in mb.labelled("nacelle_health_healthy")] == ["beta"]
        assert {"component": "roamer", "machine": "machine/roamer"} in ma.labelled("nacelle_machine_routines_total")
        assert {"component": "roamer", "machine": "machine/roamer"} not in mb.labelled("nacelle_machine_routines_total")
        assert ma.text.count("# TYPE nacelle_app_ready ") == 1  # scraped again: nothing counted twice
        again = await a.metrics()
        assert again.labelled("nacelle_component_state") == ma.labelled("nacelle_component_state")
        # nothing went into prometheus-client's global registry
        assert b"nacelle_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
        first.health.get("alpha").update(False)
        assert (await a.metrics()).value("nacelle_app_ready") == 0
        assert (await b.metrics()).value("nacelle_app_ready") == 1
        first.health.get("alpha").update(True)
    assert (a.status, b.status) == (0, 0), (first.errors, second.errors)


# -- bad OPS_ADDR, a taken port --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["9090", "host:port", "::1:90", "127.0.0.1:70000", "127.0.0.1:", "127.0.0.1:-1"])
async def test_a_bad_ops_addr_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("OPS_ADDR", value)
    trace = Trace()
    app = make_app(logger=structlog.get_logger())
    app.register(Mark(trace, "config"), name="config")
    with capture_logs() as logs, anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    (error,) = app.errors
    assert isinstance(error.cause, ConfigError)
    assert "OPS_ADDR" in str(error)
    assert repr(value) in str(error) or value in str(error)
    assert trace.events == []  # nothing started
    assert app.ops_address is None
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1 and "OPS_ADDR" in errors[0]["event"]  # logged once


async def test_a_taken_ops_port_fails_before_any_init(monkeypatch: pytest.MonkeyPatch) -> None:
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setenv("OPS_ADDR", f"127.0.0.1:{port}")
        trace = Trace()
        app = make_app(logger=structlog.get_logger())
        app.register(Mark(trace, "config"), name="config")
        app.register(Gate(trace, "db"), name="db", priority=1)
        with capture_logs() as logs, anyio.fail_after(10):
            status = await app.serve()
    finally:
        held.close()
    assert status == 1
    (error,) = app.errors
    assert error.component == "ops"
    assert f"127.0.0.1:{port}" in str(error)
    assert "OPS_ADDR" in str(error)
    assert "in use" in str(error)
    assert trace.events == []  # no component's init ran
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1 and errors[0]["component"] == "ops"
    assert not any(entry["event"] == "init starting" for entry in logs)


# -- the extras ------------------------------------------------------------------------------------


def test_a_missing_extra_is_a_clear_error_naming_it() -> None:
    with pytest.raises(MissingExtraError) as caught:
        require("no_such_module_xyz", "metrics", "feature")
    error = caught.value
    assert isinstance(error, RegistrationError) and isinstance(error, ImportError)
    assert "nacelle-py[metrics]" in str(error)
    assert "no_such_module_xyz" in str(error) and "feature" in str(error)
    assert isinstance(error.__cause__, ModuleNotFoundError)
    assert require("json", "metrics", "feature") is sys.modules["json"]


@pytest.mark.parametrize(("module", "extra"), [("prometheus_client", "metrics"), ("hypercorn", "http")])
async def test_serving_ops_without_its_extra_fails_naming_the_extra(
    ops_on: None, monkeypatch: pytest.MonkeyPatch, module: str, extra: str
) -> None:
    # None in sys.modules is how Python spells "cannot be imported": the package stays installed.
    monkeypatch.setitem(sys.modules, module, None)
    trace = Trace()
    app = make_app(logger=structlog.get_logger())
    app.register(Mark(trace, "config"), name="config")
    with capture_logs(), anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    (error,) = app.errors
    assert error.component == "ops"
    assert isinstance(error.cause, MissingExtraError)
    assert f"nacelle-py[{extra}]" in str(error)
    assert trace.events == []


async def test_probes_need_no_prometheus_client_with_ops_metrics_false(
    ops_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPS_METRICS", "false")
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    async with serving(app) as ops:
        assert (await ops.get("/readyz")).status_code == 200
        assert (await ops.get("/metrics")).status_code == 404
    assert ops.status == 0, app.errors


# -- --help ----------------------------------------------------------------------------------------


def test_describe_lists_the_ops_and_systemd_settings() -> None:
    text = make_app().describe()
    for name in (
        "T_OPS_ADDR",
        "OPS_ADDR",
        "T_OPS_METRICS",
        "OPS_METRICS",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ):
        assert name in text, name
    assert "T_NOTIFY_SOCKET" not in text  # systemd's variables are never prefixed
    assert "/readyz" in text


# -- ops_address ------------------------------------------------------------------------------------


async def test_ops_address_is_none_once_serving_ended(ops_on: None) -> None:
    app = make_app()
    app.register(Gate(Trace(), "db"), name="db")
    assert app.ops_address is None  # before serving
    async with serving(app) as ops:
        assert app.ops_address is not None
    assert ops.status == 0, app.errors
    gc.collect()  # see tests/base/test_http.py: no garbage left for pytest's report of the expected failure
    assert app.ops_address is None
