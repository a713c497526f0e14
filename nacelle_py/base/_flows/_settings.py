"""Flows: the deployment's choices (``FLOWS_*``), and the check every engine name goes through."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ENGINES", "FlowsSettings", "engine_name"]

ENGINES = ("serial", "parallel", "worker-based")


def engine_name(value: object, where: str = "flows") -> str:
    """``value`` as a known engine name (case and ``_``/``-`` forgiven); ValueError listing them otherwise."""
    if isinstance(value, str):
        name = value.strip().lower().replace("_", "-")
        if name in ENGINES:
            return name
    raise ValueError(f"{where}: unknown engine {value!r}; use one of: {', '.join(ENGINES)}")


class FlowsSettings(BaseSettings):
    """Flows: which engine runs them, how many atoms and flows at once, and where their history is kept."""

    model_config = SettingsConfigDict(env_prefix="FLOWS_")

    engine: str = Field("serial", description=f"Engine that runs flows: {', '.join(ENGINES)}.")
    concurrency: int | None = Field(
        None, description="parallel and worker-based engines: atoms of one flow running at once (default: no bound)."
    )
    max_running: int = Field(16, description="FlowRunner: flows it runs at once (more wait their turn).")
    store: str | None = Field(
        None, description="FlowRunner: the SQLite file that keeps every flow's history (default: kept in memory)."
    )

    @field_validator("engine", mode="before")
    @classmethod
    def _known(cls, value: object) -> str:
        return engine_name(value, "FLOWS_ENGINE")

    @field_validator("concurrency", "max_running")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value
