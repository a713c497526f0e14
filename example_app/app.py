"""Wiring: the components, their priorities and bounds."""

from __future__ import annotations

import os

from nacelle_py import App, ConfigError
from nacelle_py.base import Dispatcher, FlowRunner

from .api import ApiServer
from .archive import archive_flow
from .db import Database
from .flaky import Flaky, FlakySettings
from .heartbeat import Heartbeat
from .load import LoadPipeline
from .report import Report
from .settings import DbSettings
from .tasks import register_tasks

__all__ = ["build_app"]


def build_app() -> App:
    """A fresh, unstarted example app (an ``App`` serves once, so tests build one each)."""
    # Env prefix EXAMPLE_. The ops endpoint (/livez, /readyz, /metrics, /debug/components)
    # is on by default here; EXAMPLE_OPS_ADDR (or OPS_ADDR) moves it, =off turns it off.
    # EXAMPLE_ENV_FILE names a .env file of settings: unlike the environment, it is read
    # again on SIGHUP, so `kill -HUP` after editing it reloads (the heartbeat's EXAMPLE_TICK,
    # say). A variable set in the environment wins over the file, at boot and on reload.
    app = App("example", ops_addr="127.0.0.1:9090", env_file=os.environ.get("EXAMPLE_ENV_FILE") or None)
    app.register(Database(), name="db", priority=0)
    # Background jobs: a worker pool with named tasks, also a service so the heartbeat and
    # the API can enqueue. It starts before them and stops after them, draining what is
    # queued. EXAMPLE_DISPATCHER_BACKEND=redis moves the tasks to a Redis stream that
    # every replica shares (docs/scale-out.md); the code stays the same.
    jobs = Dispatcher(max_buffered=100, min_workers=1, max_workers=4, task_timeout=5)
    register_tasks(jobs, app.services)
    app.register(jobs, name="jobs", priority=1)
    app.services.set("jobs", jobs)
    # Flows: the archive flow (archive.py) copies old heartbeats and trims them, each write with
    # its compensating revert. The runner keeps every run's history in SQLite
    # (EXAMPLE_FLOWS_STORE overrides where), resumes what a kill -9 interrupted at the next start, and on
    # SIGTERM suspends the running flows. EXAMPLE_FLOWS_ENGINE=parallel picks another engine.
    # The history goes into the app's own database file (EXAMPLE_DB_PATH), read at init.
    runner = FlowRunner(
        [archive_flow(lambda: app.services.get("db"))], store=lambda: app.config.load(DbSettings).path, max_running=4
    )
    app.register(runner, name="flows", priority=1)
    app.services.set("flows", runner)
    app.register(Heartbeat(), name="heartbeat", priority=2, start_timeout=5, shutdown_timeout=5)
    # sample -> smooth -> store: on SIGTERM it stops sampling and drains into the database.
    app.register(LoadPipeline(), name="load", priority=2, shutdown_timeout=5)
    app.register(Report(), name="report", priority=2)  # a Worker: ticks until stopped
    # A process that crashes on demand (POST /flaky/crash, EXAMPLE_FLAKY_CRASH_EVERY), to show
    # restart policies: a failed run is restarted after a backoff (0.2s doubling up to 5s,
    # with jitter), the rest of the app running on; too many restarts stop the app, status 1.
    # Restart options are registration options, so their settings are read here, before boot.
    try:
        limits = app.config.load(FlakySettings)
    except ConfigError:
        limits = FlakySettings.model_construct()  # boot reports the bad value, naming it, before starting anything
    flaky = app.register(
        Flaky(),
        name="flaky",
        priority=2,
        restart="on_failure",
        max_restarts=limits.max_restarts,
        restart_window=limits.restart_window,
        backoff=(0.2, 5.0),
    )
    app.services.set("flaky", flaky)  # for the API's POST /flaky/crash
    # The HTTP API starts last (once everything it reads is up) and so stops first:
    # readiness goes false, the listener closes, requests in flight finish.
    app.register(ApiServer(), name="api", priority=3)
    # As an AWS Lambda function (a container image whose entry point is `python -m example_app`,
    # docs/lambda.md): the platform sets AWS_LAMBDA_RUNTIME_API, and the same app then also
    # serves invocations, once everything else is up.
    if os.environ.get("AWS_LAMBDA_RUNTIME_API"):
        from .invocations import Invocations  # needs the extra nacelle-py[lambda] (httpx)

        app.register(Invocations(), name="invocations", priority=4)
    return app
