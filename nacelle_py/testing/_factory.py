"""``test_app``: an ``App`` made for tests (no signal handling, logs that ``capture_logs`` sees)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from .._app import App

__all__ = ["test_app"]


def test_app(
    name: str = "test",
    *,
    env_file: str | Path | None = None,
    secrets_dir: str | Path | None = None,
    **kwargs: Any,
) -> App:
    """An ``App`` for tests: no signal handling, logs through ``structlog.get_logger()``.

    So ``structlog.testing.capture_logs()`` (the ``nacelle_logs`` fixture)
    sees every line. Other keyword arguments go to ``App``.
    """
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("logger", structlog.get_logger())
    return App(name, env_file=env_file, secrets_dir=secrets_dir, **kwargs)


test_app.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite the name
