"""Running one task's execute or revert here: awaited on the loop, or a plain ``def`` on a thread.

The per-task ``timeout`` bounds both: past it an async call is cancelled and
a thread is abandoned (it cannot be stopped; it finishes on its own, its
result ignored), and the call fails with ``TimeoutError``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from ._atoms import Signature
from ._plan import Node

__all__ = ["Executor", "LocalExecutor", "call"]


class Executor(Protocol):
    """Where an engine's atoms run: here (serial, parallel) or in the workers (worker-based)."""

    async def execute(self, node: Node, kwargs: dict[str, Any]) -> Any:
        """Run ``node``'s execute with ``kwargs``; its result, or its error raised."""

    async def revert(self, node: Node, kwargs: dict[str, Any]) -> None:
        """Run ``node``'s revert with ``kwargs``; its error raised."""


async def call(
    function: Callable[..., Any], signature: Signature, kwargs: dict[str, Any], limit: float | None, label: str
) -> Any:
    """``function(**kwargs)``: awaited when async, else on a worker thread; bounded by ``limit`` seconds."""
    if limit is None:
        if signature.is_async:
            return await function(**kwargs)
        return await anyio.to_thread.run_sync(functools.partial(function, **kwargs))
    with anyio.move_on_after(limit) as scope:
        if signature.is_async:
            return await function(**kwargs)
        return await anyio.to_thread.run_sync(functools.partial(function, **kwargs), abandon_on_cancel=True)
    if scope.cancelled_caught:
        raise TimeoutError(f"{label} took longer than its timeout of {limit:g} s and was cancelled")
    raise AssertionError("unreachable")  # pragma: no cover - the body returns unless cancelled


class LocalExecutor:
    """Atoms run in this process (the serial and parallel engines)."""

    async def execute(self, node: Node, kwargs: dict[str, Any]) -> Any:
        """Run ``node``'s execute here."""
        task = node.task
        return await call(task.execute, task.execute_signature, kwargs, task.time_limit, f"{node.name}.execute")

    async def revert(self, node: Node, kwargs: dict[str, Any]) -> None:
        """Run ``node``'s revert here."""
        task = node.task
        await call(task.revert, task.revert_signature, kwargs, task.time_limit, f"{node.name}.revert")
