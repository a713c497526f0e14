"""What the test kit needs of an ``App`` beyond its public API, in one place.

The kit is part of nacelle_py and reads a few of the App's internals: whether
it has started, its runner (phase, component states, a forced shutdown), the
settings models it reads, and the switch that keeps it off the signals.
Keeping every such read here means a change inside ``App`` touches one
small module of the kit.
"""

from __future__ import annotations

from typing import Any

from .._app import App
from .._lifecycle import State

__all__ = ["check_app", "force_stop", "phase", "quiet_signals", "settings_models", "started", "states", "still_going"]

ENDED = frozenset({State.REGISTERED, State.STOPPED, State.FINALIZED, State.FAILED})
"""States in which nothing of a component is going on (during an unwind)."""


def check_app(app: object, caller: str) -> App:
    """``app`` if it is an ``App``; ``TypeError`` naming ``caller`` otherwise."""
    if not isinstance(app, App):
        raise TypeError(f"{caller} takes a nacelle_py.App (built the way your app builds it), got {app!r}")
    return app


def started(app: App) -> bool:
    """Whether ``serve()`` has begun (an App serves once)."""
    return app._state != "new"


def quiet_signals(app: App) -> None:
    """Keep the app off SIGINT/SIGTERM: the test process's handlers are not the app's to take."""
    app._handle_signals = False


def phase(app: App) -> str:
    """``"new"``, then the runner's phase (``starting``, ``running``, ``stopping``, ``stopped``)."""
    runner = app._runner
    if runner is not None:
        return str(runner.phase)
    return {"new": "new", "serving": "starting"}.get(app._state, "stopped")


def states(app: App) -> dict[str, str]:
    """Every registered component's lifecycle state by name (``registered`` before serving)."""
    runner = app._runner
    if runner is None:
        return {options.name: str(State.REGISTERED) for _, options in app.registrations}
    return {entry.name: str(entry.state) for entry in runner.entries}


def still_going(app: App) -> list[str]:
    """``name (state)`` of every component that has not ended, in registration order."""
    runner = app._runner
    if runner is None:
        return []
    return [f"{entry.name} ({entry.state})" for entry in runner.entries if entry.state not in ENDED]


def force_stop(app: App, reason: str) -> None:
    """Force the shutdown as a second signal would (runs cancelled, finalizers on a short budget)."""
    runner = app._runner
    if runner is not None:
        runner.force_stop(reason)


def settings_models(app: App) -> dict[Any, list[str]]:
    """Every settings model the app reads (what ``--help`` lists), with the components that read it."""
    return app.settings_models()
