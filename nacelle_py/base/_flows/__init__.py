"""Flows: TaskFlow's tasks, patterns, reverts and retries, on the serial, parallel and worker-based engines.

The layers import downward only: states and failures, atoms and retry
controllers, patterns and their plan, a run's progress, the scheduler, and
the public functions on top. ``nacelle_py.base.flows`` re-exports them.
"""
