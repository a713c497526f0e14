"""The dispatcher's monitor: per-task timeouts, scale-up for queued work, and the saturation health.

One task per running dispatcher looks at every worker a few times per
timeout (a tenth of the shortest timeout or of ``saturated_after``, between
5 ms and 0.5 s) instead of a cancel scope per task, which would cost more
than a whole no-op task.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from ._items import UNSET, describe, timed_out
from ._state import DRAINING

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher

__all__ = ["monitor"]


async def monitor(pool: Dispatcher) -> None:
    """Watch ``pool`` until its run is cancelled."""
    saturated_since: float | None = None
    while True:
        tick = min(max(min(pool._min_timeout, pool.saturated_after) / 10, 0.005), 0.5)
        kick = pool._monitor_kick
        assert kick is not None
        with anyio.move_on_after(tick):
            await kick.wait()
        if kick.is_set():
            pool._monitor_kick = anyio.Event()
        now = time.monotonic()
        _time_out_workers(pool, now)
        for task in pool._pool.check_timeouts(now):
            if not timed_out(task):
                pool._log_event("warning", "task timed out in a thread", task=describe(task))
            pool._notify()
        if pool._queue and not pool._sleepers:  # work waits and nobody is idle
            for _ in range(min(len(pool._queue), pool.max_workers - len(pool._workers))):
                pool._scale_up()
        saturated = (
            bool(pool._queue) and len(pool._workers) >= pool.max_workers and not pool._sleepers
        ) or pool._pool.saturated()
        saturated_since = (saturated_since or now) if saturated else None
        health = pool._health
        if health is not None:
            unhealthy = saturated_since is not None and now - saturated_since >= pool.saturated_after
            if unhealthy == health.healthy:
                health.update(not unhealthy, "saturated: every worker busy and tasks waiting" if unhealthy else None)
        if pool._state.status == DRAINING:
            pool._notify()


def _time_out_workers(pool: Dispatcher, now: float) -> None:
    """Cancel the scope of each worker whose current task has run past its limit."""
    for worker in list(pool._workers):
        item = worker.item
        if item is None:
            continue
        if worker.seen_done != worker.done:  # another task since the last look
            worker.seen_done, worker.seen_at = worker.done, now
            continue
        limit = item[1] if type(item) is tuple and item[1] is not UNSET else pool.task_timeout
        if limit is not None and now - worker.seen_at >= limit and worker.scope is not None:
            worker.timing_out = True
            worker.scope.cancel()
