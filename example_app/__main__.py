"""``python -m example_app``: run until SIGINT/SIGTERM (SIGHUP reloads, SIGUSR1 dumps); ``--help`` lists the settings."""

from __future__ import annotations

from .app import build_app

app = build_app()
raise SystemExit(app.boot())
