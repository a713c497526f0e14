"""The example's settings: pydantic-settings models, read under the app prefix ``EXAMPLE_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_DB_PATH", "DbSettings", "HeartbeatSettings"]

DEFAULT_DB_PATH = Path(__file__).resolve().parent / "example.sqlite3"
"""Next to the package, where ``.gitignore`` ignores it (``example_app/*.sqlite3``)."""


class DbSettings(BaseSettings):
    """Where the heartbeats are stored."""

    # The model's own prefix sits under the app's: EXAMPLE_DB_PATH, then DB_PATH.
    model_config = SettingsConfigDict(env_prefix="DB_")

    path: Path = Field(DEFAULT_DB_PATH, description="SQLite database file (created if missing).")


class HeartbeatSettings(BaseSettings):
    """How often to beat, and the credential for the (imaginary) upstream monitor."""

    tick: float = Field(1.0, gt=0, description="Seconds between two heartbeat rows.")
    api_token: SecretStr = Field(
        SecretStr("dev-token-not-for-production"),
        description="Token for the upstream monitor; a secret, so logged and listed masked.",
    )
