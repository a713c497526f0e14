"""A dispatcher's counters (``DispatcherStats``) and its error type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from ..._histogram import HistogramSnapshot
from ..._metric import Metric
from ._state import DispatcherStatus

if TYPE_CHECKING:
    from ._pool import WorkerPool

__all__ = ["DispatcherError", "DispatcherStats", "pool_stats"]


class DispatcherError(RuntimeError):
    """A dispatcher call that cannot be honoured (``submit`` while quitting, say)."""


class DispatcherStats(NamedTuple):
    """A snapshot of a dispatcher's counters.

    ``accepted == completed + failed + timed_out + handed_back + queued + running``
    at every quiet moment: nothing accepted is lost. ``latency_p50`` .. ``p99``
    are percentiles of the recent dispatch-to-start latencies (seconds, of one
    task in 16 and every task with its own timeout); ``latency`` counts all of
    those samples since the start, as ``/metrics`` exports them.
    """

    status: Annotated[DispatcherStatus, Metric.gauge("The dispatcher's status: 1 for the current one.")]
    accepted: Annotated[int, Metric.counter("Tasks the dispatcher accepted.")]
    rejected: Annotated[
        int, Metric.counter("Tasks the dispatcher refused: its buffer was full, or it was draining or stopped.")
    ]
    queued: Annotated[int, Metric.gauge("Tasks accepted and not started yet.")]
    running: Annotated[int, Metric.gauge("Tasks running now.")]
    completed: Annotated[int, Metric.counter("Tasks that finished without an error.")]
    failed: Annotated[int, Metric.counter("Tasks that raised.")]
    timed_out: Annotated[int, Metric.counter("Tasks cut off by their timeout.")]
    handed_back: Annotated[
        int,
        Metric.counter(
            "Tasks accepted and not finished here: queued or cut off when a stop ran out of time, or given back to the stream.",
        ),
    ]
    workers: Annotated[int, Metric.gauge("Worker tasks in the pool now.")]
    threads: Annotated[int, Metric.gauge("Threads running plain (non-async) tasks now.")]
    scale_ups: Annotated[int, Metric.counter("Workers the pool added for waiting work.")]
    scale_downs: Annotated[int, Metric.counter("Idle workers the pool retired.")]
    # Exported as the latency histogram instead: percentiles do not add up across replicas.
    latency_p50: Annotated[float | None, Metric.omit()]
    latency_p90: Annotated[float | None, Metric.omit()]
    latency_p99: Annotated[float | None, Metric.omit()]
    # Named tasks (None where the backend has no such count): entries in the stream, delivered and
    # not acknowledged (whole group), not yet delivered, waiting for their time, retried, reclaimed
    # from dead consumers, dead-lettered. The memory backend counts scheduled, retried, dead_lettered.
    stream_length: Annotated[int | None, Metric.gauge("Entries in the named tasks' Redis stream.")] = None
    pending: Annotated[
        int | None, Metric.gauge("Named tasks delivered to the consumer group and not acknowledged.")
    ] = None
    lag: Annotated[int | None, Metric.gauge("Named tasks in the stream not delivered to the consumer group yet.")] = (
        None
    )
    scheduled: Annotated[
        int | None, Metric.gauge("Named tasks waiting for their time (a retry's backoff, a delay).")
    ] = None
    retried: Annotated[int | None, Metric.counter("Named task attempts that failed and were scheduled again.")] = None
    reclaimed: Annotated[
        int | None, Metric.counter("Named tasks reclaimed from consumers that stopped renewing their lease.")
    ] = None
    dead_lettered: Annotated[
        int | None, Metric.counter("Named tasks moved to the dead letters after their last attempt.")
    ] = None
    latency: Annotated[
        HistogramSnapshot | None,
        Metric.histogram(
            "Seconds from dispatch to start, of one task in 16 and of every task with its own timeout.",
            unit="seconds",
        ),
    ] = None

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
    histograms = [pool._latency.histogram, *(slot.latency for slot in threads.slots + threads.retired)]
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
        latency=HistogramSnapshot.merge(h.snapshot() for h in histograms),
    )
