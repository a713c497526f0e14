"""Settings: loading pydantic-settings models with the app's env prefix.

A field ``url`` of a model is read from ``<APP>_URL`` first and then from
``URL`` (go-nacelle's rule), with the model's own ``env_prefix`` kept in
between (``<APP>_DB_URL``, then ``DB_URL``). Fields with an explicit alias
are read from the alias alone, as pydantic-settings does. ``.env`` files and
a secrets directory given to the ``App`` apply too. Validation errors are
turned into the names of the env variables a user must set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, DotEnvSettingsSource, EnvSettingsSource

from ._errors import ConfigError, SettingError

__all__ = ["Config", "MASK", "is_secret"]

S = TypeVar("S", bound=BaseSettings)
MASK = "**********"


def is_secret(field: FieldInfo) -> bool:
    """Whether a field's value must never be shown: ``SecretStr``/``SecretBytes`` or marked ``secret``."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("secret"):
        return True
    annotation = field.annotation
    return _mentions_secret(annotation)


def _mentions_secret(annotation: Any) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    if isinstance(annotation, type) and issubclass(annotation, (SecretStr, SecretBytes)):
        return True
    return any(_mentions_secret(arg) for arg in getattr(annotation, "__args__", ()) or ())


def mask_values(model: BaseModel) -> dict[str, Any]:
    """The model's values with every secret replaced by a mask, nested models included."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if is_secret(field) or isinstance(value, (SecretStr, SecretBytes)):
            out[name] = MASK if value not in (None, "") else value
        elif isinstance(value, BaseModel):
            out[name] = mask_values(value)
        else:
            out[name] = value
    return out


class Config:
    """Loads and caches settings models for one app; injected under the key ``"config"``.

    ``load(Model)`` returns the validated model (the same instance on every
    call), or raises :class:`ConfigError` naming every env variable at fault.
    """

    def __init__(
        self,
        prefix: str = "",
        *,
        env_file: str | Path | None = None,
        secrets_dir: str | Path | None = None,
    ) -> None:
        self.prefix = prefix
        self.env_file = env_file
        self.secrets_dir = secrets_dir
        self._cache: dict[type[BaseSettings], BaseSettings] = {}
        self._lock = threading.Lock()

    def env_names(self, model: type[BaseSettings], field_name: str) -> tuple[str, ...]:
        """The env variables that set a field, in the order they are looked up."""
        field = model.model_fields[field_name]
        if isinstance(field.validation_alias, str):
            return (field.validation_alias.upper(),)
        if field.alias and model.model_config.get("populate_by_name") is not True and field.alias != field_name:
            return (field.alias.upper(),)
        own = str(model.model_config.get("env_prefix") or "")
        plain = f"{own}{field_name}".upper()
        return (f"{self.prefix}{plain}".upper(), plain) if self.prefix else (plain,)

    def loaded(self) -> Mapping[type[BaseSettings], BaseSettings]:
        """The models loaded so far."""
        return dict(self._cache)

    def load(self, model: type[S]) -> S:
        """Load, validate and cache ``model`` from the environment; ``ConfigError`` lists every problem."""
        if not (isinstance(model, type) and issubclass(model, BaseSettings)):
            raise TypeError(f"Config.load takes a pydantic-settings BaseSettings subclass, got {model!r}")
        with self._lock:
            cached = self._cache.get(model)
            if cached is None:
                cached = self._build(model)
                self._cache[model] = cached
        return cached  # type: ignore[return-value]

    def load_all(self, models: Iterable[type[BaseSettings]]) -> None:
        """Load every model; one ``ConfigError`` reports the problems of all of them together."""
        problems: list[SettingError] = []
        for model in dict.fromkeys(models):
            try:
                self.load(model)
            except ConfigError as exc:
                problems.extend(exc.errors)
        if problems:
            raise ConfigError(problems)

    def _build(self, model: type[S]) -> S:
        kwargs: dict[str, Any] = {}
        if self.env_file is not None:
            kwargs["_env_file"] = self.env_file
        if self.secrets_dir is not None:
            kwargs["_secrets_dir"] = self.secrets_dir
        try:
            return model(**self._prefixed_values(model), **kwargs)
        except ValidationError as exc:
            raise ConfigError(self._explain(model, exc)) from None
        except ValueError as exc:  # a source could not decode a value (bad JSON, say)
            raise ConfigError(
                [SettingError(f"{self.prefix}*", str(exc), model.__name__, "?")]
            ) from None

    def _prefixed_values(self, model: type[BaseSettings]) -> dict[str, Any]:
        """Values found under the app prefix; they beat the model's own (unprefixed) sources."""
        if not self.prefix:
            return {}
        prefix = f"{self.prefix}{model.model_config.get('env_prefix') or ''}"
        values: dict[str, Any] = {}
        sources: list[Any] = [EnvSettingsSource(model, env_prefix=prefix)]
        if self.env_file is not None:
            sources.append(DotEnvSettingsSource(model, env_file=self.env_file, env_prefix=prefix))
        for source in sources:
            for key, value in source().items():
                values.setdefault(key, value)
        return values

    def _explain(self, model: type[BaseSettings], exc: ValidationError) -> list[SettingError]:
        problems: list[SettingError] = []
        for error in exc.errors(include_url=False):
            loc = error.get("loc") or ("?",)
            field_name = self._field_for(model, str(loc[0]))
            if field_name is None:
                problems.append(SettingError(f"{self.prefix}{loc[0]}".upper(), error["msg"], model.__name__, str(loc[0])))
                continue
            names = self.env_names(model, field_name)
            field = model.model_fields[field_name]
            message = error["msg"]
            if error.get("type") == "missing":
                message = "required but not set"
            elif not is_secret(field) and "input" in error:
                message = f"{message} (got {error['input']!r})"
            if len(loc) > 1:
                message = f"{'.'.join(str(p) for p in loc[1:])}: {message}"
            if len(names) > 1:
                message = f"{message}; also read from {names[1]}"
            problems.append(SettingError(names[0], message, model.__name__, field_name))
        return problems

    @staticmethod
    def _field_for(model: type[BaseSettings], loc: str) -> str | None:
        if loc in model.model_fields:
            return loc
        for name, field in model.model_fields.items():
            if loc in (field.alias, field.validation_alias):
                return name
        return None
