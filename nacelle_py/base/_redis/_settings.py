"""``REDIS_URL``: the one setting every Redis user of an app shares."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_REDIS_URL", "RedisSettings", "check_redis_url"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def check_redis_url(value: str) -> str:
    """``value`` if it is a redis://, rediss:// or unix:// URL, else ``ValueError`` saying what is expected."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a Redis URL such as redis://127.0.0.1:6379/0")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix:// (e.g. redis://127.0.0.1:6379/0)")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("names no host (e.g. redis://127.0.0.1:6379/0)")
    try:
        parts.port  # noqa: B018 - a port out of range or not a number raises here
    except ValueError:
        raise ValueError("has an invalid port (e.g. redis://127.0.0.1:6379/0)") from None
    return value.strip()


class RedisSettings(BaseSettings):
    """Redis: the server every Redis-backed component of the app uses (a password in it is masked)."""

    model_config = SettingsConfigDict(env_prefix="REDIS_")

    url: str = Field(DEFAULT_REDIS_URL, description="The Redis server, e.g. redis://:password@host:6379/0.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_redis_url(value)
