"""``/metrics``: the Status readings in Prometheus' exposition format, through prometheus-client.

A collector of our own (not global metric objects) renders each scrape from a
fresh reading, with a registry per app: two Apps in one process do not share
metrics, and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from .._lifecycle import PHASES, STATES
from ._status import Status

__all__ = ["Metrics"]


class _Collector:
    def __init__(self, status: Status) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status
        runner = status.runner
        ready, _ = status.ready()
        yield _gauge("nacelle_app_ready", "1 when the app is supervising and every health key is healthy.",
                     [({}, ready)])
        yield _gauge("nacelle_app_phase", "The runner's phase (1 for the current one).",
                     [({"phase": p}, p == runner.phase) for p in PHASES])
        entries = runner.entries
        yield _gauge("nacelle_component_state", "Each component's lifecycle state (1 for the current one).",
                     [({"component": e.name, "state": s}, e.state == s) for e in entries for s in STATES])
        yield _gauge("nacelle_component_priority", "Each component's registered priority.",
                     [({"component": e.name}, e.options.priority) for e in entries])
        yield _counter("nacelle_component_restarts", "Restarts of each component (by its restart policy, or with a sibling's).",
                       [({"component": e.name}, e.restarts) for e in entries])
        yield _counter("nacelle_component_errors", "Errors recorded for each component.",
                       [({"component": e.name}, e.error_count) for e in entries])
        yield _gauge("nacelle_component_phase_seconds", "How long init, run, stop and finalize took.",
                     [({"component": e.name, "phase": k.removesuffix("_ms")}, v / 1000)
                      for e in entries for k, v in e.timings.items() if k.endswith("_ms")])
        yield _gauge("nacelle_component_started_time_seconds", "When each process's run started (Unix time).",
                     [({"component": e.name}, e.timings["started_at"]) for e in entries if "started_at" in e.timings])
        yield _counter("nacelle_loop_blocked", "Times the event loop did not run for longer than LOOP_BLOCK_WARN.",
                       [({}, status.loop_blocked())])
        yield _gauge("nacelle_health_healthy", "Each health key: 1 healthy, 0 not.",
                     [({"key": s.key, "component": s.component or ""}, s.healthy) for s in status.health.statuses()])
        families: dict[str, Metric] = {}
        for name, labels, value in status.stats():
            family = families.get(name)
            if family is None:
                family = families[name] = Metric(f"nacelle_{name}", f"stats(): {name.replace('_', ' ', 1)}.", "gauge")
            family.add_sample(f"nacelle_{name}", labels, value)
        yield from families.values()


def _gauge(name: str, doc: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
    metric = Metric(name, doc, "gauge")
    for labels, value in samples:
        metric.add_sample(name, labels, float(value))
    return metric


def _counter(name: str, doc: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
    metric = Metric(name, doc, "counter")
    for labels, value in samples:
        metric.add_sample(f"{name}_total", labels, float(value))
    return metric


class Metrics:
    """One app's registry; ``render(accept)`` is one scrape: (body, content type)."""

    def __init__(self, status: Status) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(status))

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition (OpenMetrics when the scraper asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
