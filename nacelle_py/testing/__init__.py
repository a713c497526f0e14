"""Testing apps built on nacelle_py: serve one for a block, override its services and settings.

``running(app)`` boots an app to healthy for an ``async with`` block (on
asyncio or trio, without signal handlers) and unwinds it on the way out;
``override_service`` and ``override_settings`` replace a service or a
setting for one block and reset it whatever happens; ``Trace`` records
lifecycle events in order; ``test_app`` builds an ``App`` whose logs
``structlog.testing.capture_logs()`` sees. The pytest plugin
(``nacelle_py.testing.plugin``, registered on install) adds the fixtures
``nacelle_logs``, ``nacelle_trace``, ``nacelle_override`` and
``nacelle_settings``, and the opt-in ``--nacelle-backends``.
"""

from __future__ import annotations

from ._errors import BootError, ExitError
from ._factory import test_app
from ._handle import RunningApp
from ._overrides import override_service, override_settings
from ._running import DEFAULT_TIMEOUT, running
from ._trace import Trace

__all__ = [
    "DEFAULT_TIMEOUT",
    "BootError",
    "ExitError",
    "RunningApp",
    "Trace",
    "override_service",
    "override_settings",
    "running",
    "test_app",
]
