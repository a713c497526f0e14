"""Wiring: the components, their priorities and bounds."""

from __future__ import annotations

from nacelle_py import App
from nacelle_py.base import Dispatcher

from .db import Database
from .heartbeat import Heartbeat
from .load import LoadPipeline
from .report import Report

__all__ = ["build_app"]


def build_app() -> App:
    """A fresh, unstarted example app (an ``App`` serves once, so tests build one each)."""
    app = App("example")  # env prefix EXAMPLE_
    app.register(Database(), name="db", priority=0)
    # Background jobs: a small worker pool, also a service so the heartbeat can use it.
    # It starts before the heartbeat and stops after it, draining what is queued.
    jobs = app.register(Dispatcher(max_buffered=100, min_workers=1, max_workers=4, task_timeout=5), name="jobs", priority=1)
    app.services.set("jobs", jobs)
    app.register(Heartbeat(), name="heartbeat", priority=2, start_timeout=5, shutdown_timeout=5)
    # sample -> smooth -> store: on SIGTERM it stops sampling and drains into the database.
    app.register(LoadPipeline(), name="load", priority=2, shutdown_timeout=5)
    app.register(Report(), name="report", priority=2)  # a Worker: ticks until stopped
    return app
