"""GRPCServer: the process that owns one ``grpc.aio`` server, from bind to graceful stop."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Union

import anyio
import sniffio
import structlog

from ..._components import Process
from ..._config import Config
from ..._errors import RegistrationError
from ..._extras import require
from ..._health import Health, HealthComponent
from ..._inject import Inject
from ..._serving import format_address
from ._bind import add_port
from ._settings import GRPCSettings

if TYPE_CHECKING:
    import grpc

    from ._health import HealthService

__all__ = ["GRPCServer"]

Handler = Union[Callable[["grpc.aio.Server"], object], "grpc.GenericRpcHandler"]

CLEANUP_BOUND = 1.0
"""Seconds a stop without grace (cancelled run, failed boot) may take; grpcio's cancel-all is quick."""
REUSEPORT = "grpc.so_reuseport"


class GRPCServer(Process):
    """Serves gRPC services on grpcio's asyncio server (needs ``nacelle-py[grpc]``; asyncio only).

    Each handler is a registration function called with the ``grpc.aio.Server``
    (``lambda server: add_GreeterServicer_to_server(Greeter(), server)``) or a
    ``grpc.GenericRpcHandler``; a subclass may override ``register()`` instead.
    ``init`` binds ``GRPC_HOST:GRPC_PORT``, so a taken port fails boot naming
    the address. The standard health service (``grpc.health.v1.Health``)
    reports ``""`` as ``SERVING`` while every health key of the app is healthy,
    and each health key as a service of its own. ``stop()`` reports
    ``NOT_SERVING`` first, serves on for ``GRPC_DRAIN_DELAY`` seconds, then
    stops the server: new RPCs are refused, those in flight get
    ``GRPC_GRACE_PERIOD`` seconds, and the rest are cancelled. Keep the sum
    below the app's ``SHUTDOWN_TIMEOUT``. On the trio backend
    ``init`` and ``run`` refuse with a ``RegistrationError``.
    """

    health_keys: ClassVar[tuple[str, ...] | None] = ("{name}",)

    health: Health | None = Inject("health", optional=True)
    logger: Any = Inject("logger", optional=True)
    settings: GRPCSettings = Inject()

    def __init__(
        self,
        *handlers: Handler,
        options: Sequence[tuple[str, Any]] = (),
        health_service: bool = True,
    ) -> None:
        self._grpc: Any = require("grpc", "grpc", "GRPCServer")
        if not isinstance(health_service, bool):
            raise RegistrationError(f"GRPCServer: health_service must be True or False, got {health_service!r}")
        if health_service:
            require("grpc_health.v1.health_pb2_grpc", "grpc", "GRPCServer")
        for i, handler in enumerate(handlers):
            if isinstance(handler, self._grpc.GenericRpcHandler):
                continue
            if not callable(handler) or isinstance(handler, type):
                raise RegistrationError(
                    f"GRPCServer: handlers[{i}] must be a registration function (called with the server) "
                    f"or a grpc.GenericRpcHandler, got {handler!r}"
                )
            if inspect.iscoroutinefunction(handler):
                raise RegistrationError(
                    f"GRPCServer: handlers[{i}] is an async function; registration functions are plain "
                    "functions, like the generated add_XServicer_to_server"
                )
        if not handlers and type(self).register is GRPCServer.register:
            raise RegistrationError(
                "GRPCServer: pass at least one handler (a registration function or a grpc.GenericRpcHandler), "
                "or subclass GRPCServer and override register()"
            )
        self.handlers: tuple[Handler, ...] = handlers
        self.options: tuple[tuple[str, Any], ...] = self._check_options(options)
        self.health_service = health_service
        self._server: Any = None  # the grpc.aio.Server, from bind until stopped
        self._service: HealthService | None = None
        self._address: tuple[str, int] | None = None
        self._grace = 0.0
        self._drain_delay = 0.0
        self._health: HealthComponent | None = None
        self._done: anyio.Event | None = None  # set once the server is stopped (run may return)
        self._running = False
        self._preflight_bound = False  # the preflight bound the server: init takes it over
        self._started = False
        self._stop_requested = False
        self._stopping = False
        self._sync_pending = False

    @staticmethod
    def _check_options(options: object) -> tuple[tuple[str, Any], ...]:
        if isinstance(options, (str, bytes, dict)) or not isinstance(options, Sequence):
            raise RegistrationError(f"GRPCServer: options must be a sequence of (name, value) pairs, got {options!r}")
        checked = []
        for pair in options:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and pair[0]):
                raise RegistrationError(
                    f"GRPCServer: options must be (name, value) pairs such as ('grpc.max_receive_message_length', "
                    f"8 << 20), got {pair!r}"
                )
            checked.append(pair)
        # grpcio sets SO_REUSEPORT by default on Linux: a second server (an old instance
        # still running, say) would then share the port silently instead of failing boot.
        if not any(name == REUSEPORT for name, _ in checked):
            checked.append((REUSEPORT, 0))
        return tuple(checked)

    @property
    def port(self) -> int | None:
        """The port listened on (the real one when ``GRPC_PORT=0``), from bind until stopped."""
        return None if self._address is None else self._address[1]

    @property
    def address(self) -> tuple[str, int] | None:
        """The host and port listened on, from bind until stopped."""
        return self._address

    def register(self, server: grpc.aio.Server) -> None:
        """Add the services to ``server`` before it binds; by default, the handlers given to the constructor.

        Override it in a subclass (and call ``super().register(server)`` to keep the handlers).
        """
        for handler in self.handlers:
            if isinstance(handler, self._grpc.GenericRpcHandler):
                server.add_generic_rpc_handlers((handler,))
            else:
                handler(server)

    # -- lifecycle ----------------------------------------------------------------

    async def preflight(self) -> None:
        """Refuse trio and bind the port before any component of the app initialises (a taken port changes nothing)."""
        self._refuse_trio()
        if self._server is None:
            await self._bind()
            self._preflight_bound = True

    async def init(self) -> None:
        """Refuse trio, register the health key (unhealthy until serving), build the server and bind (unless the preflight did)."""
        self._refuse_trio()
        bound, self._preflight_bound = self._preflight_bound, False
        if self._server is not None and not bound:
            raise RuntimeError("GRPCServer.init: the server is already bound")
        health = vars(self).get("health")
        if health is not None and self._health is None:
            self._health = health.register(health.owner or "grpc")
        if self._server is None:
            await self._bind()

    async def _bind(self) -> None:
        settings = vars(self).get("settings")
        if settings is None:  # standalone: the same settings, from the environment
            settings = Config().load(GRPCSettings)
        server = self._grpc.aio.server(options=self.options)
        try:
            self.register(server)
            service = None
            if self.health_service:
                from grpc_health.v1 import health_pb2_grpc

                from ._health import HealthService

                service = HealthService()
                health_pb2_grpc.add_HealthServicer_to_server(service, server)
            port = add_port(server, settings.host, settings.port)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_BOUND):
                await server.stop(None)
            raise
        self._server, self._service = server, service
        self._address = (settings.host, port)
        self._grace = settings.grace_period
        self._drain_delay = settings.drain_delay
        self._stop_requested = self._stopping = self._started = False
        self._log().info(
            "grpc server listening", host=settings.host, port=port, address=format_address(settings.host, port)
        )

    async def run(self) -> None:
        """Start serving, keep the health service in step with the app's health, return once stopped."""
        self._refuse_trio()
        if self._running:
            raise RuntimeError("GRPCServer.run: the server is already running")
        self._running = True
        try:
            if self._server is None:  # standalone, without init(): bind now
                await self._bind()
            await self._serve()
        finally:
            self._running = False

    async def _serve(self) -> None:
        server = self._server
        done = self._done = anyio.Event()
        loop = asyncio.get_running_loop()
        self._sync_pending = False  # a sync scheduled on an earlier run's loop will never run
        app_health = vars(self).get("health")
        unsubscribe = app_health.subscribe(lambda _c: self._health_changed(loop)) if app_health else None
        try:
            await server.start()
            self._started = True
            if self._stop_requested:  # stop() came while the server was starting
                await self._graceful_stop()
            else:
                if self._health is not None:
                    self._health.update(True)
                self._sync_health()
                await done.wait()
        finally:
            if unsubscribe is not None:
                unsubscribe()
            if not done.is_set():
                # Cancelled (a shutdown timeout, a forced stop): no grace, but never leave the port bound.
                await self._close_now("run cancelled", warn=True)
                done.set()
            self._forget()

    def _health_changed(self, loop: asyncio.AbstractEventLoop) -> None:
        """A health listener: may run on any thread, so it only schedules one sync on the loop."""
        if self._sync_pending:
            return  # a sync is already scheduled, and it will read the newest state
        self._sync_pending = True
        try:
            loop.call_soon_threadsafe(self._sync_health)
        except RuntimeError:  # the loop is closed: the server is gone, nothing to report to
            self._sync_pending = False

    def _sync_health(self) -> None:
        """Copy the app's whole health into the gRPC health service (on the loop)."""
        self._sync_pending = False  # cleared before reading: a later change schedules another sync
        service = self._service
        if service is None:
            return
        app_health = vars(self).get("health")
        if app_health is None:  # standalone: the server alone is the app
            service.apply(self._started and not self._stopping, {})
            return
        statuses = app_health.statuses()  # every key of the app, not only this component's
        service.apply(all(s.healthy for s in statuses), {s.key: s.healthy for s in statuses})

    async def stop(self) -> None:
        """Report ``NOT_SERVING``, refuse new RPCs, give those in flight the grace period, then cancel them."""
        if self._server is None:
            return  # not bound: nothing to stop
        self._stop_requested = True
        if self._started:
            await self._graceful_stop()
        # Otherwise run() has not started the server yet and stops it as soon as it has.

    async def _graceful_stop(self) -> None:
        done = self._done
        if self._stopping:  # a second stop() waits for the first one
            if done is not None:
                with anyio.move_on_after(self._grace + CLEANUP_BOUND):
                    await done.wait()
            return
        self._stopping = True
        # Clients and load balancers learn first, while the RPCs in flight still finish.
        if self._health is not None:
            self._health.update(False, "shutting down")
        if self._service is not None:
            self._service.close()
        if self._drain_delay:
            # Check answers NOT_SERVING meanwhile, and RPCs are still served; a run that
            # ends (cancelled) ends the wait too.
            with anyio.move_on_after(self._drain_delay):
                if done is not None:
                    await done.wait()
        started = time.perf_counter()
        grace = self._grace
        with anyio.move_on_after(grace + CLEANUP_BOUND) as bound:
            await self._server.stop(grace)
        took = time.perf_counter() - started
        fields = {"ms": round(took * 1000, 3), "grace_period": grace}
        if bound.cancelled_caught:
            self._log().warning("grpc server stop overran its bound; RPCs abandoned", **fields)
        elif took >= grace:
            # grpcio does not say whether it cancelled RPCs; only running out of grace makes it do so.
            self._log().warning(
                "grpc server stopped; the grace period ran out and RPCs in flight were cancelled", **fields
            )
        else:
            self._log().info("grpc server stopped", **fields)
        if done is not None:
            done.set()

    async def finalize(self) -> None:
        """Release the port if the server was bound but never served (boot failed later)."""
        if self._server is not None and not self._running:
            await self._close_now("boot did not reach run", warn=False)
            self._forget()

    async def _close_now(self, reason: str, *, warn: bool) -> None:
        """Stop without grace: cancel every RPC; shielded and bounded, as it runs while unwinding."""
        if self._service is not None:
            self._service.close()
        if self._health is not None:
            self._health.update(False, "stopped")
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_BOUND):
            await self._server.stop(0)
        log = self._log()
        if warn:  # a cancelled run is news; a failed boot already said what went wrong
            log.warning("grpc server stopped without grace", reason=reason)
        else:
            log.info("grpc server stopped without grace", reason=reason)

    def _forget(self) -> None:
        """Drop the stopped server, so that a later standalone run() binds anew."""
        if self._health is not None:
            self._health.update(False, "stopped")
        self._server = self._service = self._address = None
        self._started = self._stopping = self._stop_requested = False

    # -- helpers ------------------------------------------------------------------

    @staticmethod
    def _refuse_trio() -> None:
        if sniffio.current_async_library() != "asyncio":
            raise RegistrationError(
                "GRPCServer: grpcio's server runs on asyncio only; boot the app with backend='asyncio' "
                "(app.boot() does by default), or serve it under asyncio"
            )

    def _log(self) -> Any:
        return vars(self).get("logger") or structlog.get_logger().bind(component="grpc")
