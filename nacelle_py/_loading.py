"""Loading an app's settings: every model validated before any component starts, and re-read on reload."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_settings import BaseSettings

from ._config import Config, mask_values
from ._errors import ConfigError, SettingError
from ._logging import writes
from ._machines import MachineService
from ._ops import OpsSettings, SystemdSettings
from ._settings import AppSettings, LogSettings

__all__ = ["Loaded", "framework_models", "load", "log_loaded", "reread"]


def framework_models() -> dict[type[BaseSettings], list[str]]:
    """The framework's own settings models, with who reads them (for ``--help`` and ``config``)."""
    return {
        AppSettings: ["nacelle_py"],
        OpsSettings: ["nacelle_py"],
        SystemdSettings: ["nacelle_py"],
        MachineService.settings_model(): ["machine"],
    }


@dataclass
class Loaded:
    """What ``load`` found: the app's settings (defaults where invalid) and every problem."""

    settings: AppSettings
    log_settings: LogSettings
    """The log settings to report with: the valid ones among them, even when AppSettings is not."""
    machine: Any = None
    problems: list[SettingError] = field(default_factory=list)


def load(config: Config, models: Iterable[type[BaseSettings]]) -> Loaded:
    """Load the framework's models and ``models`` (the components'; the framework's among them are skipped);
    every problem of every model is kept, once."""
    problems: list[SettingError] = []
    try:
        settings = config.load(AppSettings)
        loaded = Loaded(settings, settings)
    except ConfigError as exc:
        problems.extend(exc.errors)
        loaded = Loaded(AppSettings.model_construct(), config.salvage(LogSettings))
    try:
        loaded.machine = config.load(MachineService.settings_model())
    except ConfigError as exc:
        problems.extend(exc.errors)
    for model in (OpsSettings, SystemdSettings):
        try:
            config.load(model)
        except ConfigError as exc:
            problems.extend(exc.errors)
    own = framework_models()
    try:
        config.load_all(model for model in models if model not in own)  # each problem once
    except ConfigError as exc:
        problems.extend(exc.errors)
    loaded.problems = problems
    return loaded


def log_loaded(config: Config, logger: Any) -> None:
    """One ``config loaded`` line per model, secrets masked (nothing to mask below info level)."""
    if not writes(logger, logging.INFO):
        return
    for model, instance in config.loaded().items():
        logger.info("config loaded", settings=model.__name__, values=mask_values(instance))


def reread(config: Config, logger: Any) -> list[str]:
    """A reload's first step: re-read and validate every loaded settings model; the names of those changed.

    Raises ``ConfigError`` if any is invalid. Each model that changed is
    logged (``config reloaded``, secrets masked). The framework's own
    settings are validated too, but the running app keeps the ones it
    started with: a change to them is logged as taking effect at the next start.
    """
    own: Mapping[type[BaseSettings], Any] = framework_models()
    changed = config.reload()
    for model in changed:
        logger.info("config reloaded", settings=model.__name__, values=mask_values(config.load(model)))
        if model in own:
            logger.warning("framework settings changed; they take effect at the next start", settings=model.__name__)
    return [model.__name__ for model in changed]
