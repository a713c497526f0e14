"""example_app: a small application built on nacelle_py, written as a user would.

``python -m example_app`` opens a SQLite database (priority 0), then runs a
heartbeat process (priority 1) that writes a row every ``EXAMPLE_TICK``
seconds and reports healthy once the first row is in. SIGINT or SIGTERM
stops it gracefully (exit status 0); ``--help`` lists every setting.
"""

from __future__ import annotations

from .app import build_app
from .db import Database
from .heartbeat import Heartbeat
from .settings import DEFAULT_DB_PATH, DbSettings, HeartbeatSettings

__all__ = ["DEFAULT_DB_PATH", "Database", "DbSettings", "Heartbeat", "HeartbeatSettings", "build_app"]
