"""A machine's stats: its counters, each active routine, and its sub-machines' stats."""

from __future__ import annotations

from typing import NamedTuple

from ._routine import RoutineInfo

__all__ = ["MachineStats"]


class MachineStats(NamedTuple):
    """A machine's counters: routines now and ever, queued ``go`` calls, errors, and each active routine."""

    name: str
    active: int  # routines of this machine running now (its subs' are in ``subs``)
    total: int  # routines this machine ever started
    waiting: int  # go() calls queued for a slot of this machine
    max_routines: int | None
    errors: int  # routines and subscriptions that failed
    recovered: int  # errors caught by recover()
    routines: tuple[RoutineInfo, ...]
    subs: dict[str, MachineStats]
    subscriptions: int  # active subscriptions owned by this machine or its routines
