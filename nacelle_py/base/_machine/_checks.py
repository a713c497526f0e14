"""The checks of a ``go()`` call (before it takes a slot) and of a ``subscribe()`` call (before it subscribes)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Container, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..._calls import is_async
from ..._validate import positive
from ._patterns import check_pattern
from ._shared import OVERFLOWS

if TYPE_CHECKING:
    from ._middleware import Middleware, RoutineFn
    from ._routine import Routine

__all__ = ["check_id", "check_subscription", "check_tags", "prepare", "seconds"]


def prepare(fn: Any, middlewares: Sequence[Middleware], cache: dict[Any, bool], owner: str) -> tuple[Any, bool]:
    """What the routine's task calls, wrapped in ``middlewares``, and whether it takes the routine.

    Whether ``fn`` takes the routine is read from its signature once and kept
    in ``cache`` (the root's: shared by the tree); ``owner`` names the machine
    in the errors.
    """
    try:
        takes = cache.get(fn)
    except TypeError:  # an unhashable callable: checked every time
        takes = None
    if takes is None:
        if not callable(fn):
            raise TypeError(f"Machine {owner!r}.go: fn must be an async callable, got {fn!r}")
        if not is_async(fn):
            raise TypeError(
                f"Machine {owner!r}.go: {_label(fn)} is not an async function; declare it 'async def' "
                "(a blocking function belongs in anyio.to_thread.run_sync inside a routine)"
            )
        takes = _takes_one(fn)
        if len(cache) > 1024:
            cache.clear()
        try:
            cache[fn] = takes
        except TypeError:  # unhashable callable: not cached
            pass
    if not middlewares:
        return fn, takes
    if isinstance(middlewares, (str, bytes)) or not isinstance(middlewares, Sequence):
        raise TypeError(f"Machine {owner!r}.go: middlewares must be a sequence, got {middlewares!r}")
    call: RoutineFn = fn if takes else _no_arg(fn)
    for middleware in reversed(middlewares):
        if not callable(middleware):
            raise TypeError(f"Machine {owner!r}.go: middleware {middleware!r} is not callable")
        call = middleware(call)
    return call, True


def seconds(timeout: float | None, owner: str) -> float:
    """The timeout in seconds (inf: none), checked now; it counts from the routine's start, not the call."""
    if timeout is None:
        return math.inf
    checked: float = positive(f"Machine {owner!r}.go", "timeout", timeout)
    return checked


def check_tags(tags: Iterable[str], owner: str) -> tuple[str, ...]:
    """The tags as a tuple of strings (one string is one tag)."""
    if not tags:
        return ()
    if isinstance(tags, str):
        return (tags,)
    out = tuple(tags)
    for tag in out:
        if not isinstance(tag, str):
            raise TypeError(f"Machine {owner!r}.go: tags are strings, got {tag!r}")
    return out


def check_id(id: object, running: Container[str], owner: str) -> None:
    """A routine's id is a non-empty string, unique among the routines its machine runs now."""
    if not isinstance(id, str) or not id:
        raise ValueError(f"Machine {owner!r}.go: id must be a non-empty string, got {id!r}")
    if id in running:
        raise ValueError(f"Machine {owner!r}.go: a routine with id {id!r} is already running; ids are unique")


def check_subscription(owner: str, pattern: str, handler: Any, overflow: str, buffer: int | None, default: int) -> int:
    """The buffer a ``subscribe()`` call gets (``default`` when None), once its arguments are checked."""
    check_pattern(pattern)
    if not callable(handler):
        raise TypeError(f"Machine {owner!r}.subscribe: handler must be callable, got {handler!r}")
    if overflow not in OVERFLOWS:
        raise ValueError(
            f"Machine {owner!r}.subscribe: overflow must be one of {', '.join(OVERFLOWS)}, got {overflow!r}"
        )
    if buffer is None:
        return default
    cap: int = positive(f"Machine {owner!r}.subscribe", "buffer", buffer, integer=True)
    return cap


def _label(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _takes_one(fn: Any) -> bool:
    """Whether ``fn`` wants the routine as its argument (one required positional parameter)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind()
        return False
    except TypeError:
        pass
    try:
        signature.bind(None)
    except TypeError:
        raise TypeError(f"go: {_label(fn)}{signature} must take no argument or one (the Routine)") from None
    return True


def _no_arg(fn: Callable[[], Awaitable[Any]]) -> RoutineFn:
    async def call(routine: Routine) -> Any:
        return await fn()

    return call
