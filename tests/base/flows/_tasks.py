"""Tasks and listeners the flows tests share: each records what it did in a list the test reads.

They keep to what every engine can carry: JSON data in and out, and side
effects in lists of the test (an engine's workers run in the test's process).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel

from nacelle_py.base import flows

ALWAYS = -1
"""``Step(fails=ALWAYS)``: every execute fails."""


class Step(flows.Task):
    """Records ``execute NAME`` and ``revert NAME <result>`` in ``trace``; returns ``"NAME-result"``.

    ``fails``: how many of its first executes raise ``ValueError`` (ALWAYS:
    every one); ``revert_fails``: its revert raises ``RuntimeError``. Its
    requirements are ``requires=`` (execute takes ``**values``), recorded too
    when ``show`` names them.
    """

    def __init__(
        self,
        name: str,
        trace: list[str],
        *,
        fails: int = 0,
        revert_fails: bool = False,
        show: tuple[str, ...] = (),
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        self.trace = trace
        self.fails = fails
        self.revert_fails = revert_fails
        self.show = show

    def runs(self) -> int:
        """How many times execute ran (read from the trace, where every engine writes)."""
        mine = f"execute {self.name}"
        return sum(1 for t in self.trace if t == mine or t.startswith(mine + " "))

    async def execute(self, **values: Any) -> str:
        """Record the run, yield to the loop, then fail or return the result."""
        shown = "".join(f" {k}={values.get(k)!r}" for k in self.show)
        self.trace.append(f"execute {self.name}{shown}")
        await anyio.lowlevel.checkpoint()
        runs = self.runs()
        if self.fails == ALWAYS or runs <= self.fails:
            raise ValueError(f"{self.name} broke on run {runs}")
        return f"{self.name}-result"

    async def revert(self, result: Any, failures: flows.Failures, **values: Any) -> None:
        """Record the revert and what execute left (``Failure ValueError`` for a failed one)."""
        shown = f"Failure {result.type}" if isinstance(result, flows.Failure) else str(result)
        self.trace.append(f"revert {self.name} {shown}")
        await anyio.lowlevel.checkpoint()
        if self.revert_fails:
            raise RuntimeError(f"{self.name} cannot be undone")


class Moves:
    """A listener that keeps every transition, with views per atom (``None`` for the flow)."""

    def __init__(self) -> None:
        self.seen: list[flows.Transition] = []

    def __call__(self, event: flows.Transition) -> None:
        self.seen.append(event)

    def of(self, atom: str | None) -> list[str]:
        """The states ``atom`` went through, its first ``old`` state first."""
        moves = [t for t in self.seen if t.atom == atom]
        return [str(moves[0].old)] + [str(t.new) for t in moves] if moves else []

    def completed(self) -> list[str]:
        """The tasks in the order their execute ended (SUCCESS or FAILURE from RUNNING)."""
        return [
            t.atom
            for t in self.seen
            if t.atom is not None and t.old is flows.RUNNING and t.new in (flows.SUCCESS, flows.FAILURE)
        ]
