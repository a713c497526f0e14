"""A flow compiled into what an engine runs: its tasks as nodes of one graph, and its retry scopes.

``compile_flow`` walks the patterns once: a linear flow orders each atom's
last tasks before the next atom's first tasks; an unordered flow orders
nothing; a graph orders its atoms by the values they require and provide,
and by its explicit links. Then every requirement is checked against the
tasks ordered before it: a value nothing provides (and the store lacks), a
value two unordered atoms provide, a cycle, a sibling that would race for
a value, and two atoms of one name are refused with the names involved.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from ._atoms import Task
from ._patterns import Flow
from ._retry import Retry

__all__ = ["FlowError", "Node", "Plan", "Scope", "compile_flow"]


class FlowError(ValueError):
    """A flow that cannot run as written; the message names the flow, the atoms and what to change."""


@dataclass(eq=False)
class Scope:
    """A subflow with a retry controller (or the whole flow): what a failure inside it reverts first."""

    name: str  # the atom name of its controller ("<subflow>.retry") or the flow's name for the root
    flow: Flow
    retry: Retry | None
    parent: Scope | None
    members: list[int] = field(default_factory=list)  # node indices of every task inside, nested ones too

    def chain(self) -> list[Scope]:
        """This scope and those around it, innermost first."""
        out: list[Scope] = []
        scope: Scope | None = self
        while scope is not None:
            out.append(scope)
            scope = scope.parent
        return out


@dataclass(eq=False)
class Node:
    """One task in the graph: who it waits for, who waits for it, its innermost retry scope."""

    index: int
    task: Task
    scope: Scope
    preds: set[int] = field(default_factory=set)
    succs: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        """The task's name (unique within the flow)."""
        return self.task.name


@dataclass(eq=False)
class Plan:
    """The compiled flow: nodes in the order written, scopes, and the values only the store can give."""

    flow: Flow
    nodes: list[Node]
    scopes: list[Scope]  # the root first
    external: dict[str, list[str]]  # value name -> the tasks that need it from the store
    by_name: dict[str, Node] = field(default_factory=dict)

    def check_store(self, keys: Collection[str]) -> None:
        """Refuse to run when the store lacks a value a task needs and no task provides before it."""
        missing = {name: tasks for name, tasks in self.external.items() if name not in keys}
        if missing:
            parts = [f"{name!r} (needed by {', '.join(tasks)})" for name, tasks in sorted(missing.items())]
            raise FlowError(
                f"flow {self.flow.name!r}: missing requirements {', '.join(parts)}: put them in store= "
                "or add a task that provides them earlier in the flow"
            )


class _Builder:
    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.nodes: list[Node] = []
        self.root = Scope(flow.name, flow, None, None)
        self.scopes = [self.root]
        self.names: dict[str, str] = {}  # atom name -> what it is, to report duplicates

    def claim(self, name: str, what: str) -> None:
        if name in self.names:
            raise FlowError(
                f"flow {self.flow.name!r}: two atoms are named {name!r} ({self.names[name]} and {what}); "
                "give one a name= of its own"
            )
        self.names[name] = what

    def build(self, atom: Task | Flow, scope: Scope) -> tuple[list[int], list[int]]:
        """Add ``atom``'s tasks; the indices of its first tasks (sources) and last tasks (sinks)."""
        if isinstance(atom, Task):
            self.claim(atom.name, f"task {type(atom).__name__}")
            node = Node(len(self.nodes), atom, scope)
            self.nodes.append(node)
            for s in scope.chain():
                s.members.append(node.index)
            return [node.index], [node.index]
        if atom.retry is not None:
            retry_name = atom.retry.name or f"{atom.name}.retry"
            self.claim(retry_name, f"the retry controller of {atom.name!r}")
            scope = Scope(retry_name, atom, atom.retry, scope)
            self.scopes.append(scope)
        parts: list[tuple[list[int], list[int]]] = []
        groups: list[list[int]] = []  # each child's tasks: added one after another, so a range
        for child in atom.atoms:
            start = len(self.nodes)
            parts.append(self.build(child, scope))
            groups.append(list(range(start, len(self.nodes))))
        if atom.kind == "linear":
            for (_, sinks), (sources, _) in zip(parts, parts[1:]):
                self.order(sinks, sources)
            if not parts:
                return [], []
            return parts[0][0], parts[-1][1]
        if atom.kind == "unordered":
            self.no_sibling_needs(atom, groups)
            return [i for p in parts for i in p[0]], [i for p in parts for i in p[1]]
        return self.graph(atom, parts, groups)

    def order(self, before: list[int], after: list[int]) -> None:
        for b in before:
            for a in after:
                self.nodes[b].succs.add(a)
                self.nodes[a].preds.add(b)

    def provided(self, indices: list[int]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for i in indices:
            for name in self.nodes[i].task.provided:
                out.setdefault(name, []).append(self.nodes[i].name)
        return out

    def needs(self, indices: list[int]) -> set[str]:
        """What the tasks ``indices`` require that none of them provides."""
        inside = self.provided(indices)
        return {r for i in indices for r in self.nodes[i].task.required if r not in inside}

    def no_sibling_needs(self, flow: Flow, groups: list[list[int]]) -> None:
        # What each sibling provides, computed once: a pairwise look at every sibling made
        # compiling an unordered flow of n tasks cost n*n (a third of a 100-task flow's run).
        provides = [set(self.provided(g)) for g in groups]
        for i, group in enumerate(groups):
            needs = self.needs(group)
            if not needs:
                continue
            for j, made in enumerate(provides):
                clash = sorted(needs & made) if i != j else []
                if clash:
                    raise FlowError(
                        f"unordered flow {flow.name!r}: {flow.atoms[i].name!r} requires {clash[0]!r}, which its "
                        f"sibling {flow.atoms[j].name!r} provides, but siblings run concurrently; "
                        "use a linear or graph flow to order them"
                    )

    def graph(
        self, flow: Flow, parts: list[tuple[list[int], list[int]]], groups: list[list[int]]
    ) -> tuple[list[int], list[int]]:
        provides = [self.provided(g) for g in groups]
        edges: set[tuple[int, int]] = set()
        for j, group in enumerate(groups):
            for need in sorted(self.needs(group)):
                makers = [i for i in range(len(groups)) if i != j and need in provides[i]]
                if len(makers) > 1:
                    who = " and ".join(repr(flow.atoms[i].name) for i in makers)
                    raise FlowError(
                        f"graph flow {flow.name!r}: {need!r}, required by {flow.atoms[j].name!r}, is provided by "
                        f"both {who}; rename one's provides (or rebind the requirement)"
                    )
                edges.update((i, j) for i in makers)
        index = {id(atom): k for k, atom in enumerate(flow.atoms)}
        edges.update((index[id(b)], index[id(a)]) for b, a in flow.links)
        cycle = _cycle(len(groups), edges)
        if cycle:
            path = " -> ".join(repr(flow.atoms[i].name) for i in cycle)
            raise FlowError(f"graph flow {flow.name!r} has a cycle: {path}; remove a link or a requirement")
        for b, a in edges:
            self.order(parts[b][1], parts[a][0])
        has_in = {a for _, a in edges}
        has_out = {b for b, _ in edges}
        sources = [i for k, p in enumerate(parts) if k not in has_in for i in p[0]]
        sinks = [i for k, p in enumerate(parts) if k not in has_out for i in p[1]]
        return sources, sinks


def _cycle(count: int, edges: set[tuple[int, int]]) -> list[int]:
    """One cycle of the graph (its vertices, the first repeated at the end), or [] when there is none."""
    succs: dict[int, list[int]] = {}
    for b, a in sorted(edges):
        succs.setdefault(b, []).append(a)
    color = [0] * count  # 0 unseen, 1 on the path, 2 done
    path: list[int] = []

    def visit(v: int) -> list[int]:
        color[v] = 1
        path.append(v)
        for w in succs.get(v, []):
            if color[w] == 1:
                return path[path.index(w) :] + [w]
            if color[w] == 0:
                found = visit(w)
                if found:
                    return found
        path.pop()
        color[v] = 2
        return []

    for v in range(count):
        if color[v] == 0:
            found = visit(v)
            if found:
                return found
    return []


def _ancestors(nodes: list[Node]) -> list[int]:
    """For each node, a bit set (an int) of every node ordered before it."""
    order = _topological(nodes)
    anc = [0] * len(nodes)
    for i in order:
        for p in nodes[i].preds:
            anc[i] |= anc[p] | (1 << p)
    return anc


def _topological(nodes: list[Node]) -> list[int]:
    waiting = [len(n.preds) for n in nodes]
    ready = [n.index for n in nodes if not n.preds]
    out: list[int] = []
    while ready:
        i = ready.pop()
        out.append(i)
        for s in nodes[i].succs:
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.append(s)
    return out


def _shape(flow: Flow, out: list[object]) -> list[object]:
    """Everything of ``flow`` and of its nested atoms that its plan is made from, in a list that compares."""
    retry = flow.retry
    out += (flow, flow.name, flow.atoms, tuple(flow.links), retry)
    if retry is not None:
        out += (retry.name, retry.provided)
    for atom in flow.atoms:
        if isinstance(atom, Flow):
            _shape(atom, out)
        else:
            out += (atom.name, atom.provided, atom.required, atom.optional)
    return out


def compile_flow(flow: Flow, store_keys: Collection[str] | None = None) -> Plan:
    """The plan of ``flow``; ``FlowError`` for a flow that cannot run (and, given ``store_keys``, a missing value).

    A plan is read-only once made, so it is kept on the flow and shared by
    every run while the flow's shape is unchanged (a ``link()`` added since,
    even on a nested graph, makes a new one): compiling is most of what
    starting a small flow costs.
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"flows: expected a flow (flows.linear/unordered/graph), got {flow!r}")
    shape = tuple(_shape(flow, []))
    if flow._compiled is not None and flow._compiled[0] == shape:
        plan: Plan = flow._compiled[1]
        if store_keys is not None:
            plan.check_store(store_keys)
        return plan
    builder = _Builder(flow)
    builder.build(flow, builder.root)
    nodes = builder.nodes
    anc = _ancestors(nodes)
    by_scope_value = {name: s for s in builder.scopes if s.retry for name in s.retry.provided}
    external: dict[str, list[str]] = {}
    for node in nodes:
        for need in node.task.required:
            if need in by_scope_value and by_scope_value[need] in node.scope.chain():
                continue  # the retry controller around it provides it
            makers = [m for m in nodes if m is not node and need in m.task.provided]
            before = [m for m in makers if anc[node.index] >> m.index & 1]
            latest = [m for m in before if not any(anc[o.index] >> m.index & 1 for o in before)]
            if len(latest) > 1:
                who = " and ".join(repr(m.name) for m in latest)
                raise FlowError(
                    f"flow {flow.name!r}: {need!r}, required by {node.name!r}, is provided by both {who}, "
                    "which are not ordered against each other; rename one's provides (or order them)"
                )
            if before:
                continue
            racing = [m.name for m in makers if not anc[m.index] >> node.index & 1]
            if racing:
                raise FlowError(
                    f"flow {flow.name!r}: {node.name!r} requires {need!r}, which {', '.join(map(repr, racing))} "
                    "provides, but nothing orders it before; put the provider first in a linear flow, "
                    "or both in a graph flow"
                )
            external.setdefault(need, []).append(node.name)
    plan = Plan(flow, nodes, builder.scopes, external, {n.name: n for n in nodes})
    flow._compiled = (shape, plan)
    if store_keys is not None:
        plan.check_store(store_keys)
    return plan
