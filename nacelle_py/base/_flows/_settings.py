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

    engine: str | None = Field(
        None, description=f"Engine that runs flows: {', '.join(ENGINES)} (overrides the code's choice; default serial)."
    )
    concurrency: int | None = Field(
        None, description="parallel and worker-based engines: atoms of one flow running at once (default: no bound)."
    )
    max_running: int | None = Field(
        None, description="FlowRunner: flows it runs at once, more wait their turn (overrides the code's; default 16)."
    )
    store: str | None = Field(
        None, description="FlowRunner: the SQLite file that keeps every flow's history (overrides the code's choice)."
    )

    @field_validator("engine", mode="before")
    @classmethod
    def _known(cls, value: object) -> str | None:
        return None if value is None else engine_name(value, "FLOWS_ENGINE")

    @field_validator("concurrency", "max_running")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value
