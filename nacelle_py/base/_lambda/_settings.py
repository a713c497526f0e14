"""LambdaSettings: the deployment's choices for a LambdaListener (``LAMBDA_*``)."""

from __future__ import annotations

import math

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..._validate import positive_setting

__all__ = ["LambdaSettings"]


class LambdaSettings(BaseSettings):
    """LambdaListener: the deadline margin and the bound of each Runtime API call."""

    model_config = SettingsConfigDict(env_prefix="LAMBDA_")

    deadline_margin: float = Field(
        0.1,
        description="Seconds before an invocation's deadline at which a handler still running is cancelled "
        "and answered with a TimeoutError (0: at the deadline itself).",
    )
    api_timeout: float = Field(
        10.0,
        description="Seconds each Runtime API call may take (connect, send, answer); the wait for the next "
        "invocation itself has no limit.",
    )

    @field_validator("deadline_margin")
    @classmethod
    def _margin(cls, value: float) -> float:
        if not (0 <= value < math.inf):
            raise ValueError("must be a number of seconds >= 0")
        return value

    @field_validator("api_timeout")
    @classmethod
    def _positive(cls, value: float) -> float | None:
        return positive_setting(value)
