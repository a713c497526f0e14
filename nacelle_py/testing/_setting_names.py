"""Which setting a keyword of ``override_settings`` names: an env variable, or a field name.

An env variable name (any case, with or without the app's prefix) sets what
the environment would: every field read from that name, in every model that
reads it. A field name is accepted when exactly one known model has it, and
stands for that field's (prefixed) env variable. Anything else is an error
that lists the close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pydantic_settings import BaseSettings

from .._app import App
from .._errors import ConfigError, SettingError
from ._access import settings_models

__all__ = ["Target", "resolve"]


class Target(NamedTuple):
    """One field an override reaches, and the keyword that named it."""

    model: type[BaseSettings]
    field: str
    keyword: str


def resolve(
    app: App, extra: Iterable[type[BaseSettings]], values: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Target]]:
    """(env name -> value, the fields reached); ``ConfigError`` for unknown, ambiguous or repeated keywords."""
    config = app.config
    models = _known(app, extra)
    by_env: dict[str, list[tuple[type[BaseSettings], str]]] = {}
    by_field: dict[str, list[tuple[type[BaseSettings], str]]] = {}
    for model in models:
        for field in model.model_fields:
            for name in config.env_names(model, field):
                by_env.setdefault(name.upper(), []).append((model, field))
            by_field.setdefault(field.upper(), []).append((model, field))
    names: dict[str, Any] = {}
    targets: list[Target] = []
    reached: dict[tuple[type[BaseSettings], str], str] = {}
    problems: list[SettingError] = []
    for keyword, value in values.items():
        key = keyword.upper()
        if key in by_env:
            env, pairs = key, by_env[key]
        elif len(by_field.get(key, ())) == 1:
            pairs = by_field[key]
            env = config.env_names(*pairs[0])[0]
        else:
            problems.append(_unknown(keyword, by_field.get(key, []), [*by_env, *by_field], config.env_names))
            continue
        for model, field in pairs:
            if (model, field) in reached:
                problems.append(
                    SettingError(
                        env,
                        f"set twice, as {reached[model, field]}= and {keyword}=; give it once",
                        model.__name__,
                        field,
                    )
                )
                break
            reached[model, field] = keyword
        else:
            names[env] = value
            targets.extend(Target(model, field, keyword) for model, field in pairs)
    if problems:
        error = ConfigError(problems)
        error.add_note(
            "override_settings() names a setting by its env variable (with or without the app's prefix, any case) "
            "or by a field name that only one settings model has"
        )
        raise error
    return names, targets


def _known(app: App, extra: Iterable[type[BaseSettings]]) -> list[type[BaseSettings]]:
    """The models ``--help`` lists, those already loaded, and ``extra``."""
    extra = list(extra)
    for model in extra:
        if not (isinstance(model, type) and issubclass(model, BaseSettings)):
            raise TypeError(
                f"override_settings(app, *models, **values): models are pydantic-settings classes, got {model!r}"
            )
    return list(dict.fromkeys([*settings_models(app), *app.config.loaded(), *extra]))


def _unknown(
    keyword: str, fields: list[tuple[type[BaseSettings], str]], candidates: list[str], env_names: Any
) -> SettingError:
    if fields:  # a field name several models have
        options = ", ".join(sorted({f"{env_names(model, field)[0]} ({model.__name__})" for model, field in fields}))
        return SettingError(
            keyword,
            f"several settings models have a field {keyword!r}: name one by its env variable: {options}",
            "override_settings",
            keyword,
        )
    close = difflib.get_close_matches(keyword.upper(), list(dict.fromkeys(candidates)), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return SettingError(
        keyword,
        f"no setting of this app is read from it{hint} (a model a component loads itself with "
        "config.load() is known once passed: override_settings(app, Model, ...))",
        "override_settings",
        keyword,
    )
