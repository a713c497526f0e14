"""One flow run's state: every atom's state, the values, the failures, and the order things completed.

Every move goes through ``Progress``: checked against the state tables, told
to the store (when there is one) and to the listeners, in that order, so a
store never misses a move a listener saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._events import Listeners, Transition
from ._failure import Failure, Failures
from ._persist import Persistence, Saved, dumps
from ._plan import Node, Plan
from ._states import ATOM_MOVES, FLOW_MOVES, State, check

__all__ = ["Progress"]

UNSET: Any = object()


class Progress:
    """The state of one run of a plan (see the module's docstring)."""

    def __init__(
        self, plan: Plan, flow_id: str, store: Mapping[str, Any], persistence: Persistence | None, listeners: Listeners
    ) -> None:
        self.plan = plan
        self.name = plan.flow.name
        self.flow_id = flow_id
        self.persistence = persistence
        self.listeners = listeners
        self.state = State.PENDING
        self.store = dict(store)
        self.values: dict[str, Any] = dict(store)
        names = [n.name for n in plan.nodes] + [s.name for s in plan.scopes if s.retry is not None]
        self.atoms: dict[str, State] = dict.fromkeys(names, State.PENDING)
        self.results: dict[str, Any] = {}
        self.encoded: dict[str, str] = {}  # with a store: each result as JSON text, encoded once by check_result
        self.errors: dict[str, Failure] = {}  # execute failures by task: what revert() and retries see
        self.failures: list[Failure] = []  # every failure, execute and revert, in order
        self.attempts: dict[str, int] = {s.name: 1 for s in plan.scopes if s.retry is not None}
        self.done: dict[str, int] = {}  # atom -> when it completed (SUCCESS or FAILURE)
        self.seq = 0

    # The moves ---------------------------------------------------------------------------------

    def move_flow(self, new: State) -> None:
        """Move the flow to ``new`` (checked, stored, told)."""
        old = self.state
        check(FLOW_MOVES, f"flow {self.name!r}", old, new)
        self.state = new
        if self.persistence is not None:
            self.persistence.flow_moved(self.flow_id, new)
        if self.listeners.listeners:
            self.listeners.tell(Transition(self.name, self.flow_id, None, old, new))

    def move(self, atom: str, new: State, result: Any = UNSET, failure: Failure | None = None) -> None:
        """Move ``atom`` to ``new``; a SUCCESS keeps ``result``, a FAILURE ``failure`` (checked, stored, told)."""
        old = self.atoms[atom]
        check(ATOM_MOVES, f"flow {self.name!r} atom {atom!r}", old, new)
        if new is State.SUCCESS or (new is State.FAILURE and old is State.RUNNING):
            self.seq += 1
            self.done[atom] = self.seq
        if result is not UNSET:
            self.results[atom] = result
        if new is State.SUCCESS:
            self.errors.pop(atom, None)  # a later success supersedes an earlier attempt's failure
        if failure is not None:
            self.failures.append(failure)
            if failure.operation == "execute":
                self.errors[atom] = failure
            if self.persistence is not None:
                self.persistence.failed(self.flow_id, failure)
        self.atoms[atom] = new
        if self.persistence is not None:
            # The result goes with every move while it stands (a revert a crash interrupts needs it).
            kept = atom in self.encoded and atom not in self.errors and new is not State.PENDING
            saved = self.encoded[atom] if kept else None
            attempt = self.attempts.get(atom, 0)
            self.persistence.atom_moved(self.flow_id, atom, new, saved, attempt, self.done.get(atom, 0))
        if self.listeners.listeners:
            shown = self.results.get(atom) if new is State.SUCCESS else None
            self.listeners.tell(Transition(self.name, self.flow_id, atom, old, new, shown, failure))

    def check_result(self, node: Node, result: Any) -> None:
        """Refuse, as the task's failure, a result that cannot be stored or that does not unpack into ``provides``."""
        provided = node.task.provided
        if len(provided) > 1:
            try:
                count = len(result)
            except TypeError:
                count = -1
            if count != len(provided) or isinstance(result, (str, bytes, Mapping)):
                raise TypeError(
                    f"task {node.name!r} provides {provided!r}, so execute() must return a sequence of "
                    f"{len(provided)} values, got {result!r}"
                )
        if self.persistence is not None:  # encoded here once: every later move of the atom stores this text
            self.encoded[node.name] = dumps(f"the result of task {node.name!r}", result)

    def provide(self, node: Node, result: Any) -> None:
        """Put what ``node`` returned into the values, under its ``provides`` names."""
        provided = node.task.provided
        if len(provided) == 1:
            self.values[provided[0]] = result
        elif provided:
            self.values.update(zip(provided, result))

    def failures_so_far(self) -> Failures:
        """The execute failures so far, by task (a fresh read-only mapping)."""
        return Failures(self.errors)

    def completed_in(self, members: list[int]) -> list[Node]:
        """The tasks of ``members`` that completed and are not reverted yet, the last completed first."""
        nodes = self.plan.nodes
        done = [
            nodes[i] for i in members if self.atoms[nodes[i].name] in (State.SUCCESS, State.FAILURE, State.REVERTING)
        ]
        return sorted(done, key=lambda n: self.done.get(n.name, 0), reverse=True)

    def output(self) -> dict[str, Any]:
        """What ``run()`` returns: the store and every provided value."""
        return dict(self.values)

    # Back from a store ---------------------------------------------------------------------------

    def restore(self, saved: Saved) -> None:
        """Take the state a store recorded (a resume): states, results, attempts, failures, values."""
        self.state = saved.state
        self.store = dict(saved.store)
        self.values = dict(saved.store)
        self.failures = list(saved.failures)
        for failure in self.failures:
            if failure.operation == "execute":
                self.errors[failure.task] = failure
        for name, atom in saved.atoms.items():
            if name not in self.atoms:
                continue  # checked by the caller: the flow's code no longer has this atom
            self.atoms[name] = atom.state
            if atom.seq:
                self.done[name] = atom.seq
            if name in self.attempts and atom.attempt:
                self.attempts[name] = atom.attempt
            if atom.result is not None:  # its last execute succeeded: no earlier failure stands
                self.results[name] = atom.result[0]
                self.encoded[name] = dumps(f"the result of task {name!r}", atom.result[0])
                self.errors.pop(name, None)
        self.seq = max(self.done.values(), default=0)
        for node in sorted(self.plan.nodes, key=lambda n: self.done.get(n.name, 0)):
            if self.atoms[node.name] is State.SUCCESS and node.name in self.results:
                self.provide(node, self.results[node.name])
