"""GRPCServer: real RPCs on 127.0.0.1, the health service, graceful stop, bind errors, settings, trio refusal.

grpcio's server runs on asyncio only, so this module's ``anyio_backend`` is
asyncio; the trio tests (parametrized explicitly) prove the refusal.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import grpc
import pytest
import structlog
from _support import Boom, serving, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import SettingsConfigDict

from nacelle_py import ConfigError, Health, HealthComponent, Initializer, Inject, Process, RegistrationError
from nacelle_py.base import GRPCServer, GRPCSettings
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
ON_TRIO = pytest.mark.parametrize("anyio_backend", ["trio"])


@pytest.fixture
def anyio_backend() -> str:
    """grpcio's server is asyncio-only by nature; the trio tests override this to prove the refusal."""
    return "asyncio"


@pytest.fixture
def any_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_PORT", "0")


@pytest.fixture(autouse=True)
def no_drain_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop at once unless a test is about the delay (it sets GRPC_DRAIN_DELAY itself)."""
    monkeypatch.setenv("GRPC_DRAIN_DELAY", "0")


# -- a service without generated code: raw bytes in, raw bytes out -----------------------


class Slow:
    """The state of the ``Slow`` method: entered once an RPC runs, released by the test."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.cancelled: list[str] = []


def echo_service(slow: Slow | None = None, name: str = "test.Echo") -> Any:
    slow = slow or Slow()

    async def echo(request: bytes, context: Any) -> bytes:
        return b"echo:" + request

    async def wait(request: bytes, context: Any) -> bytes:
        slow.entered.set()
        try:
            await slow.release.wait()
        except anyio.get_cancelled_exc_class():
            slow.cancelled.append(request.decode())
            raise
        return b"done"

    def method(behaviour: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=bytes, response_serializer=bytes)

    return grpc.method_handlers_generic_handler(name, {"Echo": method(echo), "Slow": method(wait)})


@asynccontextmanager
async def channel(port: int | None) -> AsyncIterator[Any]:
    assert port is not None, "the server is not bound"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch


async def rpc(ch: Any, method: str, payload: bytes = b"", service: str = "test.Echo") -> bytes:
    with anyio.fail_after(10):
        call = ch.unary_unary(f"/{service}/{method}", request_serializer=bytes, response_deserializer=bytes)
        result: bytes = await call(payload, timeout=10, wait_for_ready=True)
        return result


async def check(ch: Any, service: str = "") -> Any:
    with anyio.fail_after(5):
        response = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5, wait_for_ready=True
        )
        return response.status


async def next_status(watch: Any) -> Any:
    with anyio.fail_after(5):
        message = await watch.read()
    return message if message is grpc.aio.EOF else message.status


def port_is_free(port: int) -> bool:
    """Whether a listener can take ``port`` now (SO_REUSEADDR: connections in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


class Database(Process):
    """A user process with a health key of its own, which the test flips."""

    health: Health = Inject("health")

    async def init(self) -> None:
        self.flag: HealthComponent = self.health.register("db")

    async def run(self) -> None:
        self.flag.update(True)
        await anyio.sleep_forever()


# -- serving --------------------------------------------------------------------------------


async def test_a_unary_call_through_a_generic_handler_in_a_served_app(any_port: None) -> None:
    app = test_app("t")
    server = app.register(GRPCServer(echo_service()), name="grpc")
    with structlog.testing.capture_logs() as logs:
        async with serving(app) as served:
            assert server.address == ("127.0.0.1", server.port)
            assert server.port is not None and server.port > 0  # GRPC_PORT=0: a free port, bound in init
            async with channel(server.port) as ch:
                assert await rpc(ch, "Echo", b"hi") == b"echo:hi"
                assert await rpc(ch, "Echo", b"again") == b"echo:again"
    assert served.status == 0, app.errors
    listening = [e for e in logs if e["event"] == "grpc server listening"]
    assert [(e["host"], e["port"], e["component"]) for e in listening] == [("127.0.0.1", listening[0]["port"], "grpc")]
    assert listening[0]["port"] > 0
    stopped = [e for e in logs if e["event"] == "grpc server stopped"]
    assert len(stopped) == 1 and stopped[0]["log_level"] == "info" and stopped[0]["grace_period"] == 5.0
    assert server.port is None and server.address is None  # released once stopped


async def test_a_subclass_overrides_register(any_port: None) -> None:
    class Echoes(GRPCServer):
        def register(self, server: Any) -> None:
            server.add_generic_rpc_handlers((echo_service(name="test.Other"),))
            super().register(server)  # and the handlers given to the constructor

    app = test_app("t")
    server = app.register(Echoes(echo_service()), name="grpc")
    alone = Echoes()  # no handlers are needed when register() is overridden
    assert alone.handlers == ()
    async with serving(app) as served, channel(server.port) as ch:
        assert await rpc(ch, "Echo", b"a", service="test.Other") == b"echo:a"
        assert await rpc(ch, "Echo", b"b") == b"echo:b"
    assert served.status == 0, app.errors


async def test_a_registration_function_is_called_with_the_server(any_port: None) -> None:
    seen: list[Any] = []

    def add(server: Any) -> None:
        seen.append(server)
        server.add_generic_rpc_handlers((echo_service(),))

    app = test_app("t")
    server = app.register(GRPCServer(add), name="grpc")
    async with serving(app) as served, channel(server.port) as ch:
        assert await rpc(ch, "Echo", b"x") == b"echo:x"
    assert served.status == 0, app.errors
    assert len(seen) == 1 and isinstance(seen[0], grpc.aio.Server)


class AdminSettings(GRPCSettings):
    """A second server's settings: ADMIN_GRPC_HOST, ADMIN_GRPC_PORT, ADMIN_GRPC_GRACE_PERIOD."""

    model_config = SettingsConfigDict(env_prefix="ADMIN_GRPC_")


class AdminServer(GRPCServer):
    settings: AdminSettings = Inject()


async def test_a_second_server_reads_settings_of_its_own(monkeypatch: pytest.MonkeyPatch, any_port: None) -> None:
    monkeypatch.setenv("ADMIN_GRPC_PORT", "0")
    app = test_app("t")
    public = app.register(GRPCServer(echo_service()), name="grpc")
    admin = app.register(AdminServer(echo_service(name="test.Admin")), name="admin")
    async with serving(app) as served:
        assert public.port != admin.port
        async with channel(admin.port) as ch:
            assert await rpc(ch, "Echo", b"x", service="test.Admin") == b"echo:x"
            assert await check(ch, "grpc") == SERVING  # each server reports the whole app
    assert served.status == 0, app.errors


# -- the health service ---------------------------------------------------------------------


async def test_the_health_service_follows_the_whole_app(any_port: None) -> None:
    app = test_app("t")
    db = app.register(Database(), name="database")
    server = app.register(GRPCServer(echo_service()), name="grpc", priority=1)
    async with serving(app) as served, channel(server.port) as ch:
        assert await check(ch) == SERVING
        assert (await check(ch, "db"), await check(ch, "grpc")) == (SERVING, SERVING)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await check(ch, "no-such-service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        stub = health_pb2_grpc.HealthStub(ch)
        overall = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        of_db = stub.Watch(health_pb2.HealthCheckRequest(service="db"))
        assert await next_status(overall) == SERVING
        assert await next_status(of_db) == SERVING
        unknown_watch = stub.Watch(health_pb2.HealthCheckRequest(service="no-such-service"))
        assert await next_status(unknown_watch) == SERVICE_UNKNOWN
        unknown_watch.cancel()

        # Health may change on any thread: the server hops onto its loop.
        await anyio.to_thread.run_sync(db.flag.update, False, "connection lost")
        assert await next_status(overall) == NOT_SERVING
        assert await next_status(of_db) == NOT_SERVING
        assert (await check(ch), await check(ch, "db"), await check(ch, "grpc")) == (NOT_SERVING, NOT_SERVING, SERVING)
        assert await rpc(ch, "Echo", b"still") == b"echo:still"  # NOT_SERVING informs; it does not refuse

        db.flag.update(True)
        assert await next_status(overall) == SERVING
        assert await next_status(of_db) == SERVING
        assert await check(ch) == SERVING

        late = app.health.register("late")  # a key registered after boot is a service too
        assert await next_status(overall) == NOT_SERVING
        assert await check(ch, "late") == NOT_SERVING
        late.update(True)
        assert await next_status(overall) == SERVING
        overall.cancel()
        of_db.cancel()
    assert served.status == 0, app.errors


async def test_the_overall_status_waits_for_every_priority_group(any_port: None) -> None:
    go = anyio.Event()

    class Late(Process):
        health: Health = Inject("health")

        async def init(self) -> None:
            self.flag = self.health.register("late")

        async def run(self) -> None:
            await go.wait()
            self.flag.update(True)
            await anyio.sleep_forever()

    app = test_app("t")
    server = app.register(GRPCServer(echo_service()), name="grpc")
    app.register(Late(), name="late", priority=1)
    ready = anyio.Event()
    app.on_ready(ready.set)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.serve)
            await wait_until(lambda: server.port is not None)
            async with channel(server.port) as ch:
                assert await check(ch, "grpc") == SERVING  # this server is up...
                await wait_until(lambda: "late" in {s.key for s in app.health.statuses()})
                assert await check(ch) == NOT_SERVING  # ...but the app is not, yet
                go.set()
                await ready.wait()
                await wait_until_status(ch, "", SERVING)
            app.shutdown()
    assert not app.errors


async def wait_until_status(ch: Any, service: str, status: Any) -> None:
    with anyio.fail_after(5):
        while await check(ch, service) != status:
            await anyio.sleep(0.005)


async def test_without_the_health_service_check_is_unimplemented(any_port: None) -> None:
    app = test_app("t")
    server = app.register(GRPCServer(echo_service(), health_service=False), name="grpc")
    async with serving(app) as served, channel(server.port) as ch:
        assert await rpc(ch, "Echo") == b"echo:"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert served.status == 0, app.errors


# -- graceful stop --------------------------------------------------------------------------


async def test_the_drain_delay_answers_not_serving_to_check_while_rpcs_are_still_served(
    any_port: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRPC_DRAIN_DELAY", "0.4")
    app = test_app("t")
    server = app.register(GRPCServer(echo_service()), name="grpc")
    with anyio.fail_after(15):
        async with serving(app) as served, channel(server.port) as ch:
            assert await check(ch) == SERVING
            app.shutdown()
            await wait_until_status(ch, "", NOT_SERVING)  # a polling probe sees it, on a live server
            assert await rpc(ch, "Echo", b"still") == b"echo:still"  # and traffic is still served meanwhile
    assert served.status == 0, app.errors


async def test_stop_reports_not_serving_first_and_lets_an_rpc_in_flight_finish(any_port: None) -> None:
    slow = Slow()
    results: list[bytes] = []
    app = test_app("t")
    server = app.register(GRPCServer(echo_service(slow)), name="grpc")
    with anyio.fail_after(15):
        async with serving(app) as served, channel(server.port) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
            assert await next_status(watch) == SERVING
            async with anyio.create_task_group() as tg:

                async def in_flight() -> None:
                    results.append(await rpc(ch, "Slow", b"in-flight"))

                tg.start_soon(in_flight)
                await slow.entered.wait()
                app.shutdown()
                assert await next_status(watch) == NOT_SERVING
                assert results == []  # NOT_SERVING came while the RPC was still in flight
                assert await next_status(watch) is grpc.aio.EOF  # a stop ends Watch streams: they hold no grace
                slow.release.set()
    assert served.status == 0, app.errors
    assert results == [b"done"] and slow.cancelled == []


async def test_an_rpc_that_outlives_the_grace_period_is_cancelled(
    monkeypatch: pytest.MonkeyPatch, any_port: None
) -> None:
    monkeypatch.setenv("GRPC_GRACE_PERIOD", "0.2")
    slow = Slow()
    failures: list[grpc.StatusCode] = []
    app = test_app("t")
    server = app.register(GRPCServer(echo_service(slow)), name="grpc")
    with structlog.testing.capture_logs() as logs, anyio.fail_after(15):
        async with serving(app) as served, channel(server.port) as ch:
            async with anyio.create_task_group() as tg:

                async def in_flight() -> None:
                    try:
                        await rpc(ch, "Slow", b"too-slow")
                    except grpc.aio.AioRpcError as exc:
                        failures.append(exc.code())

                tg.start_soon(in_flight)
                await slow.entered.wait()
                app.shutdown()
    # The grace period is the deployment's choice: running out of it is a warning, not an error.
    assert served.status == 0, app.errors
    assert slow.cancelled == ["too-slow"]
    assert failures and failures[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    stopped = [e for e in logs if e["event"].startswith("grpc server stopped")]
    assert len(stopped) == 1 and stopped[0]["log_level"] == "warning" and "grace period ran out" in stopped[0]["event"]


async def test_a_grace_period_past_the_shutdown_timeout_is_cut_short(
    monkeypatch: pytest.MonkeyPatch, any_port: None
) -> None:
    monkeypatch.setenv("GRPC_GRACE_PERIOD", "60")
    monkeypatch.setenv("T_SHUTDOWN_TIMEOUT", "0.3")
    slow = Slow()
    app = test_app("t")
    server = app.register(GRPCServer(echo_service(slow)), name="grpc")
    with anyio.fail_after(15):
        async with serving(app) as served, channel(server.port) as ch:
            port = server.port
            assert port is not None
            async with anyio.create_task_group() as tg:

                async def in_flight() -> None:
                    with pytest.raises(grpc.aio.AioRpcError):
                        await rpc(ch, "Slow", b"stuck")

                tg.start_soon(in_flight)
                await slow.entered.wait()
                app.shutdown()
    # The app's bound wins: stop times out (an error), run is cancelled, the server stops without grace.
    assert served.status == 1
    assert [(e.component, e.operation) for e in app.errors] == [("grpc", "stop")]
    assert slow.cancelled == ["stuck"]
    assert port_is_free(port)


# -- boot failures --------------------------------------------------------------------------


async def test_a_taken_port_fails_boot_naming_the_address_and_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("GRPC_PORT", str(port))
        app = test_app("t")
        app.register(GRPCServer(echo_service()), name="grpc")
        with structlog.testing.capture_logs() as logs, anyio.fail_after(10):
            status = await app.serve()
    assert status == 1
    assert [(e.component, e.operation) for e in app.errors] == [("grpc", "preflight")]
    message = str(app.errors[0])
    assert f"127.0.0.1:{port}" in message and "GRPC_PORT" in message and "taken" in message
    assert isinstance(app.errors[0].cause, OSError)
    assert any(f"127.0.0.1:{port}" in e["event"] for e in logs if e["log_level"] == "error")


async def test_a_second_grpc_server_cannot_share_the_port(monkeypatch: pytest.MonkeyPatch, any_port: None) -> None:
    first = GRPCServer(echo_service())
    await first.init()  # standalone: bound from the environment (GRPC_PORT=0)
    try:
        assert first.port is not None
        monkeypatch.setenv("GRPC_PORT", str(first.port))
        app = test_app("t")
        app.register(GRPCServer(echo_service()), name="grpc")
        with anyio.fail_after(10):
            assert await app.serve() == 1  # grpcio's SO_REUSEPORT default is turned off
        assert "taken" in str(app.errors[0])
    finally:
        await first.finalize()
    assert first.port is None


async def test_a_failed_boot_releases_the_port(any_port: None) -> None:
    seen: list[int | None] = []

    class Broken(Initializer):
        async def init(self) -> None:
            seen.append(server.port)
            raise Boom("later component fails")

    app = test_app("t")
    server = app.register(GRPCServer(echo_service()), name="grpc")
    app.register(Broken(), name="broken", priority=1)
    with anyio.fail_after(10):
        assert await app.serve() == 1
    assert [(e.component, e.operation) for e in app.errors] == [("broken", "init")]
    port = seen[0]
    assert port is not None and port_is_free(port)  # finalize stopped the server that never ran
    assert server.port is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GRPC_PORT", "70000"),
        ("GRPC_PORT", "-1"),
        ("GRPC_PORT", "http"),
        ("GRPC_GRACE_PERIOD", "-1"),
        ("GRPC_GRACE_PERIOD", "0"),
        ("GRPC_GRACE_PERIOD", "inf"),
        ("GRPC_HOST", "  "),
    ],
)
async def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    app = test_app("t")
    app.register(GRPCServer(echo_service()), name="grpc")
    with anyio.fail_after(10):
        assert await app.serve() == 1
    assert [(e.component, e.operation) for e in app.errors] == [("t", "config")]
    config = app.errors[0].cause
    assert isinstance(config, ConfigError)
    assert [(e.env, e.field) for e in config.errors] == [(f"T_{variable}", variable.removeprefix("GRPC_").lower())]
    with pytest.raises(ConfigError, match=variable):  # standalone: the same check, the unprefixed name
        await GRPCServer(echo_service()).run()


def test_the_settings_defaults_and_a_bracketed_ipv6_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_DRAIN_DELAY")  # the module's fixture sets it
    assert GRPCSettings().model_dump() == {"host": "127.0.0.1", "port": 50051, "grace_period": 5.0, "drain_delay": 0.5}
    monkeypatch.setenv("GRPC_HOST", "[::1]")
    assert GRPCSettings().host == "::1"
    for name in ("host", "port", "grace_period", "drain_delay"):
        assert GRPCSettings.model_fields[name].description  # shown by --help


async def sleeper(server: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        ((), {}, "at least one handler"),
        ((42,), {}, r"handlers\[0\]"),
        ((str,), {}, r"handlers\[0\]"),
        ((sleeper,), {}, "async function"),
        ((print,), {"options": "grpc.max_send_message_length"}, "options"),
        ((print,), {"options": {"grpc.so_reuseport": 1}}, "options"),
        ((print,), {"options": [("grpc.so_reuseport",)]}, "options"),
        ((print,), {"options": [(1, 2)]}, "options"),
        ((print,), {"health_service": "yes"}, "health_service"),
    ],
)
def test_bad_arguments_are_registration_errors(args: tuple[Any, ...], kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(RegistrationError, match=f"GRPCServer: .*{needle}"):
        GRPCServer(*args, **kwargs)


def test_options_reach_the_server_and_so_reuseport_is_off_unless_chosen() -> None:
    assert GRPCServer(print).options == (("grpc.so_reuseport", 0),)
    chosen = [("grpc.max_receive_message_length", 1 << 20), ("grpc.so_reuseport", 1)]
    assert GRPCServer(print, options=chosen).options == tuple(chosen)


def test_a_missing_grpcio_health_module_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "grpc_health.v1.health_pb2_grpc", None)  # as if not installed
    with pytest.raises(RegistrationError, match=r"pip install 'nacelle-py\[grpc\]'"):
        GRPCServer(print)
    assert GRPCServer(print, health_service=False).health_service is False


# -- standalone -----------------------------------------------------------------------------


async def test_standalone_run_and_stop_and_run_again(any_port: None) -> None:
    server = GRPCServer(echo_service())
    for attempt in (b"one", b"two"):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                await wait_until(lambda: server.port is not None)
                async with channel(server.port) as ch:
                    assert await rpc(ch, "Echo", attempt) == b"echo:" + attempt
                    assert await check(ch) == SERVING  # standalone, the server alone is the app
                await server.stop()
        assert server.port is None


async def test_standalone_a_stop_before_run_ends_run_at_once(any_port: None) -> None:
    server = GRPCServer(echo_service())
    await server.init()
    port = server.port
    assert port is not None
    await server.stop()
    with anyio.fail_after(10):
        await server.run()
    assert server.port is None and port_is_free(port)
    await server.stop()  # nothing left to stop


async def test_standalone_a_cancelled_run_stops_the_server(any_port: None) -> None:
    slow = Slow()
    server = GRPCServer(echo_service(slow))
    running = anyio.CancelScope()

    async def run() -> None:
        with running:
            await server.run()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await wait_until(lambda: server.port is not None)
            port = server.port
            assert port is not None
            async with channel(port) as ch, anyio.create_task_group() as calls:

                async def in_flight() -> None:
                    with pytest.raises(grpc.aio.AioRpcError):
                        await rpc(ch, "Slow", b"cut")

                calls.start_soon(in_flight)
                await slow.entered.wait()
                running.cancel()  # run is cancelled: no grace, and the port is released
    assert slow.cancelled == ["cut"]
    assert server.port is None and port is not None and port_is_free(port)


async def test_standalone_a_bad_port_is_an_os_error_naming_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("GRPC_PORT", str(port))
        with pytest.raises(OSError, match=f"127.0.0.1:{port}.*GRPC_PORT"):
            await GRPCServer(echo_service()).run()


# -- trio: refused, clearly -----------------------------------------------------------------


@ON_TRIO
async def test_on_trio_an_app_refuses_to_boot_naming_grpcserver(any_port: None) -> None:
    app = test_app("t")
    app.register(GRPCServer(echo_service()), name="grpc")
    with structlog.testing.capture_logs() as logs, anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    assert [(e.component, e.operation) for e in app.errors] == [("grpc", "preflight")]
    assert isinstance(app.errors[0].cause, RegistrationError)
    errors = [e["event"] for e in logs if e["log_level"] == "error" and e.get("operation") == "preflight"]
    assert len(errors) == 1 and "GRPCServer" in errors[0] and "backend='asyncio'" in errors[0]


@ON_TRIO
async def test_on_trio_standalone_run_refuses(any_port: None) -> None:
    server = GRPCServer(echo_service())
    with pytest.raises(RegistrationError, match="GRPCServer: grpcio's server runs on asyncio only"):
        await server.run()
    with pytest.raises(RegistrationError, match="asyncio only"):
        await server.init()
    await server.stop()  # nothing was started: nothing to do
    assert server.port is None
