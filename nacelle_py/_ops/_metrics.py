"""``/metrics``: the Status readings in Prometheus' exposition format, through prometheus-client.

A collector of our own (not global metric objects) renders each scrape from a
fresh reading, with a registry per app: two Apps in one process do not share
metrics, and nothing is counted twice. The app's own families come first, so
that a stats type that happens to produce one of their names gets ``_2``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from .._lifecycle import PHASES, STATES
from ._export import export
from ._families import Families
from ._status import Status

__all__ = ["Metrics"]


class _Collector:
    def __init__(self, status: Status) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        families = Families()
        self._app(families)
        for labels, value in self.status.stats():
            try:
                export(families, value, labels)
            except Exception:  # an odd value (an _asdict() that raises): its numbers so far, not a failed scrape
                continue
        yield from families

    def _app(self, families: Families) -> None:
        """The runner's and the health registry's families."""
        status = self.status
        runner = status.runner
        ready, _ = status.ready()

        def add(name: str, kind: str, help: str, samples: Iterator[tuple[dict[str, str], float]]) -> None:
            families.declare(("app", name), name, kind, help)  # there even before its first sample
            for labels, value in samples:
                families.number(("app", name), name, kind, help, labels, value)

        add(
            "nacelle_app_ready",
            "gauge",
            "1 while the app supervises and every health key is healthy (what /readyz answers 200 to), else 0.",
            iter([({}, ready)]),
        )
        add(
            "nacelle_app_phase",
            "gauge",
            "The runner's phase: 1 for the current one of starting, running, stopping, stopped.",
            (({"phase": p}, p == runner.phase) for p in PHASES),
        )
        entries = runner.entries
        add(
            "nacelle_component_state",
            "gauge",
            "Each component's lifecycle state: 1 for its current state, 0 for the others.",
            (({"component": e.name, "state": s}, e.state == s) for e in entries for s in STATES),
        )
        add(
            "nacelle_component_priority",
            "gauge",
            "Each component's registered priority (lower starts first and stops last).",
            (({"component": e.name}, e.options.priority) for e in entries),
        )
        add(
            "nacelle_component_restarts",
            "counter",
            "Restarts of each component, by its own restart policy or with a sibling's.",
            (({"component": e.name}, e.restarts) for e in entries),
        )
        add(
            "nacelle_component_errors",
            "counter",
            "Errors recorded for each component (init, run, stop, finalize, timeouts), restarted ones included.",
            (({"component": e.name}, e.error_count) for e in entries),
        )
        add(
            "nacelle_component_phase_seconds",
            "gauge",
            "Seconds the latest init, run, stop and finalize of each component took.",
            (
                ({"component": e.name, "phase": k.removesuffix("_ms")}, v / 1000)
                for e in entries
                for k, v in e.timings.items()
                if k.endswith("_ms")
            ),
        )
        add(
            "nacelle_component_started_time_seconds",
            "gauge",
            "When each process's latest run started, in seconds since the Unix epoch.",
            (({"component": e.name}, e.timings["started_at"]) for e in entries if "started_at" in e.timings),
        )
        add(
            "nacelle_loop_blocked",
            "counter",
            "Times the event loop did not run for longer than LOOP_BLOCK_WARN seconds (the blocked-loop detector).",
            iter([({}, status.loop_blocked())]),
        )
        add(
            "nacelle_health_healthy",
            "gauge",
            "Each health key: 1 healthy, 0 not; component is the key's owner (empty for the app's own keys).",
            (({"key": s.key, "component": s.component or ""}, s.healthy) for s in status.health.statuses()),
        )


class Metrics:
    """One app's registry; ``render(accept)`` is one scrape: (body, content type)."""

    def __init__(self, status: Status) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(status))

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition (OpenMetrics when the scraper asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
