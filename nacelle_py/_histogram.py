"""Histogram: observations counted into fixed buckets, and HistogramSnapshot, one reading of it.

A field of a ``stats()`` NamedTuple that holds a ``HistogramSnapshot`` is
exported on ``/metrics`` as a Prometheus histogram, which (unlike a
percentile computed in the process) adds up across components and replicas:
``histogram_quantile(0.99, sum by (le) (rate(..._bucket[5m])))``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = ["LATENCY_BUCKETS", "Histogram", "HistogramSnapshot"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) for waits that are usually well under a millisecond and sometimes a minute."""


class HistogramSnapshot(NamedTuple):
    """One reading of a :class:`Histogram`: upper bounds, the count in each bucket, and the sum.

    ``counts[i]`` counts the observations ``<= bounds[i]`` and above the
    previous bound (not cumulative); the last entry, one more than there are
    bounds, counts those above the highest bound (Prometheus' ``+Inf``).
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def observations(self) -> int:
        """How many observations there were (Prometheus' ``_count``)."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` for each bound and then ``inf``: Prometheus' buckets."""
        running, out = 0, []
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            running += n
            out.append((bound, running))
        return out

    @classmethod
    def merge(cls, snapshots: Iterable[HistogramSnapshot]) -> HistogramSnapshot:
        """One snapshot of several with the same bounds (a pool's and each of its threads')."""
        items = list(snapshots)
        if not items:
            raise ValueError("HistogramSnapshot.merge: nothing to merge")
        bounds = items[0].bounds
        if any(s.bounds != bounds for s in items):
            raise ValueError("HistogramSnapshot.merge: the snapshots have different bounds")
        counts = tuple(sum(column) for column in zip(*(s.counts for s in items)))
        return cls(bounds, counts, math.fsum(s.sum for s in items))


class Histogram:
    """Counts observations into fixed buckets, from its creation on: ``observe(x)``, ``snapshot()``.

    ``bounds`` are the buckets' upper bounds, ascending and finite (``+Inf``
    is implied). ``observe`` is a bisection and two additions, cheap enough
    for a hot path; one thread (or one event loop) should observe into a
    given histogram, and any other may take a snapshot.
    """

    __slots__ = ("_counts", "_sum", "bounds")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        checked = tuple(float(b) for b in bounds)
        if (
            not checked
            or any(not math.isfinite(b) for b in checked)
            or any(a >= b for a, b in zip(checked, checked[1:]))
        ):
            raise ValueError(f"Histogram: bounds must be finite and strictly ascending, got {tuple(bounds)!r}")
        self.bounds = checked
        self._counts = [0] * (len(checked) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a value equal to a bound falls in that bound's bucket)."""
        self._counts[bisect_left(self.bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        """The counts and the sum so far."""
        return HistogramSnapshot(self.bounds, tuple(self._counts), self._sum)

    def __repr__(self) -> str:
        return f"Histogram(count={sum(self._counts)}, sum={self._sum:g})"
