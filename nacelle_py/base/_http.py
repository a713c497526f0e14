"""HTTPServer: serves an ASGI app (FastAPI, Starlette, a plain ASGI callable) as a process."""

from __future__ import annotations

import typing
from typing import Annotated, Any, ClassVar, NamedTuple

import anyio
import structlog
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .._calls import is_async
from .._components import Process
from .._config import Config
from .._errors import RegistrationError
from .._extras import require
from .._health import Health, HealthComponent
from .._inject import Inject
from .._metric import Metric
from .._services import ServiceContainer
from .._serving import ASGIApp, ASGIServing, check_tls, format_address, listen
from .._validate import positive_setting

__all__ = ["HTTPServer", "HTTPSettings", "HTTPStats"]


class HTTPSettings(BaseSettings):
    """HTTPServer: where it listens, TLS, and how it stops."""

    model_config = SettingsConfigDict(env_prefix="HTTP_")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 or :: for every interface).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on; 0 picks a free one (logged).")
    cert_file: str | None = Field(None, description="PEM certificate for HTTPS; set together with HTTP_KEY_FILE.")
    key_file: str | None = Field(
        None, validate_default=True, description="PEM private key for HTTPS; set together with HTTP_CERT_FILE."
    )
    shutdown_timeout: float = Field(
        5.0, description="Seconds requests in flight get to finish once the listener closed; then they are cut off."
    )
    drain_delay: float = Field(
        0.5,
        ge=0,
        description="Seconds between readiness turning false and the listener closing (load balancers "
        "stop sending meanwhile); 0: close at once.",
    )
    access_log: bool = Field(False, description="Log every request (method, path, status, ms) at info level.")

    @classmethod
    def env(cls, *fields: str) -> str:
        """The env variables of ``fields`` for this model (a subclass has its own prefix), joined by ``/``."""
        prefix = str(cls.model_config.get("env_prefix") or "")
        return "/".join(f"{prefix}{name}".upper() for name in fields)

    @field_validator("key_file")
    @classmethod
    def _both_or_neither(cls, key_file: str | None, info: ValidationInfo) -> str | None:
        cert_file = info.data.get("cert_file")
        if (cert_file is None) != (key_file is None):
            cert, key = cls.env("cert_file"), cls.env("key_file")
            have, lack = (cert, key) if key_file is None else (key, cert)
            raise ValueError(f"HTTPS needs both {cert} and {key}: {have} is set, {lack} is not")
        return key_file

    @field_validator("shutdown_timeout")
    @classmethod
    def _positive(cls, value: float) -> float | None:
        return positive_setting(value)


class HTTPStats(NamedTuple):
    """Requests being handled now, handled in all, and cut off by a drain that ran out of time."""

    active: Annotated[int, Metric.gauge("Requests the HTTP server is handling now.")]
    served: Annotated[int, Metric.counter("Requests the HTTP server answered.")]
    cut_off: Annotated[int, Metric.counter("Requests a drain that ran out of time cut off (HTTP_SHUTDOWN_TIMEOUT).")]


class HTTPServer(Process):
    """Serves ``asgi_app`` through Hypercorn on asyncio or trio (needs ``nacelle-py[http]``).

    The socket is bound in ``init``, so a taken port fails boot with the
    address in the message. The health key (the component's name) turns
    healthy once the app's lifespan startup finished and the server accepts.
    ``stop()`` turns readiness false first, waits ``HTTP_DRAIN_DELAY``,
    closes the listener (new connections are refused), answers what the
    open connections still send (with ``Connection: close``), gives the
    requests in flight ``HTTP_SHUTDOWN_TIMEOUT`` seconds in all, and logs
    how many it cut off.
    Keep that sum below the app's ``SHUTDOWN_TIMEOUT``. Under an app, the
    service container is in the ASGI lifespan state under ``"services"``, so
    each request's ``scope["state"]["services"]`` (Starlette and FastAPI:
    ``request.state.services``) reaches the app's services; ``service(key)``
    is a FastAPI dependency for one of them. For a second server
    in one app, subclass ``HTTPSettings`` with another ``env_prefix`` and
    annotate ``settings`` of a subclass with it.
    """

    health_keys: ClassVar[tuple[str, ...] | None] = ("{name}",)

    health: Health | None = Inject("health", optional=True)
    logger: Any = Inject("logger", optional=True)
    services: ServiceContainer | None = Inject("services", optional=True)
    settings: HTTPSettings = Inject()

    def __init__(self, asgi_app: ASGIApp) -> None:
        require("hypercorn", "http", "HTTPServer")
        if not callable(asgi_app) or isinstance(asgi_app, type) or not is_async(asgi_app):
            raise RegistrationError(
                "HTTPServer: asgi_app must be an ASGI application (an async callable taking scope, receive, send), "
                f"got {asgi_app!r}"
            )
        self.asgi_app = asgi_app
        self._serving: ASGIServing | None = None
        self._last: ASGIServing | None = None  # the last run's server: its counts outlive it
        self._health: HealthComponent | None = None
        self._settings: HTTPSettings | None = None
        self._stopped: anyio.Event | None = None
        self._running = False

    @property
    def address(self) -> tuple[str, int] | None:
        """The host and port listened on (the real port when ``HTTP_PORT=0``), once bound."""
        return None if self._serving is None else self._serving.address

    @property
    def url(self) -> str | None:
        """``http(s)://host:port`` once bound."""
        return None if self._serving is None else self._serving.url

    def stats(self) -> HTTPStats:
        """Requests in flight, handled, and cut off."""
        s = self._serving or self._last
        return HTTPStats(0, 0, 0) if s is None else HTTPStats(s.active, s.served, s.cut_off)

    async def preflight(self) -> None:
        """Bind the socket before any component of the app initialises: a taken port changes nothing."""
        self._bind(vars(self).get("settings"))

    async def init(self) -> None:
        """Bind the socket (if the preflight has not) and register the health key (unhealthy until serving)."""
        health = vars(self).get("health")
        if health is not None:
            self._health = health.register(health.owner or "http")
        self._bind(vars(self).get("settings"))

    def _bind(self, settings: HTTPSettings | None) -> None:
        if self._serving is not None:
            return
        settings = settings if settings is not None else Config().load(self._settings_model())
        self._settings = settings
        if settings.cert_file is not None and settings.key_file is not None:
            check_tls(settings.cert_file, settings.key_file, settings.env("cert_file", "key_file"))
        sock = listen(settings.host, settings.port, settings=settings.env("host", "port"))
        self._serving = ASGIServing(
            self.asgi_app,
            sock,
            graceful_timeout=settings.shutdown_timeout,
            logger=self._log(),
            cert_file=settings.cert_file,
            key_file=settings.key_file,
            access_log=settings.access_log,
            state={"services": services} if (services := vars(self).get("services")) is not None else None,
        )
        self._log().info("http server listening", address=format_address(*self._serving.address), url=self._serving.url)

    def _settings_model(self) -> type[HTTPSettings]:
        """The settings class ``settings`` is annotated with (a subclass may bring its own prefix)."""
        hints = typing.get_type_hints(type(self))
        model = hints.get("settings", HTTPSettings)
        return model if isinstance(model, type) and issubclass(model, HTTPSettings) else HTTPSettings

    def _log(self) -> Any:
        return vars(self).get("logger") or structlog.get_logger().bind(component="http")

    async def run(self) -> None:
        """Serve until ``stop()``; then drain the requests in flight."""
        if self._running:
            raise RuntimeError("HTTPServer.run: the server is already running")
        self._bind(vars(self).get("settings"))  # standalone: bind from the environment now
        serving = self._serving
        assert serving is not None
        self._running = True
        self._stopped = anyio.Event()
        try:
            await serving.serve(on_started=self._accepting)
        finally:
            self._running = False
            self._serving, self._last = None, serving  # a later run() binds anew
            self._stopped.set()
            if self._health is not None:
                self._health.update(False, "stopped")
            fields = {"served": serving.served, "cut_off": serving.cut_off}
            if serving.cut_off:
                self._log().warning("http server stopped; requests cut off by the shutdown timeout", **fields)
            else:
                self._log().info("http server stopped", **fields)

    def _accepting(self) -> None:
        if self._health is not None:
            self._health.update(True)

    async def stop(self) -> None:
        """Readiness false, wait the drain delay, close the listener, let requests in flight finish."""
        serving = self._serving
        if serving is None or not self._running:
            return
        if self._health is not None:
            self._health.update(False, "shutting down")
        delay = self._settings.drain_delay if self._settings is not None else 0.0
        self._log().info("http server draining", active=serving.active, drain_delay=delay)
        if delay and self._stopped is not None:
            with anyio.move_on_after(delay):
                await self._stopped.wait()  # a run that ends meanwhile ends the delay
        serving.shutdown()

    async def finalize(self) -> None:
        """Release the socket if boot failed before the server ran."""
        if self._serving is not None and not self._running:
            self._serving.close()
            self._serving = None
