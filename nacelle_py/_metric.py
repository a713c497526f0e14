"""Metric: how one field of a ``stats()`` NamedTuple is exported on ``/metrics``.

It goes in the field's annotation, so the description sits next to the
field and costs nothing when ``stats()`` is called from Python::

    class OrdersStats(NamedTuple):
        placed: Annotated[int, Metric.counter("Orders placed since the start.")]
        open: Annotated[int, Metric.gauge("Orders placed and not yet shipped.")]
        wait: Annotated[float, Metric.gauge("Milliseconds the oldest order waits.", unit="seconds", scale=0.001)]

A field without one is exported as a gauge named after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["Metric", "MetricKind"]

MetricKind = Literal["counter", "gauge", "histogram", "omit"]
"""``counter`` only grows (reset by a restart), ``gauge`` goes up and down, ``histogram`` is a
``HistogramSnapshot`` field, ``omit`` keeps the field off ``/metrics``."""


@dataclass(frozen=True)
class Metric:
    """The Prometheus type, HELP text, unit and name of one stats field; build it with a class method.

    ``unit`` (``"seconds"``, ``"bytes"``) is appended to the name unless the
    name already ends with it; ``scale`` multiplies the value on the way out
    (``0.001`` exports a field kept in milliseconds as seconds); ``name``
    replaces the field's name in the metric's (it is sanitised the same way).
    """

    kind: MetricKind
    help: str = ""
    unit: str | None = None
    scale: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("counter", "gauge", "histogram", "omit"):
            raise ValueError(f"Metric: kind must be counter, gauge, histogram or omit, got {self.kind!r}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"Metric: scale must be a positive finite number, got {self.scale!r}")

    @classmethod
    def counter(cls, help: str, *, unit: str | None = None, scale: float = 1.0, name: str | None = None) -> Metric:
        """A count that only grows (a restart may reset it): exported with ``_total``, read with ``rate()``."""
        return cls("counter", help, unit, scale, name)

    @classmethod
    def gauge(cls, help: str, *, unit: str | None = None, scale: float = 1.0, name: str | None = None) -> Metric:
        """A value that goes up and down (a queue's depth, a duration); also the default for a field."""
        return cls("gauge", help, unit, scale, name)

    @classmethod
    def histogram(cls, help: str, *, unit: str | None = None, scale: float = 1.0, name: str | None = None) -> Metric:
        """A ``HistogramSnapshot`` field: ``_bucket``, ``_sum`` and ``_count`` series (``scale`` applies to the bounds and the sum)."""
        return cls("histogram", help, unit, scale, name)

    @classmethod
    def omit(cls) -> Metric:
        """Keep the field off ``/metrics`` (it stays in ``stats()``)."""
        return cls("omit")
