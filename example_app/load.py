"""The load pipeline: sample the machine's load average, smooth it, store it in batches.

Three stages of three kinds, as a user would mix them:

- ``sample`` (root, ``async def``): one reading every ``EXAMPLE_LOAD_EVERY`` seconds;
- ``smooth`` (inner, plain ``def``: it runs on the stage's thread): an
  exponential moving average, emitted with the raw value;
- ``store`` (leaf, ``async def``, ``batch=True``): whatever has arrived is
  written with one ``executemany`` on the loop's thread (the thread the
  heartbeat also writes from: one SQLite connection, one writer thread).

On SIGTERM the root stops and what is in flight drains into the database.
With ``EXAMPLE_PIPELINE_ENGINE=worker-based`` the stages can run in separate
replicas (``EXAMPLE_PIPELINE_STAGES``); see docs/scale-out.md.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

import anyio
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from nacelle_py import Inject
from nacelle_py.base import Pipeline, Stage

__all__ = ["LoadPipeline", "LoadSettings"]


class LoadSettings(BaseSettings):
    """How often the load pipeline samples."""

    model_config = SettingsConfigDict(env_prefix="LOAD_")

    every: float = Field(0.5, gt=0, description="Seconds between two load samples.")
    alpha: float = Field(0.3, gt=0, le=1, description="Weight of a new sample in the moving average.")
    work: float = Field(
        0.0, ge=0, description="Seconds smooth spends on each sample (to watch a backlog spread over replicas)."
    )


class LoadPipeline(Pipeline):
    """The pipeline as a component: it needs the database and its own settings."""

    db: sqlite3.Connection = Inject("db")
    load_settings: LoadSettings = Inject()

    def __init__(self) -> None:
        self.average: float | None = None
        store = Stage("store", self.store, batch=True)
        super().__init__([Stage("sample", self.sample, [Stage("smooth", self.smooth, [store])])])

    async def sample(self, emit: Any) -> None:
        while True:
            await emit((time.time(), os.getloadavg()[0]))
            await anyio.sleep(self.load_settings.every)

    def smooth(self, reading: tuple[float, float], emit: Any) -> None:
        if self.load_settings.work:
            time.sleep(self.load_settings.work)  # on the stage's thread: the loop goes on
        at, load = reading  # a list on the worker-based engine (JSON): unpacks the same
        alpha = self.load_settings.alpha
        self.average = load if self.average is None else alpha * load + (1 - alpha) * self.average
        emit((at, load, self.average))

    async def store(self, rows: list[tuple[float, float, float]]) -> None:
        with self.db:
            self.db.executemany("insert into load (at, load, average) values (?, ?, ?)", rows)
