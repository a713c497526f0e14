"""Machine settings: the root machine's limit and the default subscription buffer."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MachineSettings"]


class MachineSettings(BaseSettings):
    """Machine: read for the app's root machine (``MACHINE_`` with the app's prefix)."""

    model_config = SettingsConfigDict(env_prefix="MACHINE_")

    max_routines: int | None = Field(
        None, description="Routines the whole app may run at once ('none': no limit); go() waits for a slot."
    )
    buffer: int = Field(1024, description="Default buffer of a subscription (messages waiting for its handler).")

    @field_validator("max_routines", mode="before")
    @classmethod
    def _none(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("none", ""):
            return None
        return value

    @field_validator("max_routines", "buffer")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be a positive integer")
        return value
