"""The heartbeat process: one row every tick, healthy once the first one is written."""

from __future__ import annotations

import sqlite3
import time
from typing import Annotated, NamedTuple

import anyio
from structlog.typing import FilteringBoundLogger

from nacelle_py import Health, Histogram, HistogramSnapshot, Inject, Metric, Process
from nacelle_py.base import Dispatcher, Machine, Routine

from .settings import HeartbeatSettings
from .tasks import KEEP_ROWS, PruneRequest

__all__ = ["Heartbeat", "HeartbeatStats"]


class HeartbeatStats(NamedTuple):
    """On /metrics as nacelle_heartbeat_beats_total and nacelle_heartbeat_write_seconds (a histogram)."""

    beats: Annotated[int, Metric.counter("Heartbeat rows written.")]
    write: Annotated[HistogramSnapshot, Metric.histogram("Seconds one heartbeat row took to write.", unit="seconds")]


class Heartbeat(Process):
    """Writes a heartbeat row every ``EXAMPLE_TICK`` seconds until stopped; SIGHUP re-reads the tick."""

    health_keys = ("heartbeat",)  # for `nacelle-py check`'s table

    db: sqlite3.Connection = Inject("db")
    health: Health = Inject("health")
    logger: FilteringBoundLogger = Inject("logger")  # bound with this component's name
    settings: HeartbeatSettings = Inject()
    jobs: Dispatcher = Inject("jobs")
    machine: Machine = Inject("machine")  # this component's own sub-machine: its routines end with it

    async def init(self) -> None:
        self.healthy = self.health.register("heartbeat")  # unhealthy until the first row is in
        self.stopping = anyio.Event()  # created on the loop thread, where stop() sets it
        self.beats = 0
        self.writes = Histogram()  # seconds per insert; the ops endpoint reads it through stats()

    def stats(self) -> HeartbeatStats:
        """Rows written and how long each took: any component with a stats() is on /metrics."""
        return HeartbeatStats(self.beats, self.writes.snapshot())

    async def run(self) -> None:
        self.logger.info("heartbeat started", tick=self.settings.tick)
        beats = 0
        await self.machine.go(self._observe, id="beat-observer", tags=("audit",))
        while not self.stopping.is_set():
            beats += 1
            # A one-row insert is quick enough to do on the loop thread; a slow
            # query would go through anyio.to_thread.run_sync instead.
            started = time.perf_counter()
            with self.db:
                self.db.execute("insert into heartbeat (beat, at) values (?, ?)", (beats, time.time()))
            self.writes.observe(time.perf_counter() - started)
            self.beats = beats
            self.logger.info("heartbeat", beat=beats)
            await self.machine.publish("heartbeat.beat", beats)
            if beats == 1:
                self.healthy.update(True)
            if beats % 10 == 0:
                # One clean-up a minute however many replicas beat: the key makes the
                # second enqueue within the same minute a no-op (it returns the first id).
                await self.jobs.enqueue(
                    "prune_heartbeats", PruneRequest(keep=KEEP_ROWS), key=f"prune:{int(time.time() // 60)}"
                )
            # Sleep one tick, but wake at once when stop() is called. The tick is read
            # each time: a reload may have changed it.
            with anyio.move_on_after(self.settings.tick):
                await self.stopping.wait()
        self.logger.info("heartbeat stopped", beats=beats)

    async def _observe(self, routine: Routine) -> None:
        """A routine that listens to ``heartbeat.*`` and reports every tenth beat it saw."""
        seen = 0

        def on_beat(beat: int) -> None:
            nonlocal seen
            seen += 1
            if seen % 10 == 0:
                self.logger.info("beats observed", seen=seen, last=beat, routine=routine.id)

        routine.subscribe("heartbeat.*", on_beat, buffer=16, overflow="drop_oldest")
        await anyio.sleep_forever()  # cancelled, with its subscription, when the heartbeat stops

    async def stop(self) -> None:
        self.stopping.set()

    async def reload(self) -> None:
        """SIGHUP: ``self.settings`` already holds the re-read settings; the next beat uses the new tick."""
        self.logger.info("heartbeat settings reloaded", tick=self.settings.tick)
