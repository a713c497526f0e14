"""Settings: loading pydantic-settings models with the app's env prefix.

A field ``url`` of a model is read from ``<APP>_URL`` first and then from
``URL`` (go-nacelle's rule), with the model's own ``env_prefix`` kept in
between (``<APP>_DB_URL``, then ``DB_URL``). Fields with an explicit alias
are read from the alias alone, as pydantic-settings does. ``.env`` files and
a secrets directory given to the ``App`` apply too. Validation errors are
turned into the names of the env variables a user must set. ``override``
(for tests) sets env variables for one ``Config`` alone, ahead of every
source, without touching ``os.environ``.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, DotEnvSettingsSource, EnvSettingsSource, SecretsSettingsSource

from ._errors import ConfigError, SettingError

__all__ = ["Config", "MASK", "is_secret", "mask_url"]

S = TypeVar("S", bound=BaseSettings)
MASK = "**********"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)(?P<password>[^/\s]*)@")
_OWN_SOURCES = ("env_file", "secrets_dir", "json_file", "yaml_file", "toml_file", "cli_parse_args")
"""Model settings that give a model sources of its own besides the environment."""


@functools.cache
def _env_only(model: type[BaseSettings]) -> bool:
    """Whether ``model``'s own sources are just the environment, which ``Config`` reads itself."""
    customised = getattr(model.settings_customise_sources, "__func__", None)
    default = getattr(BaseSettings.settings_customise_sources, "__func__", None)
    return customised is default and not any(model.model_config.get(key) for key in _OWN_SOURCES)


def _env_stems(model: type[BaseSettings], prefix: str) -> tuple[str, ...] | None:
    """What every env variable an ``EnvSettingsSource(model, env_prefix=prefix)`` may read begins with (lower case).

    A field's variable is the prefix and its name (a nested field's continues
    after it) or, for a string alias, the alias; both are counted, which can
    only read a source that finds nothing. None (the source is always read)
    for an ``AliasChoices``/``AliasPath`` or a prefix put on aliases
    (``env_prefix_target``), whose names are not so simple.
    """
    if model.model_config.get("env_prefix_target", "variable") != "variable":
        return None
    stems = []
    for name, field in model.model_fields.items():
        for alias in (field.alias, field.validation_alias):
            if alias is None:
                continue
            if not isinstance(alias, str):
                return None
            stems.append(alias.lower())
        stems.append(f"{prefix}{name}".lower())
    return tuple(stems)


def _may_set(model: type[BaseSettings], prefix: str, environ: frozenset[str]) -> bool:
    """Whether the environment (its names, lower case) has a variable the env source under ``prefix`` would read.

    Building and calling a source costs about a quarter of a millisecond (it
    copies and scans the environment); most of an app's models have nothing
    set under most prefixes, and a source that would find nothing is skipped.
    """
    stems = _env_stems(model, prefix)
    return stems is None or any(name.startswith(stems) for name in environ)


def _validated(model: type[S], values: dict[str, Any]) -> S:
    """``model`` validated from ``values`` alone: its own sources are not read (``ValidationError``)."""
    instance = model.__new__(model)
    BaseModel.__init__(instance, **values)  # BaseSettings.__init__ would read the sources again
    return instance


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it masked: ``redis://:s3cret@h/0`` -> ``redis://:***@h/0``."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)


def is_secret(field: FieldInfo) -> bool:
    """Whether a field's value must never be shown: ``SecretStr``/``SecretBytes`` or marked ``secret``."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("secret"):
        return True
    annotation = field.annotation
    return _mentions_secret(annotation)


def _mentions_secret(annotation: Any, depth: int = 0) -> bool:
    """Whether a type is or holds a secret: nested models and containers count (a bad value echoes them)."""
    if depth > 8:  # self-referencing models
        return False
    if isinstance(annotation, type):
        if issubclass(annotation, (SecretStr, SecretBytes)):
            return True
        if issubclass(annotation, BaseModel):
            return any(
                (isinstance(f.json_schema_extra, dict) and bool(f.json_schema_extra.get("secret")))
                or _mentions_secret(f.annotation, depth + 1)
                for f in annotation.model_fields.values()
            )
    return any(_mentions_secret(arg, depth + 1) for arg in getattr(annotation, "__args__", ()) or ())


def mask_values(model: BaseModel) -> dict[str, Any]:
    """The model's values with every secret replaced by a mask, nested models included."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out[name] = mask_values(value)
        elif is_secret(field) or isinstance(value, (SecretStr, SecretBytes)):
            out[name] = MASK if value not in (None, "") else value
        elif isinstance(value, str):  # a URL's password is masked wherever the URL is shown
            out[name] = mask_url(value)
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
        fallback: bool = True,
    ) -> None:
        self.prefix = prefix
        self.env_file = env_file
        self.secrets_dir = secrets_dir
        self.fallback = fallback or not prefix  # without a prefix the plain name is the only name
        self._cache: dict[type[BaseSettings], BaseSettings] = {}
        self._lock = threading.Lock()
        self._overrides: list[dict[str, Any]] = []  # env name -> value, one dict per override(), latest last

    def env_names(self, model: type[BaseSettings], field_name: str) -> tuple[str, ...]:
        """The env variables that set a field, in the order they are looked up."""
        field = model.model_fields[field_name]
        if isinstance(field.validation_alias, str):
            return (field.validation_alias.upper(),)
        if field.alias and model.model_config.get("populate_by_name") is not True and field.alias != field_name:
            return (field.alias.upper(),)
        own = str(model.model_config.get("env_prefix") or "")
        plain = f"{own}{field_name}".upper()
        if not self.prefix:
            return (plain,)
        return (f"{self.prefix}{plain}".upper(), plain) if self.fallback else (f"{self.prefix}{plain}".upper(),)

    def loaded(self) -> Mapping[type[BaseSettings], BaseSettings]:
        """The models loaded so far."""
        return dict(self._cache)

    @contextmanager
    def override(self, values: Mapping[str, Any]) -> Iterator[None]:
        """Inside the block, read ``values`` (env variable name -> value) ahead of every other source.

        For tests (``nacelle_py.testing.override_settings``): a name is any
        name a field is read from (``EXAMPLE_TICK`` or ``TICK``, in any case),
        and it is seen by this ``Config`` alone. A string is read exactly as
        the environment's value would be (JSON for complex fields, the model's
        none-string); any other value is handed to the model as it is. Models
        already loaded that read one of the names are loaded again on their
        next ``load``, inside the block and after it.
        """
        layer = {name.upper(): value for name, value in values.items()}
        with self._lock:
            self._overrides.append(layer)
            self._forget(layer)
        try:
            yield
        finally:
            with self._lock:
                self._overrides = [kept for kept in self._overrides if kept is not layer]
                self._forget(layer)

    def _forget(self, names: Mapping[str, Any]) -> None:
        """Drop the cached models that read one of ``names`` (the lock is held)."""
        for model in list(self._cache):
            if any(name in names for field in model.model_fields for name in self.env_names(model, field)):
                del self._cache[model]

    def _overridden(self, model: type[BaseSettings]) -> tuple[dict[str, str], dict[str, Any]]:
        """The overrides that apply to ``model``: strings by the env name its own source reads, others by input key."""
        text: dict[str, str] = {}
        given: dict[str, Any] = {}
        layers = self._overrides[::-1]  # the latest first
        case_sensitive = bool(model.model_config.get("case_sensitive"))
        for field_name, field in model.model_fields.items():
            names = self.env_names(model, field_name)
            found = next(((layer[n],) for layer in layers for n in names if n in layer), None)
            if found is None:
                continue
            (value,) = found
            if isinstance(value, str):
                # The unprefixed name is the one an EnvSettingsSource with the model's own prefix reads
                # (whether or not this app reads it from the environment: env_fallback).
                plain = Config().env_names(model, field_name)[0]
                text[plain if case_sensitive else plain.lower()] = value
            else:
                key = field.validation_alias if isinstance(field.validation_alias, str) else field.alias or field_name
                given[key] = value
        return text, given

    def load(self, model: type[S]) -> S:
        """Load, validate and cache ``model`` from the environment; ``ConfigError`` lists every problem."""
        if not (isinstance(model, type) and issubclass(model, BaseSettings)):
            raise TypeError(f"Config.load takes a pydantic-settings BaseSettings subclass, got {model!r}")
        with self._lock:
            cached = self._cache.get(model)
            if cached is None:
                cached = self.build(model)
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

    def reload(self) -> list[type[BaseSettings]]:
        """Re-read every model loaded so far, all or nothing; the models whose values changed.

        What a reload (SIGHUP) does first. The environment of a running
        process cannot change from outside, but the env file and the secrets
        directory are read again. If any model is now invalid, ``ConfigError``
        lists every problem of every model and the loaded models stay as they
        were; otherwise each changed model is replaced (``load`` returns the
        new instance from then on) and an unchanged one keeps its instance.
        """
        with self._lock:
            models = list(self._cache)
        fresh: dict[type[BaseSettings], BaseSettings] = {}
        problems: list[SettingError] = []
        for model in models:
            try:
                fresh[model] = self.build(model)
            except ConfigError as exc:
                problems.extend(exc.errors)
        if problems:
            raise ConfigError(problems)
        with self._lock:
            changed = [model for model, value in fresh.items() if value != self._cache.get(model)]
            self._cache.update((model, fresh[model]) for model in changed)
        return changed

    def build(self, model: type[S]) -> S:
        """Load and validate ``model`` without caching it; ``ConfigError`` lists every problem."""
        try:
            values = self._values(model)
            if _env_only(model):
                return _validated(model, values)  # the environment was just read: not a second time
            if self.fallback:
                return model(**values)
            # The model's own sources read under the app's prefix too: no plain name gets in.
            own = str(model.model_config.get("env_prefix") or "")
            return model(_env_prefix=f"{self.prefix}{own}", **values)
        except ValidationError as exc:
            raise ConfigError(self._explain(model, exc)) from None
        except ValueError as exc:  # a source could not decode a value (bad JSON, say)
            raise ConfigError([self._undecodable(model, exc)]) from None

    def salvage(self, model: type[S]) -> S:
        """``model`` from the values that are valid, defaults for the rest; never raises for bad input.

        Used to log a configuration error the way the valid log settings ask for.
        """
        try:
            values = self._values(model)
        except ValueError:
            values = {}
        for _ in range(len(values) + 1):
            try:
                return _validated(model, values)  # no sources: only these values
            except ValidationError as exc:
                bad = {str(e["loc"][0]) for e in exc.errors() if e.get("loc")}
                values = {k: v for k, v in values.items() if k not in bad}
                if not bad:
                    break
        return model.model_construct()

    def _values(self, model: type[BaseSettings]) -> dict[str, Any]:
        """What the environment, the env file and the secrets directory say, best first.

        Overrides beat the real environment, which beats the env file, which
        beats the secrets directory; within each, the prefixed name beats the
        plain one. The model's own sources (its env_file, say) still apply
        below these.
        """
        own = str(model.model_config.get("env_prefix") or "")
        prefixes = [f"{self.prefix}{own}", own] if self.prefix and self.fallback else [f"{self.prefix}{own}"]
        text, given = self._overridden(model) if self._overrides else ({}, {})
        sources: list[Any] = []
        if text:
            overridden = EnvSettingsSource(model, env_prefix=own)
            overridden.env_vars = text  # the source reads these instead of os.environ
            sources.append(overridden)
        environ = frozenset(name.lower() for name in os.environ)
        sources += [EnvSettingsSource(model, env_prefix=p) for p in prefixes if _may_set(model, p, environ)]
        if self.env_file is not None:
            sources += [DotEnvSettingsSource(model, env_file=self.env_file, env_prefix=p) for p in prefixes]
        if self.secrets_dir is not None:
            sources += [SecretsSettingsSource(model, secrets_dir=self.secrets_dir, env_prefix=p) for p in prefixes]
        known: set[str] = set()
        for name, field in model.model_fields.items():
            known.update(k for k in (name, field.alias, field.validation_alias) if isinstance(k, str))
        values: dict[str, Any] = dict(given)
        for source in sources:
            for key, value in source().items():
                if key in known:  # a shared env file holds other models' lines too
                    values.setdefault(key, value)
        return values

    def _explain(self, model: type[BaseSettings], exc: ValidationError) -> list[SettingError]:
        problems: list[SettingError] = []
        for error in exc.errors(include_url=False):
            loc = error.get("loc") or ("?",)
            field_name = self._field_for(model, str(loc[0]))
            if field_name is None:
                problems.append(
                    SettingError(f"{self.prefix}{loc[0]}".upper(), error["msg"], model.__name__, str(loc[0]))
                )
                continue
            names = self.env_names(model, field_name)
            field = model.model_fields[field_name]
            message = error["msg"]
            if error.get("type") == "missing":
                message = "required but not set"
            elif not is_secret(field) and "input" in error:
                shown = error["input"]
                shown = mask_url(shown) if isinstance(shown, str) else shown
                message = f"{message} (got {shown!r})"
            if len(loc) > 1:
                message = f"{'.'.join(str(p) for p in loc[1:])}: {message}"
            if len(names) > 1:
                message = f"{message}; also read from {names[1]}"
            problems.append(SettingError(names[0], message, model.__name__, field_name))
        return problems

    def _undecodable(self, model: type[BaseSettings], exc: ValueError) -> SettingError:
        found = re.search(r'field "([^"]+)"', str(exc))
        field_name = self._field_for(model, found.group(1)) if found else None
        if field_name is None:
            return SettingError(f"{self.prefix}*", str(exc), model.__name__, "?")
        names = self.env_names(model, field_name)
        message = 'cannot be decoded: complex values are JSON, e.g. {"key": "value"} or [1, 2]'
        if len(names) > 1:
            message = f"{message}; also read from {names[1]}"
        return SettingError(names[0], message, model.__name__, field_name)

    @staticmethod
    def _field_for(model: type[BaseSettings], loc: str) -> str | None:
        if loc in model.model_fields:
            return loc
        for name, field in model.model_fields.items():
            if loc in (field.alias, field.validation_alias):
                return name
        return None
