"""Calling a lifecycle method: ``async def`` is awaited, plain ``def`` runs in a worker thread.

The worker is a daemon thread of our own rather than anyio's thread pool:
anyio's asyncio workers are not daemons, so a blocked ``def run`` would keep
the interpreter alive at exit and defeat the forced shutdown of a second
signal. Cancelling the wait abandons the thread; it finishes on its own, and
an error it raises after that is logged once (a warning naming the component
and the operation) rather than lost.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable
from typing import Any

from ._waker import Waker

__all__ = ["call"]


def is_async(method: Callable[..., Any]) -> bool:
    """Whether calling ``method`` returns a coroutine: a fast path for plain (bound) functions."""
    code = getattr(getattr(method, "__func__", method), "__code__", None)
    if code is not None:
        return bool(code.co_flags & inspect.CO_COROUTINE)
    if inspect.iscoroutinefunction(method):  # partials, ...
        return True
    call = getattr(type(method), "__call__", None)  # noqa: B004 - its __call__, not whether it has one
    return call is not None and not isinstance(method, type) and inspect.iscoroutinefunction(call)


def _escaped(label: str, exc: BaseException) -> RuntimeError:
    """A component may not end the process itself: its SystemExit becomes an ordinary failure."""
    return RuntimeError(f"{label} raised {type(exc).__name__}({exc}); return or raise an error instead")


async def call(method: Callable[[], Any], waker: Waker, label: str, logger: Any = None) -> None:
    """Run ``method`` to completion on the right side of the loop; re-raise what it raised.

    A ``SystemExit`` or ``KeyboardInterrupt`` from the component becomes a
    ``RuntimeError``: the runner, not a component, decides when the process ends.
    ``label`` is ``"<component>.<operation>"``; ``logger`` gets the warning
    about an abandoned plain ``def`` that raised later.
    """
    try:
        if is_async(method):
            await method()
        else:
            result = await _in_thread(method, waker, label, logger)
            if inspect.isawaitable(result):  # a plain def that returned a coroutine
                await result
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _escaped(label, exc) from exc


def _report_late(logger: Any, label: str, exc: BaseException) -> None:
    """An abandoned thread's error: nobody waits for it any more, so it is logged, once."""
    if logger is None or not isinstance(exc, Exception):
        return
    component, _, operation = label.rpartition(".")
    logger.warning(
        "an abandoned plain def raised after the runner stopped waiting for it",
        component=component,
        operation=operation,
        error=f"{type(exc).__name__}: {exc}",
    )


async def _in_thread(method: Callable[[], Any], waker: Waker, label: str, logger: Any) -> Any:
    outcome: list[Any] = []
    abandoned = False
    lock = threading.Lock()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            result = (True, context.run(method))
        except BaseException as exc:  # handed to the loop and re-raised there
            result = (False, exc)
        with lock:
            outcome.append(result)
            late = abandoned
        if late and not result[0]:
            _report_late(logger, label, result[1])
        waker.notify()

    threading.Thread(target=target, name=f"nacelle {label}", daemon=True).start()
    try:
        while not outcome:
            await waker.changed()
    except BaseException:  # cancelled: whoever ends later reports its own error
        with lock:
            abandoned = True
            finished = outcome[0] if outcome else None
        if finished is not None and not finished[0]:
            _report_late(logger, label, finished[1])
        raise
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
