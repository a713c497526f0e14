"""DispatcherSettings: the deployment's choice of backend and its delivery parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..._config import mask_url
from ..._errors import RegistrationError
from ..._validate import positive, positive_setting
from .._redis._settings import DEFAULT_REDIS_URL, RedisSettings, check_redis_url

__all__ = ["BACKENDS", "BackendOptions", "DispatcherSettings", "check_keywords", "check_stream", "resolve"]

BACKENDS = ("memory", "redis")


def check_stream(value: str) -> str:
    """A stream name: non-empty, printable, no spaces (it prefixes every Redis key of the dispatcher)."""
    if not isinstance(value, str) or not value or len(value) > 200 or not value.isprintable() or " " in value:
        raise ValueError("must be a non-empty name without spaces (at most 200 characters), e.g. shop:jobs")
    return value


class DispatcherSettings(BaseSettings):
    """Dispatcher: where named tasks flow (memory, or Redis Streams shared by every replica)."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHER_")

    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory (this process only) or redis (a stream every replica consumes)."
    )
    stream: str | None = Field(
        None, description="The Redis stream (and key prefix); default nacelle:<app>:<component>."
    )
    lease: float = Field(30.0, description="Seconds a delivered task stays owned without renewal (redis).")
    max_deliveries: int = Field(5, description="Deliveries after which a task is dead-lettered (redis).")
    consume: bool = Field(True, description="Run tasks (true), or only enqueue them (false: a producer-only replica).")
    key_ttl: float = Field(86400.0, description="Seconds an idempotency key keeps its first task's id.")

    @field_validator("stream")
    @classmethod
    def _stream(cls, value: str | None) -> str | None:
        return None if value is None else check_stream(value)

    @field_validator("lease", "key_ttl")
    @classmethod
    def _seconds(cls, value: float) -> float:
        positive_setting(value)
        return value

    @field_validator("max_deliveries")
    @classmethod
    def _deliveries(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be a positive integer")
        return value


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """The backend options in force: the constructor's keywords over the settings over the defaults."""

    backend: str
    redis_url: str  # it may hold a password: __repr__ masks it
    stream: str
    lease: float
    max_deliveries: int
    consume: bool
    key_ttl: float

    def __repr__(self) -> str:
        return (
            f"BackendOptions(backend={self.backend!r}, redis_url={mask_url(self.redis_url)!r}, "
            f"stream={self.stream!r}, lease={self.lease!r}, max_deliveries={self.max_deliveries!r}, "
            f"consume={self.consume!r}, key_ttl={self.key_ttl!r})"
        )


_KEYWORDS = ("backend", "redis_url", "stream", "lease", "max_deliveries", "consume", "key_ttl")


def check_keywords(values: dict[str, Any]) -> dict[str, Any]:
    """The backend keywords given (not None) to ``Dispatcher(...)``, checked; ``RegistrationError`` naming one."""
    given = {name: value for name, value in values.items() if value is not None}
    where = "Dispatcher"
    if "backend" in given and given["backend"] not in BACKENDS:
        raise RegistrationError(f"{where}: backend must be 'memory' or 'redis', got {given['backend']!r}")
    for name, check in (("redis_url", check_redis_url), ("stream", check_stream)):
        if name in given:
            try:
                given[name] = check(given[name])
            except (ValueError, AttributeError) as exc:
                shown = mask_url(given[name]) if isinstance(given[name], str) else given[name]
                raise RegistrationError(f"{where}: {name} {exc}, got {shown!r}") from None
    for name in ("lease", "key_ttl"):
        if name in given:
            given[name] = positive(where, name, given[name])
    if "max_deliveries" in given:
        given["max_deliveries"] = positive(where, "max_deliveries", given["max_deliveries"], integer=True)
    if "consume" in given and not isinstance(given["consume"], bool):
        raise RegistrationError(f"{where}: consume must be True or False, got {given['consume']!r}")
    return given


def resolve(
    given: dict[str, Any],
    settings: DispatcherSettings | None,
    redis: RedisSettings | None,
    default_stream: str,
) -> BackendOptions:
    """The options in force (see ``BackendOptions``); standalone (no settings) only keywords and defaults."""
    base = settings if settings is not None else DispatcherSettings.model_construct()
    values: dict[str, Any] = {name: getattr(base, name, None) for name in _KEYWORDS if name != "redis_url"}
    values["redis_url"] = redis.url if redis is not None else DEFAULT_REDIS_URL
    values.update(given)
    values["stream"] = values["stream"] or default_stream
    return BackendOptions(**values)
