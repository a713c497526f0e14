"""The lifecycle: component states, the priority choreography, supervision, restarts and the unwind.

One module per concept, each importing only downward::

    _states    State, Phase and the one transition table
    _record    Entry (a component's record) and RunHandle (one call of run())
    _report    Phases (the app's phase, its observers) and Errors (the error record)
    _shutdown  Shutdown: the stop request, signals, forced shutdown, the scopes they shorten
    _context   Context: what every phase is handed (errors, stop request, waker, services)
    _runs      Runs: the task group that hosts the runs, one run's life
    _boot      Boot: inject, init, start and the health wait of a priority group
    _unwind    Unwind: stop by descending priority, finalize in reverse init order
    _restart   Supervisor: what a run's end means, OTP restart policies and strategies
    _reload    Reloader: SIGHUP's re-read settings and reload() calls, one at a time, while running
    _dump      dump(): SIGUSR1's log of every component's state and every task's stack
    _runner    Runner: composes the parts; its run() reads top to bottom
"""

from ._preflight import preflight_all
from ._record import Entry, entries
from ._restart import STRATEGIES, Strategy
from ._runner import Runner
from ._states import PHASES, STATES, TRANSITIONS, IllegalTransition, Phase, State

__all__ = [
    "PHASES",
    "STATES",
    "STRATEGIES",
    "TRANSITIONS",
    "Entry",
    "IllegalTransition",
    "Phase",
    "Runner",
    "State",
    "Strategy",
    "entries",
    "preflight_all",
]
