"""Stage: one node of a pipeline tree, and the checks that run when a pipeline is built.

A stage's role comes from where it sits: a top-level stage is a root
(``fn(emit)``), a stage with children is inner (``fn(msg, emit)``), a stage
without children is a leaf (``fn(msg)``). The role is checked against the
function's signature when the ``Pipeline`` is constructed, so a wiring
mistake is an error before anything runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ..._calls import is_async
from ..._errors import RegistrationError
from ..._validate import positive

__all__ = ["Node", "Stage", "build"]


class Stage:
    """A named step of a pipeline: a function and the stages that receive what it emits.

    ``fn`` is an ``async def`` (awaited on the event loop) or a plain ``def``
    (run in a worker thread). ``children`` receive every message this stage
    emits, each once, in emission order. ``buffer`` bounds the stage's input
    edge (backpressure on the parent when full). ``workers`` processes that many
    messages at once (for I/O-bound stages); the output keeps the input's
    order unless ``ordered=False``. ``batch=True`` (or a maximum size) hands
    the stage lists of messages instead of one message at a time.
    ``with_id=True`` hands it each message as a ``Message`` (``.id``, ``.body``):
    an id stable from the root, by which a leaf can store each message once.
    """

    __slots__ = ("batch", "buffer", "children", "fn", "name", "ordered", "with_id", "workers")

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        children: Sequence[Stage] = (),
        *,
        workers: int = 1,
        buffer: int = 1024,
        ordered: bool = True,
        batch: bool | int = False,
        with_id: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"Stage: the name must be a non-empty string, got {name!r}")
        owner = f"Stage {name!r}"
        if not callable(fn):
            raise RegistrationError(f"{owner}: fn must be a function (async def or def), got {fn!r}")
        if isinstance(children, (str, bytes)) or not isinstance(children, Sequence):
            raise RegistrationError(f"{owner}: children must be a list of Stage, got {children!r}")
        for child in children:
            if not isinstance(child, Stage):
                raise RegistrationError(f"{owner}: children must be Stage objects, got {child!r}")
        if not isinstance(ordered, bool):
            raise RegistrationError(f"{owner}: ordered must be True or False, got {ordered!r}")
        if batch is not False and batch is not True:
            positive(owner, "batch", batch, integer=True)
        if not isinstance(with_id, bool):
            raise RegistrationError(f"{owner}: with_id must be True or False, got {with_id!r}")
        self.name = name
        self.fn = fn
        self.children: list[Stage] = list(children)
        self.workers: int = positive(owner, "workers", workers, integer=True)
        self.buffer: int = positive(owner, "buffer", buffer, integer=True)
        self.ordered = ordered
        self.batch = batch
        self.with_id = with_id

    def __repr__(self) -> str:
        return f"Stage({self.name!r}, children={[c.name for c in self.children]!r})"


class Node:
    """A stage as the engines see it: its role, its resolved options and its counters."""

    __slots__ = (
        "active",
        "base",
        "batch",
        "busy",
        "buffer",
        "children",
        "count",
        "cursor",
        "dropped",
        "errors",
        "fn",
        "inbox",
        "is_async",
        "name",
        "ordered",
        "out",
        "parent",
        "role",
        "scope",
        "stage_fn",
        "taken",
        "unit",
        "with_id",
        "workers",
    )

    def __init__(self, stage: Stage, role: str, parent: Node | None) -> None:
        self.name = stage.name
        self.stage_fn = stage.fn
        self.fn = stage.fn  # what the engines call: wrapped for a run where the tree carries ids (_message)
        self.with_id = stage.with_id
        self.role = role  # "root", "inner" or "leaf"
        self.parent = parent
        self.children: list[Node] = []
        self.workers = stage.workers
        self.buffer = stage.buffer
        self.ordered = stage.ordered or stage.workers == 1
        # 0: one message per call; -1: whatever is waiting; n: at most n per call.
        self.batch = 0 if stage.batch is False else -1 if stage.batch is True else int(stage.batch)
        self.is_async = is_async(stage.fn)
        self.reset()

    def reset(self) -> None:
        """Zero the counters before a run."""
        self.taken = 0  # messages moved off the input edge to be processed
        self.out = 0  # emissions of a stage without children (counted, discarded)
        self.errors = 0
        self.busy = 0.0
        self.dropped = 0
        self.active = 0  # messages being processed right now
        self.cursor: Any = None  # the iterator over the units (messages or lists) being processed
        self.base = 0  # ``taken`` before the current batch
        self.count = 0  # units in the current batch
        self.unit = 1  # messages per unit (the last one may be shorter)
        self.inbox: Any = None
        self.scope: Any = None

    def load(self, batch: list[Any]) -> Any:
        """Make ``batch`` (taken off the edge) the one being processed; return its iterator of units.

        Per-message stages walk the list itself; batch stages walk its pieces.
        The iterator's length hint tells how far the stage got at no cost per message.
        """
        self.base = taken = self.taken
        self.taken = taken + len(batch)
        size = self.batch
        if size == 0:
            units: list[Any] = batch
            self.unit = 1
        elif size < 0 or size >= len(batch):
            units = [batch]
            self.unit = len(batch)
        else:
            units = [batch[i : i + size] for i in range(0, len(batch), size)]
            self.unit = size
        self.count = len(units)
        self.cursor = it = iter(units)
        return it

    def index(self, it: Any) -> int:
        """The index (on the input edge) of the first message of the unit ``it`` returned last."""
        left: int = it.__length_hint__()
        return self.base + (self.count - left - 1) * self.unit

    def in_flight(self) -> int:
        """Messages being processed right now."""
        return self.active * (self.unit if self.batch else 1)

    def remaining(self) -> int:
        """Messages taken off the edge and not started yet."""
        cursor = self.cursor
        if cursor is None:
            return 0
        left: int = cursor.__length_hint__()
        if self.unit == 1:
            return left
        return max(0, self.taken - self.base - (self.count - left) * self.unit)

    def describe(self) -> str:
        """How the stage is referred to in messages."""
        return f"stage {self.name!r}"


def build(roots: Sequence[Stage], owner: str) -> list[Node]:
    """Check the tree and return its nodes, parents before children (depth-first)."""
    if isinstance(roots, Stage):
        roots = [roots]
    if isinstance(roots, (str, bytes)) or not isinstance(roots, Sequence) or not roots:
        raise RegistrationError(f"{owner}: give a non-empty list of root Stage objects, got {roots!r}")
    nodes: list[Node] = []
    seen: dict[str, Stage] = {}
    on_path: set[int] = set()

    def visit(stage: Stage, parent: Node | None) -> None:
        if not isinstance(stage, Stage):
            raise RegistrationError(f"{owner}: roots must be Stage objects, got {stage!r}")
        if id(stage) in on_path:
            path = " -> ".join(n.name for n in _path(parent)) + f" -> {stage.name}"
            raise RegistrationError(f"{owner}: stage {stage.name!r} is its own descendant (a cycle: {path})")
        if stage.name in seen:
            same = "the same Stage object is used twice" if seen[stage.name] is stage else "two stages share it"
            raise RegistrationError(f"{owner}: duplicate stage name {stage.name!r} ({same}); names must be unique")
        seen[stage.name] = stage
        role = "root" if parent is None else ("inner" if stage.children else "leaf")
        node = Node(stage, role, parent)
        _check(node, stage, owner)
        nodes.append(node)
        if parent is not None:
            parent.children.append(node)
        on_path.add(id(stage))
        for child in stage.children:
            if not isinstance(child, Stage):  # put there after the Stage was made
                raise RegistrationError(f"{owner}: stage {stage.name!r} has a child that is not a Stage: {child!r}")
            visit(child, node)
        on_path.discard(id(stage))

    for root in roots:
        visit(root, None)
    return nodes


def _path(node: Node | None) -> list[Node]:
    path: list[Node] = []
    while node is not None:
        path.append(node)
        node = node.parent
    return path[::-1]


def _check(node: Node, stage: Stage, owner: str) -> None:
    where = f"{owner}: stage {stage.name!r}"
    if node.role == "root":
        if stage.workers != 1:
            raise RegistrationError(f"{where} is a root: roots run once, workers does not apply")
        if node.batch:
            raise RegistrationError(f"{where} is a root: roots produce messages, batch does not apply")
        if node.with_id:
            raise RegistrationError(
                f"{where} is a root: roots receive no messages, with_id does not apply "
                "(give it to the stages that read the ids)"
            )
    required, most = _arity(stage.fn)
    if required is None:
        return  # no signature to check (a builtin, say): trust the wiring
    for role, broken, text in _SIGNATURE_RULES:
        if node.role == role and broken(required, most):
            raise RegistrationError(f"{where} " + text.format(sig=_sig(stage.fn)))


# (role, is the signature wrong for it? given (required, most) positional parameters, message)
_SIGNATURE_RULES: tuple[tuple[str, Callable[[int, int], bool], str], ...] = (
    (
        "root",
        lambda required, most: required >= 2,
        "is a root and takes a message ({sig}); a root is fn(emit) and produces messages. "
        "Make it a child of another stage, or drop the message parameter",
    ),
    ("root", lambda required, most: most < 1, "is a root and must accept emit: fn(emit), got {sig}"),
    (
        "inner",
        lambda required, most: most < 2,
        "has children but does not accept emit ({sig}); an inner stage is fn(msg, emit). "
        "Add the emit parameter, or remove its children",
    ),
    (
        "leaf",
        lambda required, most: required >= 2,
        "is a leaf (no children) but takes emit ({sig}); what it emitted would go nowhere. "
        "Give it children, or make it fn(msg)",
    ),
    ("leaf", lambda required, most: most < 1, "is a leaf and must accept the message: fn(msg), got {sig}"),
)


def _arity(fn: Callable[..., Any]) -> tuple[int | None, int]:
    """Required and maximum positional parameters (``None`` when there is no signature)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None, 0
    required = most = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            most = 1 << 30
        elif parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            most += 1
            if parameter.default is parameter.empty:
                required += 1
    return required, most


def _sig(fn: Callable[..., Any]) -> str:
    try:
        return f"{getattr(fn, '__name__', 'fn')}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return repr(fn)
