"""A machine's stats: its counters, each active routine, and its sub-machines' stats."""

from __future__ import annotations

from typing import Annotated, NamedTuple

from ..._metric import Metric
from ._routine import RoutineInfo

__all__ = ["MachineStats"]


class MachineStats(NamedTuple):
    """A machine's counters: routines now and ever, queued ``go`` calls, errors, and each active routine."""

    name: str
    # routines of this machine running now (its subs' are in ``subs``)
    active: Annotated[int, Metric.gauge("Routines of this machine running now (its sub-machines' not included).")]
    # routines this machine ever started
    total: Annotated[int, Metric.counter("Routines this machine started.", name="routines")]
    # go() calls queued for a slot of this machine
    waiting: Annotated[int, Metric.gauge("go() calls waiting for a free slot of this machine.")]
    max_routines: Annotated[
        int | None, Metric.gauge("The machine's limit of routines running at once (absent: no limit).")
    ]
    # routines and subscriptions that failed
    errors: Annotated[int, Metric.counter("Routines and subscription handlers of this machine that failed.")]
    # errors caught by recover()
    recovered: Annotated[int, Metric.counter("Errors of this machine's routines that recover() caught.")]
    routines: tuple[RoutineInfo, ...]
    subs: dict[str, MachineStats]
    # active subscriptions owned by this machine or its routines
    subscriptions: Annotated[int, Metric.gauge("Subscriptions owned by this machine or its routines now.")]
