"""Wiring: the components, their priorities and bounds."""

from __future__ import annotations

from nacelle_py import App

from .db import Database
from .heartbeat import Heartbeat

__all__ = ["build_app"]


def build_app() -> App:
    """A fresh, unstarted example app (an ``App`` serves once, so tests build one each)."""
    app = App("example")  # env prefix EXAMPLE_
    app.register(Database(), name="db", priority=0)
    app.register(Heartbeat(), name="heartbeat", priority=1, start_timeout=5, shutdown_timeout=5)
    return app
