"""``Task``: one step of a flow, with what it requires, what it provides and how it is undone.

A task's requirements are the parameter names of its ``execute`` (a parameter
with a default is optional), renamed by ``rebind``; what it provides is
``provides``: one name (the whole result) or a tuple of names (the result
unpacked). ``revert`` takes, by parameter name, any of the same values plus
``result`` (what execute returned, or the ``Failure`` it raised) and
``failures`` (every execute failure of the flow so far).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

__all__ = ["Signature", "Task", "names_of", "seconds_or_none"]

Provides = str | tuple[str, ...] | None


def names_of(where: str, provides: object) -> tuple[str, ...]:
    """``provides`` as a tuple of names (TypeError naming ``where`` when it is not one)."""
    if provides is None:
        return ()
    if isinstance(provides, str):
        provides = (provides,)
    if not isinstance(provides, (tuple, list)) or not all(isinstance(n, str) and n for n in provides):
        raise TypeError(f"{where}: provides must be a name or a tuple of names, got {provides!r}")
    if len(set(provides)) != len(provides):
        raise ValueError(f"{where}: provides names a value twice: {provides!r}")
    return tuple(provides)


def seconds_or_none(where: str, name: str, value: object) -> float | None:
    """A finite number of seconds > 0, or None (TypeError/ValueError naming it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number of seconds or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: {name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


class Signature:
    """What a function takes by name: its required and optional parameters, and whether it takes ``**kwargs``."""

    def __init__(self, where: str, function: Callable[..., Any]) -> None:
        required: list[str] = []
        optional: list[str] = []
        self.rest = False
        for param in inspect.signature(function).parameters.values():
            if param.kind is param.VAR_KEYWORD:
                self.rest = True
            elif param.kind is param.VAR_POSITIONAL:
                continue
            elif param.kind is param.POSITIONAL_ONLY:
                raise TypeError(f"{where}: parameter {param.name!r} is positional-only; flows pass values by name")
            elif param.default is param.empty:
                required.append(param.name)
            else:
                optional.append(param.name)
        self.required = tuple(required)
        self.optional = tuple(optional)
        self.is_async = inspect.iscoroutinefunction(function)


class Task:
    """One step of a flow: subclass it and write ``execute`` (async, or a plain ``def`` run on a thread).

    Class attributes (each also a keyword of the constructor, which wins):
    ``provides`` (the name, or tuple of names, its result is stored under),
    ``timeout`` (seconds each execute or revert may take; past it the call is
    cancelled, or abandoned on its thread, and fails with ``TimeoutError``).
    ``name`` defaults to the class name; two atoms of one flow need distinct
    names. ``rebind={"param": "value_name"}`` reads a parameter from a value
    of another name; ``requires`` adds names that must be present without
    being parameters (passed along when execute takes ``**kwargs``).
    """

    provides: ClassVar[Provides] = None
    timeout: ClassVar[float | None] = None

    def __init__(
        self,
        name: str | None = None,
        *,
        provides: Provides = None,
        requires: tuple[str, ...] | list[str] = (),
        rebind: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        cls = type(self)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise TypeError(f"{cls.__name__}: name must be a non-empty string, got {name!r}")
        self.name: str = name or cls.__name__
        where = f"flows task {self.name!r}"
        if cls.execute is Task.execute:
            raise TypeError(f"{where}: {cls.__name__} must define execute()")
        self.provided = names_of(where, provides if provides is not None else cls.provides)
        self.time_limit = seconds_or_none(where, "timeout", timeout if timeout is not None else cls.timeout)
        self.reverts = cls.revert is not Task.revert  # False: nothing to call (the move is recorded all the same)
        self.execute_signature = Signature(f"{where}.execute", self.execute)
        self.revert_signature = Signature(f"{where}.revert", self.revert)
        binds = dict(rebind or {})
        params = set(self.execute_signature.required + self.execute_signature.optional)
        for param, value in binds.items():
            if not isinstance(param, str) or not isinstance(value, str) or not value:
                raise TypeError(f"{where}: rebind must map parameter names to value names, got {rebind!r}")
            if param not in params:
                raise ValueError(f"{where}: rebind names {param!r}, which execute() does not take")
        self.rebind = binds
        if isinstance(requires, str) or not all(isinstance(r, str) and r for r in requires):
            raise TypeError(f"{where}: requires must be a tuple of names, got {requires!r}")
        extra = tuple(requires)
        self.required = tuple(binds.get(p, p) for p in self.execute_signature.required) + extra
        self.optional = tuple(binds.get(p, p) for p in self.execute_signature.optional)

    # Plain ``def`` here, returning Any, so that a subclass may override either with an
    # ``async def`` or a plain ``def`` and type-check (an async override returns a coroutine).
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Do the step; what it returns is stored under ``provides``. A plain ``def`` runs on a thread."""
        raise NotImplementedError

    def revert(self, *args: Any, **kwargs: Any) -> Any:
        """Undo the step (default: nothing to undo). Takes by name any requirement, ``result`` and ``failures``."""

    def arguments(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``execute`` from the flow's values."""
        return self._pick(self.execute_signature, values, {})

    def revert_arguments(self, values: Mapping[str, Any], result: Any, failures: Any) -> dict[str, Any]:
        """The keyword arguments of ``revert``: values by name, plus ``result`` and ``failures``."""
        return self._pick(self.revert_signature, values, {"result": result, "failures": failures})

    def _pick(self, sig: Signature, values: Mapping[str, Any], special: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for param in sig.required + sig.optional:
            if param in special:
                out[param] = special[param]
                continue
            key = self.rebind.get(param, param)
            if key in values:
                out[param] = values[key]
            elif param in sig.required:
                # Only revert can get here (execute's requirements are checked before the flow runs):
                # its parameter is then neither a requirement of execute nor a value of the flow.
                out[param] = None
        if sig.rest:
            # A rebound value already went in under its parameter's name: not again under its own.
            bound = {self.rebind[p] for p in sig.required + sig.optional if p in self.rebind}
            for key in self.required + self.optional:
                # An optional value the flow lacks is left out: its parameter keeps its default.
                if key not in bound and (key in values or key not in self.optional):
                    out.setdefault(key, values.get(key))
            for key, value in special.items():
                out.setdefault(key, value)
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
