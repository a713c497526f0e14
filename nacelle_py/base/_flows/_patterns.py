"""The patterns a flow is written in: ``linear``, ``unordered`` and ``graph``, nested as needed.

A pattern only records its atoms, its links and its retry controller;
``_plan.compile`` turns a whole flow into the graph of tasks an engine runs,
and is where every structural mistake is refused with names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Union

from ._atoms import Task
from ._retry import Retry

__all__ = ["Atom", "Flow"]

Atom = Union[Task, "Flow"]
KINDS = ("linear", "unordered", "graph")


class Flow:
    """A pattern of atoms (tasks and nested flows): build it with ``linear``, ``unordered`` or ``graph``."""

    def __init__(self, kind: str, name: str, atoms: Iterable[Atom], retry: Retry | None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"flows.{kind}: the flow's name must be a non-empty string, got {name!r}")
        self.kind = kind
        self.name = name
        where = f"flows.{kind}({name!r})"
        self.atoms: tuple[Atom, ...] = tuple(atoms)
        for atom in self.atoms:
            if not isinstance(atom, (Task, Flow)):
                hint = " (an instance, not the class: Reserve())" if isinstance(atom, type) else ""
                raise TypeError(f"{where}: {atom!r} is neither a flows.Task nor a flow{hint}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"{where}: retry must be a flows.Retry (Times, ForEach, ...), got {retry!r}")
        self.retry = retry
        self.links: list[tuple[Atom, Atom]] = []
        # compile_flow's last plan of this flow and the shape it was made from (see _plan.compile_flow).
        self._compiled: tuple[tuple[object, ...], Any] | None = None

    def link(self, before: Atom | str, after: Atom | str) -> Flow:
        """Make ``after`` wait for ``before`` (graph flows only; atoms or their names); returns the flow."""
        where = f"flows.graph({self.name!r}).link"
        if self.kind != "graph":
            raise TypeError(f"{where}: only a graph flow takes explicit links; {self.name!r} is {self.kind}")
        self.links.append((self._member(where, before), self._member(where, after)))
        return self

    def _member(self, where: str, atom: Atom | str) -> Atom:
        for member in self.atoms:
            if member is atom or (isinstance(atom, str) and member.name == atom):
                return member
        names = ", ".join(repr(m.name) for m in self.atoms)
        raise ValueError(f"{where}: {atom!r} is not an atom of this graph (its atoms: {names})")

    def tasks(self) -> list[Task]:
        """Every task of the flow and of its nested flows, in the order they were written."""
        out: list[Task] = []
        for atom in self.atoms:
            out.extend(atom.tasks() if isinstance(atom, Flow) else [atom])
        return out

    def __repr__(self) -> str:
        return f"<flows.{self.kind} {self.name!r}: {len(self.atoms)} atoms>"
