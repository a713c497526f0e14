"""``Dispatcher.call``: run any callable through the pool and hand its outcome to the caller.

aiomisc's ``@threaded``, but pooled: the call takes a worker (or a pool
thread, or a worker process) like any task, so it counts against the same
limits and timeouts. The outcome belongs to the caller, so a failure is
counted by the pool (``_Reported``) but logged only by whoever catches it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_process

from ..._calls import is_async
from ._items import UNSET, from_thread
from ._stats import DispatcherError

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher

__all__ = ["Calls", "Reported"]


class Reported(Exception):
    """A call's failure, already handed to its caller: the pool counts it and does not log it."""


class _Call:
    """One call in flight: its outcome box and the event its caller waits on."""

    __slots__ = ("done", "function", "limiter", "outcome", "token")

    nacelle_job = True  # the pool reports timeouts and hand-backs to it (see _items)

    def __init__(self, function: Callable[[], Any], token: Any, limiter: anyio.CapacityLimiter | None) -> None:
        self.function = function
        self.token = token
        self.limiter = limiter
        self.done = anyio.Event()
        self.outcome: tuple[bool, Any] | None = None

    def __repr__(self) -> str:
        return f"<call {getattr(self.function, '__qualname__', self.function)!r}>"

    def settle(self, ok: bool, value: Any) -> None:
        if self.outcome is None:
            self.outcome = (ok, value)
            self.done.set()

    async def run(self) -> None:
        try:
            value = await self.function()
        except Exception as exc:
            self.settle(False, exc)
            raise Reported() from None
        except BaseException as exc:
            if anyio.current_effective_deadline() != -math.inf:  # the function's own cancellation
                self.settle(False, exc)
            raise
        self.settle(True, value)

    async def run_process(self) -> None:
        try:
            value = await anyio.to_process.run_sync(self.function, cancellable=True, limiter=self.limiter)
        except Exception as exc:
            self.settle(False, exc)
            raise Reported() from None
        self.settle(True, value)

    def run_plain(self) -> None:
        try:
            value = self.function()
        except BaseException as exc:
            from_thread(self.token, self.settle, False, exc)
            raise Reported() from None
        from_thread(self.token, self.settle, True, value)

    def timed_out(self) -> None:
        self.settle(False, TimeoutError(f"Dispatcher.call: {self!r} ran longer than its timeout"))

    def handed_back(self) -> None:
        self.settle(False, DispatcherError(f"Dispatcher.call: {self!r} did not run: the dispatcher stopped first"))


class Calls:
    """The calls of one dispatcher (see the module docstring)."""

    def __init__(self, pool: Dispatcher) -> None:
        self.pool = pool

    async def call(self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``function`` through the pool; see ``Dispatcher.call``."""
        pool = self.pool
        process = kwargs.pop("process", False)
        timeout = kwargs.pop("timeout", UNSET)
        if not callable(function):
            raise TypeError(f"Dispatcher.call: the first argument must be callable, got {function!r}")
        if not isinstance(process, bool):
            raise TypeError(f"Dispatcher.call: process must be True or False, got {process!r}")
        limiter = None
        if process:
            if pool.max_processes is None:
                raise TypeError("Dispatcher.call(process=True) needs Dispatcher(max_processes=N)")
            if is_async(function):
                raise TypeError("Dispatcher.call(process=True) runs plain functions; this one is async")
            limiter = pool._processes()
        checked = UNSET if timeout is UNSET else pool._check_task_timeout(timeout)
        bound = functools.partial(function, *args, **kwargs) if args or kwargs else function
        pending = _Call(bound, pool._token, limiter)
        runner = pending.run_process if process else pending.run if is_async(function) else pending.run_plain
        await pool._put(runner, checked)
        await pending.done.wait()
        assert pending.outcome is not None
        ok, value = pending.outcome
        if ok:
            return value
        raise value
