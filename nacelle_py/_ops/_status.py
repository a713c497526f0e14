"""What the ops endpoint reports, read from the runner, the health registry and the components.

Plain data (dicts, lists, numbers) so that ``/debug/components`` is JSON of
it and ``/metrics`` a rendering of the same reading. Everything here runs on
the loop thread, between the runner's steps, so a reading is consistent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import Any

from .._health import Health
from .._lifecycle import Runner

__all__ = ["Sample", "Status"]

Sample = tuple[str, dict[str, str], float]
"""One number: metric name (without the ``nacelle_`` prefix), labels, value."""


class Status:
    """Readings of one serving app: readiness, each component, and every ``stats()`` it can find."""

    def __init__(
        self, runner: Runner, health: Health, machine_stats: Callable[[], Any],
        loop_blocked: Callable[[], int] = lambda: 0,
    ) -> None:
        self.runner = runner
        self.health = health
        self._machine_stats = machine_stats
        self.loop_blocked = loop_blocked  # how many times the blocked-loop detector saw the loop stuck

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Whether the app is ready for traffic (supervising, every health key healthy), and why not."""
        phase = self.runner.phase
        unhealthy = self.health.unhealthy()
        ready = phase == "running" and not unhealthy
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "phase": phase}
        if not ready:
            body["unhealthy"] = [s.key for s in unhealthy]
            body["reasons"] = {s.key: s.reason for s in unhealthy if s.reason}
        return ready, body

    def components(self) -> list[dict[str, Any]]:
        """Each component's kind, priority, state, restart policy and restarts, errors, health keys and timings."""
        keys: dict[str | None, list[dict[str, Any]]] = {}
        for s in self.health.statuses():
            keys.setdefault(s.component, []).append({"key": s.key, "healthy": s.healthy, "reason": s.reason})
        return [
            {
                "name": e.name,
                "kind": e.kind,
                "priority": e.options.priority,
                "restart": e.options.restart,
                "state": e.state,
                "restarts": e.restarts,
                "last_error": e.last_error,
                "errors": list(e.errors),
                "error_count": e.error_count,
                "health": keys.get(e.name, []),
                "timings": dict(e.timings),
            }
            for e in self.runner.entries
        ]

    def stats(self) -> Iterator[Sample]:
        """The numbers of every component with a ``stats()`` method, and of the app's machine tree."""
        for entry in self.runner.entries:
            read = getattr(entry.component, "stats", None)
            if not callable(read):
                continue
            try:
                value = read()
            except Exception:  # a component's broken stats() must not break the scrape
                continue
            yield from flatten(value, {"component": entry.name})
        yield from flatten(self._machine_stats(), {})


def flatten(value: Any, labels: dict[str, str], path: str = "") -> Iterator[Sample]:
    """Numbers of a stats NamedTuple (or a dict of them), named ``<kind>_<field>``.

    The kind is the type's name without ``Stats`` (``DispatcherStats`` ->
    ``dispatcher``). A ``name`` field becomes the label ``<kind>="name"``
    (nested names are joined with ``/``); dicts of stats recurse (pipeline
    stages, sub-machines); fields that are not numbers are left out.
    """
    if isinstance(value, dict):
        for item in value.values():
            yield from flatten(item, labels, path)
        return
    fields = getattr(value, "_asdict", None)
    if not callable(fields):
        return
    kind = type(value).__name__.removesuffix("Stats").lower() or "stats"
    data = fields()
    own = dict(labels)
    name = data.get("name")
    if isinstance(name, str):
        path = f"{path}/{name}" if path else name
        own[kind] = path
    for field, item in data.items():
        if isinstance(item, enum.Enum):
            item = item.value
        if isinstance(item, (int, float)):  # bools too: 1 or 0
            yield f"{kind}_{field}", own, float(item)
        elif isinstance(item, dict):
            yield from flatten(item, labels, path)
