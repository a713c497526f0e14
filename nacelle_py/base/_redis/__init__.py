"""What every Redis-backed built-in shares: the ``REDIS_URL`` setting, connecting, and Streams' plumbing."""

from ._settings import DEFAULT_REDIS_URL, RedisSettings, check_redis_url

__all__ = ["DEFAULT_REDIS_URL", "RedisSettings", "check_redis_url"]
