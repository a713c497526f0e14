"""Health: named health components that start unhealthy, and subscriptions to changes.

The runner waits for every registered component to be healthy before the
next priority group starts, and a start timeout names the unhealthy keys
and the components that registered them. Updates may come from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

from ._errors import ServiceError

__all__ = ["Health", "HealthComponent", "HealthStatus"]

Listener = Callable[["HealthComponent"], None]


class HealthStatus(NamedTuple):
    """A snapshot of one health component."""

    key: str
    healthy: bool
    component: str | None
    reason: str | None


class _Registry:
    """The shared state behind every ``Health`` view of one app."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.components: dict[str, HealthComponent] = {}
        self.listeners: list[Listener] = []
        self.unhealthy = 0


class HealthComponent:
    """One named health flag, created unhealthy by ``Health.register``.

    ``update(True)`` once the owner is ready; ``update(False, reason)`` when
    it degrades. Safe to call from any thread.
    """

    __slots__ = ("_healthy", "_held", "_reason", "_registry", "component", "key")

    def __init__(self, registry: _Registry, key: str, component: str | None) -> None:
        self._registry = registry
        self.key = key
        self.component = component
        self._healthy = False
        self._held = False  # its owner is restarting: updates are ignored until it registers the key again
        self._reason: str | None = "not yet reported healthy"

    @property
    def healthy(self) -> bool:
        """Whether the component is currently healthy."""
        return self._healthy

    @property
    def reason(self) -> str | None:
        """Why the component is unhealthy, if it said so."""
        return self._reason

    def update(self, healthy: bool, reason: str | None = None) -> None:
        """Set the health flag (and an optional reason when unhealthy); notifies subscribers on change."""
        if not isinstance(healthy, bool):
            raise TypeError(f"health {self.key!r}: update() takes a bool, got {healthy!r}")
        registry = self._registry
        with registry.lock:
            if self._held:  # a word from the incarnation being restarted: no longer its to say
                return
            changed = healthy != self._healthy
            self._healthy = healthy
            self._reason = None if healthy else reason
            if changed:
                registry.unhealthy += -1 if healthy else 1
            listeners = list(registry.listeners) if changed else ()
        for listener in listeners:
            listener(self)

    def status(self) -> HealthStatus:
        """A snapshot of this component."""
        return HealthStatus(self.key, self._healthy, self.component, self._reason)

    def __repr__(self) -> str:
        state = "healthy" if self._healthy else "unhealthy"
        return f"HealthComponent({self.key!r}, {state}, component={self.component!r})"


class Health:
    """The app's health: register components, read their state, subscribe to changes.

    Injected under the key ``"health"``. Keys registered through the view a
    component receives record that component's name, so a start timeout can
    say who owns an unhealthy key.
    """

    __slots__ = ("_owner", "_registry")

    def __init__(self, *, _registry: _Registry | None = None, _owner: str | None = None) -> None:
        self._registry = _registry if _registry is not None else _Registry()
        self._owner = _owner

    @property
    def owner(self) -> str | None:
        """The component this view registers keys for (``None`` for the app's own view)."""
        return self._owner

    def for_component(self, name: str | None) -> Health:
        """A view of the same health state that records ``name`` as the owner of new keys."""
        return Health(_registry=self._registry, _owner=name)

    def register(self, key: str) -> HealthComponent:
        """Create the health component ``key``, unhealthy until updated; keys are unique."""
        if not isinstance(key, str) or not key:
            raise ServiceError(f"health keys are non-empty strings, got {key!r}")
        registry = self._registry
        component = HealthComponent(registry, key, self._owner)
        with registry.lock:
            held = registry.components.get(key)
            if held is not None and held._held and held.component == self._owner:
                # The owner's new incarnation takes its key back: unhealthy until it says otherwise.
                held._held = False
                held._reason = "not yet reported healthy"
                return held
            if held is not None:
                raise ServiceError(f"health key {key!r} is already registered (by {held.component or 'the app'})")
            registry.components[key] = component
            registry.unhealthy += 1
            listeners = list(registry.listeners)
        for listener in listeners:
            listener(component)
        return component

    def get(self, key: str) -> HealthComponent:
        """The health component registered under ``key``."""
        try:
            return self._registry.components[key]
        except KeyError:
            raise ServiceError(f"no health component registered under {key!r}") from None

    @property
    def healthy(self) -> bool:
        """Whether every registered component is healthy (true when none is registered)."""
        return self._registry.unhealthy == 0

    def unhealthy(self) -> list[HealthStatus]:
        """Snapshots of the components that are not healthy, in registration order."""
        with self._registry.lock:
            return [c.status() for c in self._registry.components.values() if not c.healthy]

    def statuses(self) -> list[HealthStatus]:
        """Snapshots of every component, in registration order."""
        with self._registry.lock:
            return [c.status() for c in self._registry.components.values()]

    # -- for the runner's restarts (internal to nacelle_py) ---------------------------

    def hold(self, owner: str, reason: str) -> None:
        """Internal: mark every key of ``owner`` unhealthy with ``reason`` while it restarts.

        Held keys ignore updates until the owner registers them again (its new
        incarnation gets the same key back). An owner without keys gets one
        placeholder key, its own name (``<name>#restart`` if another owner has
        that key), so that readiness shows the restart all the same.
        """
        registry = self._registry
        changed: list[HealthComponent] = []
        with registry.lock:
            mine = [c for c in registry.components.values() if c.component == owner]
            if not mine:
                key = owner if owner not in registry.components else f"{owner}#restart"
                placeholder = HealthComponent(registry, key, owner)
                registry.components[key] = placeholder
                registry.unhealthy += 1
                mine = [placeholder]
            for component in mine:
                if component._healthy:
                    registry.unhealthy += 1
                    component._healthy = False
                component._held = True
                component._reason = reason
                changed.append(component)
            listeners = list(registry.listeners)
        for component in changed:
            for listener in listeners:
                listener(component)

    def settle(self, owner: str) -> None:
        """Internal: the restart of ``owner`` is over: drop the keys its new incarnation did not take back."""
        registry = self._registry
        with registry.lock:
            keys = [k for k, c in registry.components.items() if c.component == owner and c._held]
            dropped = [registry.components.pop(key) for key in keys]
            registry.unhealthy -= sum(not c._healthy for c in dropped)
            listeners = list(registry.listeners)
        for component in dropped:  # listeners learn that these keys no longer hold anything up
            for listener in listeners:
                listener(component)

    def waiting_on(self, owners: set[str]) -> list[HealthStatus]:
        """Internal: the unhealthy keys of ``owners`` that are not held (what a restart's health wait waits for)."""
        with self._registry.lock:
            return [
                c.status()
                for c in self._registry.components.values()
                if c.component in owners and not c._healthy and not c._held
            ]

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(component)`` on every registration and change; returns an unsubscribe function.

        Listeners run on the thread that made the change, so they must be
        quick and thread-safe.
        """
        registry = self._registry
        with registry.lock:
            registry.listeners.append(listener)

        def unsubscribe() -> None:
            with registry.lock:
                if listener in registry.listeners:
                    registry.listeners.remove(listener)

        return unsubscribe

    def __repr__(self) -> str:
        return f"Health(healthy={self.healthy}, components={len(self._registry.components)})"
