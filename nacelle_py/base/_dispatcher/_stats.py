"""A dispatcher's counters (``DispatcherStats``) and its error type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from ._state import DispatcherStatus

if TYPE_CHECKING:
    from ._pool import WorkerPool

__all__ = ["DispatcherError", "DispatcherStats", "pool_stats"]


class DispatcherError(RuntimeError):
    """A dispatcher call that cannot be honoured (``submit`` while quitting, say)."""


class DispatcherStats(NamedTuple):
    """A snapshot of a dispatcher's counters.

    ``accepted == completed + failed + timed_out + handed_back + queued + running``
    at every quiet moment: nothing accepted is lost.
    """

    status: DispatcherStatus
    accepted: int
    rejected: int
    queued: int
    running: int
    completed: int
    failed: int
    timed_out: int
    handed_back: int
    workers: int
    threads: int
    scale_ups: int
    scale_downs: int
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    # Named tasks (None where the backend has no such count): entries in the stream, delivered and
    # not acknowledged (whole group), not yet delivered, waiting for their time, retried, reclaimed
    # from dead consumers, dead-lettered. The memory backend counts scheduled, retried, dead_lettered.
    stream_length: int | None = None
    pending: int | None = None
    lag: int | None = None
    scheduled: int | None = None
    retried: int | None = None
    reclaimed: int | None = None
    dead_lettered: int | None = None

    @property
    def succeeded(self) -> int:
        """Tasks that completed without an error (the same as ``completed``)."""
        return self.completed

    @property
    def queue_depth(self) -> int:
        """Tasks accepted and not started (the same as ``queued``)."""
        return self.queued

    def __getitem__(self, key: Any) -> Any:
        """Fields by name too: ``stats()["completed"]``."""
        if isinstance(key, str):
            try:
                return getattr(self, key)
            except AttributeError:
                raise KeyError(key) from None
        return tuple.__getitem__(self, key)


def pool_stats(pool: WorkerPool) -> DispatcherStats:
    """A pool's counters, its size and the recent dispatch-to-start latencies.

    Workers and threads count their own finished tasks (no shared counter on
    the hot path); this adds them up.
    """
    threads = pool._pool
    failed, timed_out = pool._failed, pool._timed_out
    completed = pool._retired_done + sum(w.done for w in pool._workers) - pool._failed
    for slot in threads.slots + threads.retired:
        completed += slot.completed
        failed += slot.failed
    p50, p90, p99 = pool._latency.percentiles(0.5, 0.9, 0.99, extra=list(threads.latencies))
    return DispatcherStats(
        status=pool._state.status,
        accepted=pool._accepted,
        rejected=pool._rejected,
        queued=len(pool._queue) + threads.queued(),
        running=pool._running() + threads.running(),
        completed=completed,
        failed=failed,
        timed_out=timed_out + threads.timed_out,
        handed_back=pool._handed_back,
        workers=len(pool._workers),
        threads=len(threads.slots),
        scale_ups=pool._scale_ups,
        scale_downs=pool._scale_downs,
        latency_p50=p50,
        latency_p90=p90,
        latency_p99=p99,
    )
