"""The components an app has registered, in order: unique names and instances, checked declarations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._components import DEFAULT, Initializer, Options, TimeoutOption, declared_keys
from ._errors import RegistrationError

__all__ = ["Registry", "resolved"]


def resolved(option: TimeoutOption, default: float | None) -> float | None:
    """A registration timeout as it applies: the app-wide ``default`` where it was left at ``DEFAULT``."""
    return default if option is DEFAULT else option


class Registry:
    """One app's components with their options, in registration order."""

    def __init__(self) -> None:
        self.items: list[tuple[Initializer, Options]] = []
        self._names: set[str] = set()
        self._instances: dict[int, str] = {}
        self._provided: set[str] = set()  # every key in the components' provides

    def add(self, component: object, name: str | None, **options: Any) -> Options:
        """Check and record ``component``; ``RegistrationError`` for a non-component, a duplicate or a bad option."""
        if isinstance(component, type):
            raise RegistrationError(
                f"{name or component.__name__}: register() takes an instance, got the class "
                f"{component.__name__}; use {component.__name__}()"
            )
        if not isinstance(component, Initializer):
            raise RegistrationError(
                f"{name or type(component).__name__}: {type(component).__name__} is not a component; "
                "subclass nacelle_py.Initializer or nacelle_py.Process"
            )
        record = Options(name=type(component).__name__ if name is None else name, **options)
        # A bad declaration fails here, not in check; what it provides is kept for every serve() and check.
        provides = declared_keys(component, record.name, "provides")
        declared_keys(component, record.name, "health_keys")
        if record.name in self._names:
            hint = "" if name is not None else " (the default name is the class name; pass name=...)"
            raise RegistrationError(f"duplicate component name {record.name!r}{hint}")
        if id(component) in self._instances:
            raise RegistrationError(
                f"{record.name}: this instance is already registered as {self._instances[id(component)]!r}; "
                "register a new instance"
            )
        self._names.add(record.name)
        self._instances[id(component)] = record.name
        self.items.append((component, record))
        self._provided.update(provides)
        return record

    def declared_services(self) -> set[str]:
        """Every service key the components declare in ``provides`` (as registered)."""
        return set(self._provided)

    def __iter__(self) -> Iterator[tuple[Initializer, Options]]:
        return iter(self.items)
