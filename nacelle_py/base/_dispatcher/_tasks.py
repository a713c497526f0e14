"""Named tasks: the registry of ``@jobs.task`` functions and what crosses as JSON.

A named task is a function registered under a name, taking one pydantic
model (or nothing) and returning something JSON can carry. Registration
checks the signature once, so that enqueue and the consumers can trust it:
``enqueue`` validates a payload against the model before anything is
written, and the consumer validates again (another replica may run older
code), dead-lettering what does not fit.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticSerializationError, to_jsonable_python

from ..._calls import is_async
from ..._errors import RegistrationError
from ..._validate import positive
from ._items import UNSET

__all__ = ["PLAIN_JSON", "TaskRegistry", "TaskSpec", "backoff_delay", "jsonable"]

PLAIN_JSON = frozenset((str, int, float, bool, type(None)))  # carried as they are


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One registered task: its function, its payload model and its retry policy."""

    name: str
    function: Callable[..., Any]
    model: type[BaseModel] | None  # None: the task takes no argument
    retries: int
    timeout: float | None
    backoff: tuple[float, float]
    process: bool
    is_async: bool
    returns: TypeAdapter[Any] | None = field(default=None)  # None: results come back as JSON
    name_json: str = field(default="")  # the name as JSON, made once for the wire

    @property
    def pool_timeout(self) -> Any:
        """The timeout the pool applies to a run: this task's own, or UNSET for the dispatcher's."""
        return UNSET if self.timeout is None else self.timeout

    def validate(self, payload: Any, where: str) -> BaseModel | None:
        """The payload as the task's model; ``TypeError`` naming the task when it does not fit."""
        model = self.model
        if model is None:
            if payload is not None:
                raise TypeError(f"{where}: task {self.name!r} takes no payload, got {type(payload).__name__}")
            return None
        if type(payload) is model:
            return payload
        if payload is None:
            raise TypeError(f"{where}: task {self.name!r} needs a {model.__name__} payload, got None")
        try:
            if isinstance(payload, BaseModel):  # another model: re-validate its fields, not its identity
                return model.model_validate(payload.model_dump())
            return model.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise TypeError(
                f"{where}: the payload of task {self.name!r} does not fit {model.__name__}: {_errors(exc)}"
            ) from exc

    def decode_data(self, data: Any) -> BaseModel | None:
        """A payload from decoded JSON data (raises ``pydantic.ValidationError`` or ``ValueError`` when poison)."""
        if self.model is None:
            if data is not None:
                raise ValueError(f"task {self.name!r} takes no payload, but the entry carries one")
            return None
        return self.model.model_validate(data)

    def result_value(self, value: Any) -> Any:
        """A result read back from JSON, as the task's return annotation when it has one."""
        return value if self.returns is None else self.returns.validate_python(value)


def _errors(exc: pydantic.ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(payload)'}: {err['msg']}" for err in exc.errors()[:5])


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (models dumped), or ``TypeError`` when JSON cannot carry it."""
    if type(value) in PLAIN_JSON:
        return value
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise TypeError(f"the task's result cannot be carried as JSON: {exc}") from None


def backoff_delay(attempt: int, backoff: tuple[float, float]) -> float:
    """The delay before retry ``attempt`` (1 for the first retry): exponential, capped, full jitter above half.

    The delay is drawn from [d/2, d] where d = min(first * 2**(attempt-1), cap),
    so that replicas retrying the same failure spread out but never retry
    sooner than half the schedule.
    """
    first, cap = backoff
    delay = min(first * 2.0 ** min(attempt - 1, 60), cap)
    return delay / 2 + random.random() * delay / 2


class TaskRegistry:
    """The named tasks of one dispatcher."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.tasks: dict[str, TaskSpec] = {}

    def get(self, name: object, where: str) -> TaskSpec:
        """The task registered as ``name``, or a ``KeyError``-free ``LookupError`` listing the known ones."""
        spec = self.tasks.get(name) if isinstance(name, str) else None
        if spec is None:
            known = ", ".join(sorted(self.tasks)) or "none registered"
            raise LookupError(
                f"{where}: no task named {name!r} on this dispatcher (known: {known}); "
                "register it with @dispatcher.task(name)"
            )
        return spec

    def add(
        self,
        name: object,
        function: object,
        *,
        retries: object,
        timeout: object,
        backoff: object,
        process: object,
        processes_available: bool,
    ) -> TaskSpec:
        """Check and register one task; every mistake is a ``RegistrationError`` naming it."""
        where = f"{self.owner}.task({name!r})"
        if not isinstance(name, str) or not name.strip() or len(name) > 200 or any(c.isspace() for c in name):
            raise RegistrationError(f"{where}: a task name is a non-empty string without spaces (at most 200)")
        if name in self.tasks:
            raise RegistrationError(f"{where}: a task named {name!r} is already registered on this dispatcher")
        if not callable(function):
            raise RegistrationError(f"{where}: decorate a function, got {function!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise RegistrationError(f"{where}: retries must be an int >= 0, got {retries!r}")
        checked_timeout = positive(where, "timeout", timeout, allow_none=True)
        first, cap = _check_backoff(where, backoff)
        if not isinstance(process, bool):
            raise RegistrationError(f"{where}: process must be True or False, got {process!r}")
        asynchronous = is_async(function)
        if process and asynchronous:
            raise RegistrationError(
                f"{where}: process=True runs plain functions in worker processes; this one is async def"
            )
        if process and not processes_available:
            raise RegistrationError(f"{where}: process=True needs Dispatcher(max_processes=N)")
        model, returns = _signature(where, function)
        spec = TaskSpec(
            name,
            function,
            model,
            retries,
            checked_timeout,
            (first, cap),
            process,
            asynchronous,
            returns,
            json.dumps(name),
        )
        self.tasks[name] = spec
        return spec


def _check_backoff(where: str, backoff: object) -> tuple[float, float]:
    if (
        not isinstance(backoff, tuple)
        or len(backoff) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in backoff)
    ):
        raise RegistrationError(f"{where}: backoff is (first_delay, max_delay) in seconds, got {backoff!r}")
    first, cap = float(backoff[0]), float(backoff[1])
    if not (0 <= first < math.inf and 0 <= cap < math.inf) or cap < first:
        raise RegistrationError(f"{where}: backoff needs 0 <= first_delay <= max_delay, both finite, got {backoff!r}")
    return first, cap


def _signature(where: str, function: Any) -> tuple[type[BaseModel] | None, TypeAdapter[Any] | None]:
    """The payload model (or None) and the return adapter (or None for ``Any``/unannotated)."""
    try:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function)
    except (TypeError, ValueError, NameError) as exc:
        raise RegistrationError(f"{where}: cannot read the function's signature: {exc}") from None
    params = [
        p
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if len(params) > 1:
        raise RegistrationError(
            f"{where}: a named task takes one pydantic model argument or none; {function.__name__} takes {len(params)}"
        )
    model: type[BaseModel] | None = None
    if params:
        annotation = hints.get(params[0].name)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise RegistrationError(
                f"{where}: annotate the argument {params[0].name!r} with a pydantic model class "
                f"(it crosses processes as JSON), got {annotation!r}"
            )
        model = annotation
    returns = hints.get("return", Any)
    adapter = None if returns in (Any, None, type(None)) else TypeAdapter(returns)
    return model, adapter
