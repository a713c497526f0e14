"""nacelle_py: an application supervisor with dependency injection.

Register initializers and processes with priorities on an :class:`App` and
call ``app.boot()``: settings are loaded and validated, services injected,
components initialised priority by priority, processes run until healthy and
supervised, and everything unwinds in reverse on a signal or a failure.
"""

from __future__ import annotations

from ._app import App
from ._components import DEFAULT, Initializer, Options, Process
from ._config import Config
from ._errors import (
    ComponentError,
    ComponentTimeoutError,
    ConfigError,
    InjectionError,
    NacelleError,
    RegistrationError,
    ServiceError,
    SettingError,
    UnavailableError,
)
from ._extras import MissingExtraError
from ._health import Health, HealthComponent, HealthStatus
from ._histogram import Histogram, HistogramSnapshot
from ._inject import Inject
from ._metric import Metric
from ._services import PerComponent, ServiceContainer
from ._settings import AppSettings

__all__ = [
    "DEFAULT",
    "App",
    "AppSettings",
    "ComponentError",
    "ComponentTimeoutError",
    "Config",
    "ConfigError",
    "Health",
    "HealthComponent",
    "HealthStatus",
    "Histogram",
    "HistogramSnapshot",
    "Inject",
    "InjectionError",
    "Initializer",
    "Metric",
    "MissingExtraError",
    "NacelleError",
    "Options",
    "PerComponent",
    "Process",
    "RegistrationError",
    "ServiceContainer",
    "ServiceError",
    "SettingError",
    "UnavailableError",
]

__version__ = "0.1.0"
