"""Injection: ``Inject`` markers on component classes, filled in before ``init``.

``Inject("key")`` takes the service registered under ``key``; ``Inject()``
takes the attribute's annotation: a pydantic-settings model is loaded from
the environment, any other type is looked up among the services by type.
The marker is a non-data descriptor, so after injection the attribute is an
ordinary instance attribute and reading it costs nothing.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any, NamedTuple, Union

from pydantic_settings import BaseSettings

from ._config import Config
from ._errors import InjectionError, ServiceError
from ._services import ServiceContainer

__all__ = ["Inject", "Injection", "Injector", "PlannedInjection", "planned_injections"]

_UNRESOLVED: Any = object()


class Injection:
    """The descriptor that ``Inject`` puts on a class: which service fills an attribute."""

    __slots__ = ("attr", "key", "optional")

    def __init__(self, key: str | None, optional: bool) -> None:
        if key is not None and (not isinstance(key, str) or not key):
            raise TypeError(f"Inject(key): key must be a non-empty string or omitted, got {key!r}")
        if not isinstance(optional, bool):
            raise TypeError(f"Inject(optional=...) must be a bool, got {optional!r}")
        self.key = key
        self.optional = optional
        self.attr = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        raise AttributeError(
            f"{type(instance).__name__}.{self.attr} is injected by the app before init(); "
            "register the component with App.register and read it from init() on"
        )

    def __repr__(self) -> str:
        opt = ", optional=True" if self.optional else ""
        return f"Inject({self.key!r}{opt})" if self.key else f"Inject({opt.lstrip(', ')})"


def Inject(key: str | None = None, *, optional: bool = False) -> Any:  # noqa: N802 - reads as a marker
    """Mark a class attribute to be filled from the service container before ``init``.

    ``key`` names the service; without it the attribute's annotation is
    used (settings models are loaded from the environment, other types are
    looked up by type). With ``optional=True`` a missing service leaves
    ``None`` instead of failing the boot.
    """
    return Injection(key, optional)


class _Plan(NamedTuple):
    attr: str
    key: str | None
    optional: bool
    annotation: Any  # _UNRESOLVED when the annotation could not be evaluated


def _hint(klass: type, attr: str) -> Any:
    """The evaluated annotation of one attribute, or ``_UNRESOLVED``.

    Evaluated one attribute at a time, so that another attribute's annotation
    that exists only under ``TYPE_CHECKING`` does not hide this one.
    """
    annotation = vars(klass).get("__annotations__", {}).get(attr, _UNRESOLVED)
    if isinstance(annotation, str):
        module = sys.modules.get(klass.__module__)
        try:
            annotation = eval(annotation, dict(vars(module)) if module else {}, dict(vars(klass)))  # noqa: S307
        except Exception:  # a name that only exists for type checkers
            return _UNRESOLVED
    return annotation


def _plan(cls: type) -> tuple[_Plan, ...]:
    plans: dict[str, _Plan] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, Injection):
                plans[attr] = _Plan(attr, value.key, value.optional, _hint(klass, attr))
            elif attr in plans:
                del plans[attr]  # a subclass replaced the marker with a plain attribute
    return tuple(plans.values())


def _settings_type(annotation: Any) -> type[BaseSettings] | None:
    for candidate in _candidates(annotation) or ():
        if isinstance(candidate, type) and issubclass(candidate, BaseSettings):
            return candidate
    return None


def _candidates(annotation: Any) -> tuple[type, ...] | None:
    """The classes a value must be an instance of, or ``None`` when that cannot be checked."""
    if annotation is _UNRESOLVED or annotation is Any or annotation is object:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _candidates(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        found: list[type] = []
        for arg in typing.get_args(annotation):
            sub = _candidates(arg)
            if sub is None:
                return None
            found.extend(sub)
        return tuple(found)
    if origin is not None:
        return (origin,) if isinstance(origin, type) else None
    if annotation is None:
        return (type(None),)
    if isinstance(annotation, type):
        if getattr(annotation, "_is_protocol", False):
            return None  # structural: even a runtime-checkable protocol's isinstance is only partial
        return (annotation,)
    return None


NEEDS_ANNOTATION = (
    "Inject() without a key needs an annotation that can be evaluated at run time "
    "(give a key, Inject('name'), or import the annotated type outside TYPE_CHECKING)"
)


def _not_a_lookup(annotation: Any) -> str:
    return f"cannot look up a service by the type {_type_name(annotation)}; give a key"


def _article(noun: str) -> str:
    """``noun`` with "a" or "an" before it, by its first letter: "an int", "a str"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


class Injector:
    """Fills a component's ``Inject`` attributes from one app's services and config."""

    def __init__(self, services: ServiceContainer, config: Config) -> None:
        self._services = services
        self._config = config
        self._plans: dict[type, tuple[_Plan, ...]] = {}
        self._models: dict[type, list[type[BaseSettings]]] = {}

    def plans(self, component: object) -> tuple[_Plan, ...]:
        cls = type(component)
        plans = self._plans.get(cls)
        if plans is None:
            plans = self._plans[cls] = _plan(cls)
        return plans

    def settings_models(self, component: object) -> list[type[BaseSettings]]:
        """The settings models a component asks for with ``Inject()``."""
        cls = type(component)
        models = self._models.get(cls)  # a property of the class, asked for every component at each serve()
        if models is None:
            models = self._models[cls] = [
                model
                for plan in self.plans(component)
                if plan.key is None and (model := _settings_type(plan.annotation)) is not None
            ]
        return list(models)

    def inject(self, component: object, name: str) -> None:
        """Inject every marked attribute; the first problem raises ``InjectionError``."""
        for plan in self.plans(component):
            value = self._resolve(plan, name)
            try:
                vars(component)[plan.attr] = value
            except TypeError:
                raise InjectionError(
                    name, plan.attr, f"{type(component).__name__} has no __dict__ (drop __slots__ to use Inject)"
                ) from None

    def inject_early(self, component: object, name: str) -> None:
        """Inject what is there before any ``init``: settings models and the services set as values.

        For ``preflight``. The rest (what components set, factories, lookups by
        type) waits for the component's group; nothing here raises.
        """
        for plan in self.plans(component):
            if plan.key is not None:
                found, value = self._services.ready(plan.key, name)
            else:
                model = _settings_type(plan.annotation)
                found, value = (model is not None, None if model is None else self._config.load(model))
            if found:
                try:
                    vars(component)[plan.attr] = value
                except TypeError:  # no __dict__: the group's injection says so
                    return

    def refresh_settings(self, component: object) -> None:
        """Give the component's ``Inject()`` settings attributes the models ``config`` holds now.

        Called before a component's ``reload()``, once a reload has replaced
        the changed models; services are left as they are (the component may
        hold on to what it registered with them).
        """
        for plan in self.plans(component):
            if plan.key is None and (model := _settings_type(plan.annotation)) is not None:
                vars(component)[plan.attr] = self._config.load(model)

    def _resolve(self, plan: _Plan, name: str) -> Any:
        if plan.key is not None:
            try:
                value = self._services.resolve(plan.key, name)
            except ServiceError as exc:
                if plan.optional:
                    return None
                raise InjectionError(name, plan.attr, str(exc)) from None
            self._check(plan, name, value)
            return value
        if plan.annotation is _UNRESOLVED:
            raise InjectionError(name, plan.attr, NEEDS_ANNOTATION)
        model = _settings_type(plan.annotation)
        if model is not None:
            return self._config.load(model)
        kinds = _candidates(plan.annotation)
        if not kinds:
            raise InjectionError(name, plan.attr, _not_a_lookup(plan.annotation))
        found: list[tuple[str, Any]] = []
        for kind in kinds:
            found.extend(self._services.find_by_type(kind, name))
        keys = list(dict.fromkeys(key for key, _ in found))
        if len(keys) == 1:
            return found[0][1]
        if not keys:
            if plan.optional:
                return None
            raise InjectionError(
                name,
                plan.attr,
                f"no service of type {_type_name(plan.annotation)} is registered; "
                "set one in an initializer of a lower priority, or give a key",
            )
        raise InjectionError(
            name,
            plan.attr,
            f"several services are of type {_type_name(plan.annotation)} "
            f"({', '.join(keys)}); name one with Inject('key')",
        )

    def _check(self, plan: _Plan, name: str, value: Any) -> None:
        kinds = _candidates(plan.annotation)
        if kinds is None:
            return
        try:
            ok = isinstance(value, kinds)
        except TypeError:  # a generic alias or a protocol isinstance cannot check
            return
        if not ok:
            raise InjectionError(
                name,
                plan.attr,
                f"service {plan.key!r} is {_article(type(value).__name__)}, "
                f"but the attribute is annotated {_type_name(plan.annotation)}",
            )


class PlannedInjection(NamedTuple):
    """One ``Inject`` attribute as ``nacelle-py check`` sees it, without resolving anything."""

    attribute: str
    key: str | None
    """The service key; ``None`` for a settings model or a lookup by type."""
    optional: bool
    shown: str
    """How the component table shows it: the key, ``settings:Model`` or ``Type (by type)``."""
    problem: str | None
    """What is wrong with the marker itself, whatever the services."""


def planned_injections(component: object) -> list[PlannedInjection]:
    """Every ``Inject`` attribute of ``component``'s class, for a static check."""
    planned = []
    for plan in _plan(type(component)):
        if plan.key is not None:
            planned.append(PlannedInjection(plan.attr, plan.key, plan.optional, plan.key, None))
        elif plan.annotation is _UNRESOLVED:
            planned.append(PlannedInjection(plan.attr, None, plan.optional, "?", NEEDS_ANNOTATION))
        elif (model := _settings_type(plan.annotation)) is not None:
            planned.append(PlannedInjection(plan.attr, None, plan.optional, f"settings:{model.__name__}", None))
        elif not _candidates(plan.annotation):
            planned.append(PlannedInjection(plan.attr, None, plan.optional, "?", _not_a_lookup(plan.annotation)))
        else:  # found among the services at boot: a type is not a key check can follow
            planned.append(
                PlannedInjection(plan.attr, None, plan.optional, f"{_type_name(plan.annotation)} (by type)", None)
            )
    return planned
