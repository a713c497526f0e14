"""structlog configuration for one app.

The logger is built with ``structlog.wrap_logger`` rather than
``structlog.configure`` so that two apps in one process keep their own
levels, encodings and fields. Below-level calls are no-ops (a filtering
bound logger), which keeps lifecycle logging cheap when it is turned down.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from ._settings import LogSettings

__all__ = ["make_logger", "writes"]


def make_logger(app_name: str, settings: LogSettings, stream: TextIO | None = None) -> Any:
    """A structlog logger for the app, from its settings (level, encoding, initial fields)."""
    out = stream if stream is not None else sys.stderr
    renderer: Any
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if settings.log_encoding == "json":
        processors.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        colors = bool(getattr(out, "isatty", lambda: False)())
        renderer = structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False)  # call order; sorting costs a third
    processors.append(renderer)
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    logger = structlog.wrap_logger(
        structlog.WriteLogger(out),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    return logger.bind(app=app_name, **settings.log_fields)


def writes(logger: Any, level: int) -> bool:
    """Whether ``logger`` writes lines at ``level`` (True when it cannot say, e.g. a stdlib or custom logger).

    The lifecycle asks once per serve, so that per-process lines below the
    level cost not even the building of their keyword arguments.
    """
    check = getattr(logger, "is_enabled_for", None)
    if check is None:
        return True
    try:
        return bool(check(level))
    except Exception:  # a logger of the user's own whose check fails: log as if it wrote everything
        return True
