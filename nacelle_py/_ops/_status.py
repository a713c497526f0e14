"""What the ops endpoint reports, read from the runner, the health registry and the components.

Plain data (dicts, lists, numbers) so that ``/debug/components`` is JSON of
it and ``/metrics`` a rendering of the same reading (``_export`` turns
the ``stats()`` values into numbers). Everything here runs on
the loop thread, between the runner's steps, so a reading is consistent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._health import Health
from .._lifecycle import Runner

__all__ = ["Reading", "Status"]

Reading = tuple[dict[str, str], Any]
"""One ``stats()`` value and the labels its numbers carry (``component``)."""


class Status:
    """Readings of one serving app: readiness, each component, and every ``stats()`` it can find."""

    def __init__(
        self,
        runner: Runner,
        health: Health,
        machine_stats: Callable[[], Iterable[tuple[str, Any]]],
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

    def stats(self) -> Iterator[Reading]:
        """The ``stats()`` of every component that has one, and the app's machine tree, each with its labels."""
        for entry in self.runner.entries:
            read = getattr(entry.component, "stats", None)
            if not callable(read):
                continue
            try:
                value = read()
            except Exception:  # a component's broken stats() must not break the scrape
                continue
            yield {"component": entry.name}, value
        for component, value in self._machine_stats():
            yield {"component": component}, value
