"""``nacelle-py config``: every setting, its env variable, type, default, and the value it has now."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic_settings import BaseSettings

from .._app import App
from .._config import MASK, is_secret, mask_url, mask_values
from .._describe import default_text, type_name
from .._errors import ConfigError

__all__ = ["SettingRow", "settings_rows"]


@dataclass(frozen=True)
class SettingRow:
    """One setting as ``config`` lists it; secrets are masked in ``default`` and ``value``."""

    env: str
    also: tuple[str, ...]
    """Other names read for it, in order (the unprefixed fallback)."""
    model: str
    field: str
    used_by: tuple[str, ...]
    type: str
    default: str
    required: bool
    secret: bool
    set_by: str | None
    """The env variable that set it now; ``None``: not in the environment (default, env file or secrets)."""
    value: Any
    error: str | None
    """Why the current value is invalid, if it is."""

    def as_json(self) -> dict[str, Any]:
        """The row as plain data, ``value`` made JSON-friendly."""
        row = asdict(self)
        row["value"] = _plain(self.value)
        return row


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value)


def _environment() -> dict[str, str]:
    """The environment by upper-case name (names are matched case-insensitively, as the settings do)."""
    return {key.upper(): value for key, value in os.environ.items()}


def _set_by(names: tuple[str, ...], environment: Mapping[str, str]) -> str | None:
    return next((name for name in names if name.upper() in environment), None)


def _raw(name: str | None, secret: bool, environment: Mapping[str, str]) -> Any:
    if name is None:
        return None
    return MASK if secret else mask_url(environment[name.upper()])


def _model_rows(
    app: App, model: type[BaseSettings], users: list[str], environment: Mapping[str, str]
) -> list[SettingRow]:
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    try:
        values = mask_values(app.config.build(model))
    except ConfigError as exc:
        errors = {e.field: e.message for e in exc.errors}
    rows = []
    for name, field in model.model_fields.items():
        names = app.config.env_names(model, name)
        secret = is_secret(field)
        set_by = _set_by(names, environment)
        rows.append(
            SettingRow(
                env=names[0],
                also=names[1:],
                model=model.__name__,
                field=name,
                used_by=tuple(users),
                type=type_name(field.annotation),
                default=default_text(field).removeprefix("default: "),
                required=field.is_required(),
                secret=secret,
                set_by=set_by,
                value=values[name] if name in values else _raw(set_by, secret, environment),
                error=errors.get(name),
            )
        )
    return rows


def settings_rows(app: App) -> list[SettingRow]:
    """Every setting the app reads, model by model (the framework's first), with its current value."""
    rows: list[SettingRow] = []
    environment = _environment()  # read once for every row
    for model, users in app.settings_models().items():
        rows.extend(_model_rows(app, model, users, environment))
    return rows
