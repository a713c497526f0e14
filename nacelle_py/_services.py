"""The service container: named services over dependency-injector providers.

Keys are strings. A value set with ``set`` is held by a
``providers.Object``; ``set_factory`` registers a ``Singleton`` (default) or
``Factory`` provider. ``override`` replaces a service for the length of a
``with`` block, the way tests swap a real dependency for a fake one; with
``allow_missing=True`` the key may be registered later (by an initializer's
``set`` at init), and the override applies from the moment it is.
Services that differ per component (the ``logger`` bound with its name, the
``health`` view that records who registered a key) are stored as
:class:`PerComponent` providers and resolved by the injector.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar, overload

from dependency_injector import containers, providers

from ._errors import ServiceError

__all__ = ["PerComponent", "ServiceContainer", "setting_as"]

T = TypeVar("T")
_MISSING: Any = object()
_SETTER: ContextVar[str | None] = ContextVar("nacelle_service_setter", default=None)


@contextmanager
def setting_as(component: str) -> Iterator[None]:
    """Inside the block (and the tasks and threads it starts), the services set are ``component``'s own.

    The runner wraps each ``init()`` in it, so that a restart can ``forget`` what
    the component's last incarnation set before its next ``init()`` sets it again.
    """
    token = _SETTER.set(component)
    try:
        yield
    finally:
        _SETTER.reset(token)


class PerComponent(Generic[T]):
    """A service whose value depends on the component that asks for it.

    ``make(name)`` is called once per component at injection time; outside a
    component (``ServiceContainer.get``) the value is ``make(None)``. When the
    component's lifecycle ends (a process's run has ended, an initializer
    has finalized), the runner calls ``release(name)`` if given and awaits
    what it returns (None: nothing to end): what the service made for that
    component ends with it.
    """

    __slots__ = ("make", "release")

    def __init__(
        self, make: Callable[[str | None], T], release: Callable[[str], Awaitable[None] | None] | None = None
    ) -> None:
        self.make = make
        self.release = release


class ServiceContainer:
    """A thread-safe registry of named services shared by all components of one app.

    Injected under the key ``"services"``; initializers ``set`` what they
    create and later components receive it through ``Inject("key")``.
    """

    def __init__(self) -> None:
        self._container = containers.DynamicContainer()
        self._providers: dict[str, providers.Provider[Any]] = {}
        self._lock = threading.Lock()
        self._made: set[str] = set()  # components a per-component service with a release made something for
        self._declared: frozenset[str] | None = None  # while serving: the keys check could see
        self._on_undeclared: Callable[[str], None] | None = None
        # Overrides of keys not registered yet, applied (in order) by the set that registers the key.
        self._pending: dict[str, list[providers.Provider[Any]]] = {}
        self._setters: dict[str, str] = {}  # key -> the component whose init() set it

    def _check_key(self, key: object) -> str:
        if not isinstance(key, str) or not key:
            raise ServiceError(f"service keys are non-empty strings, got {key!r}")
        return key

    def _add(self, key: str, provider: providers.Provider[Any]) -> None:
        key = self._check_key(key)
        with self._lock:
            if key in self._providers:
                raise ServiceError(
                    f"duplicate service key {key!r}: a service is already registered under it; "
                    "pick another key or use override() to replace it temporarily"
                )
            self._providers[key] = provider
            self._container.set_provider(key, provider)
            setter = _SETTER.get()
            if setter is not None:
                self._setters[key] = setter
            for replacement in self._pending.pop(key, ()):
                provider.override(replacement)
            undeclared = self._on_undeclared if self._declared is not None and key not in self._declared else None
        if undeclared is not None:
            undeclared(key)

    def watch_undeclared(
        self, declared: Iterable[str] | None, on_undeclared: Callable[[str], None] | None = None
    ) -> None:
        """Call ``on_undeclared(key)`` when a key outside ``declared`` is set (``None``: stop watching).

        The app watches while it serves: a key no component declares in
        ``provides`` is one that ``nacelle-py check`` could not see.
        """
        with self._lock:
            self._declared = None if declared is None else frozenset(declared)
            self._on_undeclared = on_undeclared

    def set(self, key: str, value: object) -> None:
        """Register ``value`` under ``key``; a key can be set once (``ServiceError`` otherwise)."""
        self._add(key, providers.Object(value))

    def set_factory(self, key: str, factory: Callable[[], object], *, singleton: bool = True) -> None:
        """Register a callable that builds the service on first ``get`` (every ``get`` if not ``singleton``)."""
        if not callable(factory):
            raise ServiceError(f"service {key!r}: factory must be callable, got {factory!r}")
        self._add(key, providers.Singleton(factory) if singleton else providers.Factory(factory))

    def forget(self, component: str) -> list[str]:
        """Unregister the services ``component``'s ``init()`` set; the keys, in the order they were set.

        The runner calls it as a restart re-initialises the component: its next
        ``init()`` sets them again. An ``override`` in force on one of them waits
        for that ``set``, as one made before the key existed does.
        """
        with self._lock:
            keys = [key for key, setter in self._setters.items() if setter == component]
            for key in keys:
                del self._setters[key]
                provider = self._providers.pop(key)
                if provider.overridden:
                    self._pending[key] = [*provider.overridden, *self._pending.get(key, ())]
                if hasattr(self._container, key):
                    delattr(self._container, key)
        return keys

    def has(self, key: str) -> bool:
        """Whether a service is registered under ``key``."""
        return key in self._providers

    def __contains__(self, key: object) -> bool:
        return key in self._providers

    def keys(self) -> list[str]:
        """The registered keys, in registration order."""
        return list(self._providers)

    @overload
    def get(self, key: str) -> Any: ...
    @overload
    def get(self, key: str, default: T) -> Any | T: ...
    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The service under ``key``; ``default`` if given and missing, else ``ServiceError``."""
        return self.resolve(key, None, default)

    def resolve(self, key: str, component: str | None, default: Any = _MISSING) -> Any:
        """The service under ``key`` as seen by ``component`` (for per-component services)."""
        provider = self._providers.get(key)
        if provider is None:
            if default is not _MISSING:
                return default
            known = ", ".join(sorted(self._providers)) or "none"
            raise ServiceError(
                f"no service registered under {key!r} (registered: {known}); "
                "set it in an initializer of a lower priority, or inject it with optional=True"
            )
        value = provider()
        if isinstance(value, PerComponent):
            return self._make(value, component)
        return value

    def _make(self, service: PerComponent[Any], component: str | None) -> Any:
        if component is not None and service.release is not None:
            self._made.add(component)
        return service.make(component)

    def ready(self, key: str, component: str | None) -> tuple[bool, Any]:
        """``(True, value)`` for a service set as a value (per-component ones made for ``component``), else ``(False, None)``.

        Factories are not called: what they build may need what is not there yet.
        """
        provider = self._providers.get(key)
        if not isinstance(provider, providers.Object):
            return False, None
        value = provider()
        return True, (self._make(value, component) if isinstance(value, PerComponent) else value)

    def find_by_type(self, kind: type[T], component: str | None = None) -> list[tuple[str, T]]:
        """Every already-built service that is an instance of ``kind``, as ``(key, value)`` pairs.

        Only services set as values are considered: factories are never called by a type lookup.
        """
        found: list[tuple[str, T]] = []
        for key, provider in list(self._providers.items()):
            if isinstance(provider, providers.Object):
                value = provider()
                if isinstance(value, PerComponent):
                    value = self._make(value, component)
                if isinstance(value, kind):
                    found.append((key, value))
        return found

    def release(self, component: str) -> Awaitable[None] | None:
        """End what per-component services made for ``component``: an awaitable, or None if nothing was made.

        The runner calls it as the component ends; the common case (nothing to
        end) costs no await, and a component nothing was made for not even a look at the services.
        """
        if component not in self._made:
            return None
        self._made.discard(component)
        pending: list[Awaitable[None]] = []
        for provider in list(self._providers.values()):
            if isinstance(provider, providers.Object):
                value = provider()
                if isinstance(value, PerComponent) and value.release is not None:
                    ending = value.release(component)
                    if ending is not None:
                        pending.append(ending)
        if not pending:
            return None
        return _all(pending)

    @contextmanager
    def override(self, key: str, value: object, *, allow_missing: bool = False) -> Iterator[None]:
        """Replace the service under ``key`` by ``value`` inside the ``with`` block (for tests).

        The key must be registered, unless ``allow_missing``: then an override
        of a key nobody has set yet waits for the ``set`` (or ``set_factory``)
        that registers it, and replaces the service from that moment on (the
        component that set it keeps its own reference to the real one).
        Overrides nest; leaving the block removes this one, whatever the order.
        """
        key = self._check_key(key)
        replacement = providers.Object(value)
        with self._lock:
            provider = self._providers.get(key)
            if provider is not None:
                provider.override(replacement)
            elif allow_missing:
                self._pending.setdefault(key, []).append(replacement)
            else:
                raise ServiceError(f"cannot override {key!r}: no service is registered under it")
        try:
            yield
        finally:
            self._drop_override(key, replacement)

    def _drop_override(self, key: str, replacement: providers.Provider[Any]) -> None:
        with self._lock:
            waiting = self._pending.get(key)
            if waiting is not None and any(r is replacement for r in waiting):
                waiting[:] = [r for r in waiting if r is not replacement]
                if not waiting:
                    del self._pending[key]
                return
            provider = self._providers[key]
            overridings = provider.overridden
            if overridings and overridings[-1] is replacement:
                provider.reset_last_overriding()
                return
            # Left out of order (a fixture's override outliving a block's): keep the others.
            provider.reset_override()
            for kept in overridings:
                if kept is not replacement:
                    provider.override(kept)

    def __repr__(self) -> str:
        return f"ServiceContainer({', '.join(self._providers)})"


async def _all(pending: list[Awaitable[None]]) -> None:
    for ending in pending:
        await ending
