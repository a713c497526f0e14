"""The framework's own settings: logging and the app-wide lifecycle bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AppSettings", "LogSettings"]

Timeout = float | None


class LogSettings(BaseSettings):
    """nacelle_py: logging (level, encoding, fields on every line)."""

    model_config = SettingsConfigDict(env_parse_none_str="none", extra="ignore")

    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Lowest level that is logged."
    )
    log_encoding: Literal["console", "json"] = Field(
        "console", description="console: human-readable lines; json: one JSON object per line."
    )
    log_fields: dict[str, str] = Field(
        default_factory=dict, description='Fields added to every log line, as JSON: {"env": "prod"}.'
    )

    # "backend" is AppSettings' (check_fields=False): one case-folding for every word setting.
    @field_validator("log_level", "log_encoding", "backend", mode="before", check_fields=False)
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class AppSettings(LogSettings):
    """nacelle_py: logging, the default lifecycle timeouts (a component's registration overrides them), the loop detector."""

    start_timeout: Timeout = Field(
        60.0, description="Seconds a priority group may take to become healthy; none: no limit."
    )
    shutdown_timeout: Timeout = Field(
        10.0, description="Seconds run() may take to return after stop(); none: no limit."
    )
    init_timeout: Timeout = Field(None, description="Seconds init() may take; none: no limit.")
    finalize_timeout: Timeout = Field(None, description="Seconds finalize() may take; none: no limit.")
    reload_timeout: Timeout = Field(10.0, description="Seconds each reload() may take after SIGHUP; none: no limit.")
    loop_block_warn: Timeout = Field(
        0.5,
        description="Warn (with the blocking stack) when the event loop does not run for longer than this "
        "many seconds; none: no blocked-loop detector.",
    )
    backend: Literal["asyncio", "trio"] = Field(
        "asyncio",
        description="The event loop boot() runs the app on, when boot() is given none "
        "(boot(backend=...) or --backend win).",
    )
    gc_freeze: bool = Field(
        True,
        description="Under boot(): once ready, collect and freeze what start-up built (gc.freeze), so "
        "the garbage collector stops rescanning it.",
    )

    @field_validator("start_timeout", "shutdown_timeout", "init_timeout", "finalize_timeout", "reload_timeout")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and not (0 < value < float("inf")):
            raise ValueError("must be a positive number of seconds, or none for no limit")
        return value

    @field_validator("loop_block_warn")
    @classmethod
    def _threshold(cls, value: float | None) -> float | None:
        if value is not None and not (0 < value < float("inf")):
            raise ValueError("must be a positive number of seconds, or none to turn the detector off")
        return value
