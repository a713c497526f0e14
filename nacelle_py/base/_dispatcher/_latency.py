"""Dispatch-to-start latency: a fixed ring of recent samples and their percentiles, and a histogram of all."""

from __future__ import annotations

from ..._histogram import Histogram

__all__ = ["LatencyRing"]


class LatencyRing:
    """The last ``size`` latency samples (seconds); ``percentile`` reads them; ``histogram`` counts them all.

    Writing is a list store, an add and a histogram's bisection, cheap enough
    for the sampled tasks on the hot path; reading sorts a copy, which
    ``stats()`` does rarely. The percentiles are the recent ones ``stats()``
    reports; the histogram, cumulative since the start, is what ``/metrics``
    exports (it adds up across replicas, percentiles do not).
    """

    __slots__ = ("_count", "_samples", "_size", "histogram")

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._samples: list[float] = [0.0] * size
        self._count = 0
        self.histogram = Histogram()

    def add(self, seconds: float) -> None:
        """Record one sample."""
        self._samples[self._count % self._size] = seconds
        self._count += 1
        self.histogram.observe(seconds)

    def percentiles(self, *quantiles: float, extra: list[float] | None = None) -> tuple[float | None, ...]:
        """The given quantiles (0..1) of the recent samples (and ``extra`` ones), ``None`` when there are none."""
        ordered = sorted(self._samples[: min(self._count, self._size)] + (extra or []))
        n = len(ordered)
        if n == 0:
            return tuple(None for _ in quantiles)
        return tuple(ordered[min(n - 1, int(q * n))] for q in quantiles)
