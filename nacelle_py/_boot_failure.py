"""Telling the hooks about a failed boot: once, after the unwind, each bounded, none able to stop the others.

A platform that supervises the process (the Lambda Runtime API's
``init/error``, a deployment system's start-up report) wants to hear why the
app never came up. The app calls these hooks when ``serve()`` ends with
errors before the app ever reached ``running``: invalid settings (before
any component was injected), an injection, a preflight, an init, a start
timeout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from ._calls import is_async
from ._errors import ComponentError

__all__ = ["BootFailureHook", "report_boot_failure"]

BootFailureHook = Callable[[Sequence[ComponentError]], Any]
"""``hook(errors)``: an ``async def`` is awaited, a plain ``def`` called on the loop thread."""


async def report_boot_failure(
    hooks: Sequence[tuple[str, BootFailureHook]],
    errors: Sequence[ComponentError],
    timeout: float | None,
    logger: Any,
) -> None:
    """Call every ``(owner, hook)`` with ``errors``, each within ``timeout`` seconds; log what goes wrong."""
    frozen = tuple(errors)
    for owner, hook in hooks:
        with anyio.move_on_after(timeout) as scope:
            try:
                if is_async(hook):
                    await hook(frozen)
                else:
                    result = hook(frozen)
                    if inspect.isawaitable(result):  # a plain callable that returned a coroutine
                        await result
            except Exception as exc:  # a hook must not keep the others from running
                logger.error("boot failure hook failed", component=owner, operation="boot_failed", exc_info=exc)
        if scope.cancelled_caught:
            logger.error("boot failure hook timed out", component=owner, operation="boot_failed", timeout=timeout)
