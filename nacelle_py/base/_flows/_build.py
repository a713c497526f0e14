"""The functions that build flows: each builds its pattern and checks its structure at once."""

from __future__ import annotations

from collections.abc import Iterable

from ._patterns import Atom, Flow
from ._plan import compile_flow
from ._retry import Retry

__all__ = ["graph", "linear", "unordered"]


def linear(name: str, *atoms: Atom, retry: Retry | None = None) -> Flow:
    """Atoms run one after another, in the order given, on every engine."""
    return _checked(Flow("linear", name, atoms, retry))


def unordered(name: str, *atoms: Atom, retry: Retry | None = None) -> Flow:
    """Atoms that do not depend on each other, run concurrently where the engine can."""
    return _checked(Flow("unordered", name, atoms, retry))


def graph(
    name: str,
    *atoms: Atom,
    retry: Retry | None = None,
    links: Iterable[tuple[Atom | str, Atom | str]] = (),
) -> Flow:
    """Atoms ordered by their data: an atom that requires a value waits for the atom that provides it.

    ``links`` (or ``.link(before, after)``) adds orderings the data does not
    show. Cycles, and a value two atoms of the graph provide, are refused.
    """
    flow = Flow("graph", name, atoms, retry)
    for pair in links:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"flows.graph({name!r}): links must be (before, after) pairs, got {pair!r}")
        flow.link(*pair)
    return _checked(flow)


def _checked(flow: Flow) -> Flow:
    """The flow, once its structure (names, cycles, providers) is known to be sound."""
    compile_flow(flow)
    return flow
