"""``RunningApp``: what ``running()`` hands the test body, a view of one app while it serves."""

from __future__ import annotations

from typing import TypeVar, overload

import anyio
from pydantic_settings import BaseSettings

from .._app import App
from .._components import Initializer
from .._config import Config
from .._errors import ComponentError
from .._health import Health
from .._services import ServiceContainer
from .._serving import format_address
from ._access import phase, states

__all__ = ["RunningApp"]

S = TypeVar("S", bound=BaseSettings)
C = TypeVar("C", bound=Initializer)


class RunningApp:
    """The app ``running()`` booted, and what it is doing: services, health, settings, phase, exit status.

    Everything here reads the live app, so it is true at the moment it is
    read, during the block and after it (``status`` and ``errors`` are
    final once the block has been left).
    """

    def __init__(self, app: App, timeout: float) -> None:
        self.app = app
        """The ``App`` itself."""
        self._timeout = timeout
        self._status: int | None = None
        self._ops_address: tuple[str, int] | None = None
        self._ended = anyio.Event()

    # -- what the app holds ------------------------------------------------------------

    @property
    def services(self) -> ServiceContainer:
        """The app's service container: ``services.get("db")`` is what the components were given."""
        return self.app.services

    @property
    def health(self) -> Health:
        """The app's health: ``health.healthy``, ``health.unhealthy()``, ``health.get(key)``."""
        return self.app.health

    @property
    def config(self) -> Config:
        """The app's settings loader (overrides included)."""
        return self.app.config

    def settings(self, model: type[S]) -> S:
        """The instance of the settings model ``model`` the components were given (loaded at boot)."""
        return self.app.config.load(model)

    @overload
    def component(self, name: str) -> Initializer: ...
    @overload
    def component(self, name: str, kind: type[C]) -> C: ...
    def component(self, name: str, kind: type[Initializer] = Initializer) -> Initializer:
        """The component registered as ``name`` (checked to be a ``kind``, for typed access to it)."""
        for component, options in self.app.registrations:
            if options.name == name:
                if not isinstance(component, kind):
                    raise TypeError(f"component {name!r} is a {type(component).__name__}, not a {kind.__name__}")
                return component
        known = ", ".join(options.name for _, options in self.app.registrations) or "none"
        raise KeyError(f"no component registered as {name!r} (registered: {known})")

    # -- what the app is doing -----------------------------------------------------------

    @property
    def phase(self) -> str:
        """``"starting"``, ``"running"`` (supervising), ``"stopping"`` or ``"stopped"``."""
        return phase(self.app)

    @property
    def states(self) -> dict[str, str]:
        """Each component's lifecycle state by registered name (``"running"``, ``"restarting"``, ...)."""
        return states(self.app)

    @property
    def errors(self) -> tuple[ComponentError, ...]:
        """Every error so far (``app.errors``), in order, with component and operation."""
        return self.app.errors

    @property
    def status(self) -> int | None:
        """The exit status once the app has ended (0 clean, 1 on any failure); None while it serves."""
        return self._status

    @property
    def ops_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the ops endpoint (the real port for ``OPS_ADDR=...:0``); None when it is off."""
        return self._ops_address

    @property
    def ops_url(self) -> str | None:
        """The ops endpoint as a base URL (``http://127.0.0.1:PORT``); None when it is off."""
        return None if self._ops_address is None else f"http://{format_address(*self._ops_address)}"

    def shutdown(self) -> None:
        """Ask the app to unwind now (as ``app.shutdown()``); leaving the block waits for it."""
        self.app.shutdown()

    async def wait_stopped(self, timeout: float | None = None) -> int:
        """Wait until the app has ended (by itself, or after ``shutdown()``); its exit status.

        Bounded by ``timeout`` seconds (default: ``running()``'s); a
        ``TimeoutError`` names the phase and the components still going.
        """
        limit = self._timeout if timeout is None else timeout
        with anyio.move_on_after(limit):
            await self._ended.wait()
        if not self._ended.is_set():
            going = ", ".join(name for name, state in self.states.items() if state == "running")
            raise TimeoutError(
                f"app {self.app.name!r} still serving after {limit:g}s (phase {self.phase}"
                + (f"; running: {going}" if going else "")
                + "); call shutdown() to end it"
            )
        if self._status is None:
            raise RuntimeError(f"app {self.app.name!r}: serve() was abandoned after a forced shutdown; no exit status")
        return self._status

    # -- for running() -------------------------------------------------------------------

    def _ready(self) -> None:
        self._ops_address = self.app.ops_address  # None again once the app has ended: kept for the block

    def _end(self, status: int | None) -> None:
        self._status = status
        self._ended.set()

    def __repr__(self) -> str:
        return f"RunningApp({self.app.name!r}, phase={self.phase}, status={self._status})"
