"""The metric families of one scrape: one name per origin, one sample per label set.

Two components of one stats type share a family (told apart by their
``component`` label). A name that another origin took first (the core's
``nacelle_component_state``, a user type that is also called ``Stats``
with other fields) goes to the later one with ``_2``, ``_3``, ...; a
label set that is already in the family (two stats values with one name)
is dropped, since Prometheus would reject the scrape.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping

from prometheus_client.metrics_core import Metric

from .._histogram import HistogramSnapshot
from ._names import unique

__all__ = ["Families"]

LabelSet = tuple[tuple[str, str], ...]


class Families:
    """Collects the samples of one scrape, in the order families first appear."""

    def __init__(self) -> None:
        self._by_origin: dict[Hashable, tuple[Metric, set[LabelSet]]] = {}
        self._names: set[str] = set()

    def _family(self, origin: Hashable, name: str, kind: str, help: str) -> tuple[Metric, set[LabelSet]]:
        found = self._by_origin.get(origin)
        if found is None:
            name = unique(name, self._names)
            self._names.add(name)
            found = self._by_origin[origin] = (Metric(name, help, kind), set())
        return found

    def declare(self, origin: Hashable, name: str, kind: str, help: str) -> None:
        """Make the family now, samples or not (``nacelle_component_started_time_seconds`` before a run)."""
        self._family((origin, kind), name, kind, help)

    def _fresh(self, origin: Hashable, name: str, kind: str, help: str, labels: Mapping[str, str]) -> Metric | None:
        """The family, when ``labels`` are new in it (None: a sample with these labels is there)."""
        metric, seen = self._family((origin, kind), name, kind, help)
        key = tuple(sorted(labels.items()))
        if key in seen:
            return None
        seen.add(key)
        return metric

    def number(
        self, origin: Hashable, name: str, kind: str, help: str, labels: Mapping[str, str], value: float
    ) -> None:
        """One counter or gauge sample (``name`` is the family's: a counter's sample adds ``_total``)."""
        metric = self._fresh(origin, name, kind, help, labels)
        if metric is not None:
            metric.add_sample(metric.name + ("_total" if kind == "counter" else ""), dict(labels), float(value))

    def histogram(
        self,
        origin: Hashable,
        name: str,
        help: str,
        labels: Mapping[str, str],
        snapshot: HistogramSnapshot,
        scale: float = 1.0,
    ) -> None:
        """The ``_bucket`` (one per bound and ``+Inf``), ``_count`` and ``_sum`` samples of one reading."""
        metric = self._fresh(origin, name, "histogram", help, labels)
        if metric is None:
            return
        total = 0
        for bound, total in snapshot.cumulative():
            le = "+Inf" if math.isinf(bound) else repr(float(f"{bound * scale:.12g}"))  # 0.1, not 0.10000000000000002
            metric.add_sample(f"{metric.name}_bucket", {**labels, "le": le}, float(total))
        metric.add_sample(f"{metric.name}_count", dict(labels), float(total))
        metric.add_sample(f"{metric.name}_sum", dict(labels), snapshot.sum * scale)

    def __iter__(self) -> Iterator[Metric]:
        return (metric for metric, _ in self._by_origin.values())
