"""example_app: a small application built on nacelle_py, written as a user would.

``python -m example_app`` opens a SQLite database (priority 0), starts a job
dispatcher (priority 1), then runs a heartbeat process that writes a row every
``EXAMPLE_TICK`` seconds and reports healthy once the first row is in, and a
pipeline that samples the load average, smooths it and stores it in batches
(both priority 2), a flaky process that crashes on demand to show restart
policies (priority 2, ``restart="on_failure"``), and an HTTP API over the
database's rows (priority 3, ``EXAMPLE_HTTP_PORT``, default 8080). The ops endpoint answers on
127.0.0.1:9090 (``EXAMPLE_OPS_ADDR``). SIGINT or SIGTERM stops it gracefully
(exit status 0); SIGHUP re-reads the settings file named by ``EXAMPLE_ENV_FILE``
(the heartbeat picks up a new tick); SIGUSR1 logs every component's state and
every task's stack; ``--help`` lists every setting.
"""

from __future__ import annotations

from .api import ApiServer, RowsApp
from .app import build_app
from .db import Database
from .flaky import Flaky, FlakySettings
from .heartbeat import Heartbeat
from .load import LoadPipeline, LoadSettings
from .settings import DEFAULT_DB_PATH, DbSettings, HeartbeatSettings

__all__ = [
    "ApiServer",
    "DEFAULT_DB_PATH",
    "Database",
    "DbSettings",
    "Flaky",
    "FlakySettings",
    "Heartbeat",
    "HeartbeatSettings",
    "LoadPipeline",
    "LoadSettings",
    "RowsApp",
    "build_app",
]
