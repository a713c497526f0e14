"""Message ids: every message of a tree that asks for them carries a stable id from its root.

A root's n-th emission (from 0) is ``"<root>:<n>"``; the k-th emission of a
stage while it processes message ``m`` is ``"<m.id>.<k>"`` (a batch stage's
outputs extend the id of the first message of its batch). So an id names the
path a message took, and a stage that runs a message again (the worker-based
engine, after a crash) gives its outputs the same ids: a leaf that stores
by id stores each message once.

Ids are carried, not computed from counters of the engines: each stage's
function is wrapped (``carry_ids``) so that it receives the message's body, or
the ``Message`` itself when the stage was made with ``with_id=True``, and an
``emit`` that wraps what it is given. Only trees with a stage that asks for ids
pay for this (one small object per message); the others run their functions
unwrapped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Message", "carry_ids"]

T = TypeVar("T")


class Message(Generic[T]):
    """A message with its id, as a stage made with ``Stage(..., with_id=True)`` receives it.

    ``id`` is stable across runs of the same message (see the module
    docstring for its form) and unique within a run of a tree; ``body`` is
    what its parent emitted.
    """

    __slots__ = ("body", "id")

    def __init__(self, id: str, body: T) -> None:  # noqa: A002 (the public field is named id)
        self.id = id
        self.body = body

    def __repr__(self) -> str:
        return f"Message({self.id!r}, {self.body!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.id == other.id and self.body == other.body

    def __hash__(self) -> int:
        return hash(self.id)


def carry_ids(nodes: list[Any], *, always: bool = False, acks: Callable[[Any], Any] | None = None) -> None:
    """Set every node's ``fn`` for a run: wrapped where its tree carries ids, else the stage's own.

    A tree carries ids when one of its stages has ``with_id`` (or ``always``,
    for an engine whose edges carry ids anyway). With ``acks`` (the
    worker-based engine), a stage tells when it is done with a message: an
    inner stage emits the message itself after its function returned (behind
    its outputs, through the same ``emit``), a leaf calls ``acks(node)(msg)``.
    """
    trees: dict[str, bool] = {}
    for node in nodes:
        root = node if node.parent is None else _root_of(node)
        trees[root.name] = trees.get(root.name, False) or node.with_id
    for node in nodes:
        carries = always or trees[_root_of(node).name]
        node.fn = _wrap(node, acks) if carries else node.stage_fn


def _root_of(node: Any) -> Any:
    while node.parent is not None:
        node = node.parent
    return node


def _wrap(node: Any, acks: Callable[[Any], Any] | None) -> Callable[..., Any]:
    fn, with_id, name = node.stage_fn, node.with_id, node.name
    if node.role == "root":
        return _root(fn, name, node.is_async)
    if acks is not None and not node.batch and node.is_async:
        return _single_acking(fn, with_id, bool(node.children), acks(node))
    if node.batch:
        fn = _batch(fn, with_id, bool(node.children), node.is_async)
    else:
        fn = _single(fn, with_id, bool(node.children), node.is_async)
    if acks is None:
        return fn
    return _acking(fn, bool(node.children), node.is_async, acks(node), bool(node.batch))


def _single_acking(fn: Callable[..., Any], with_id: bool, inner: bool, ack: Any) -> Callable[..., Any]:
    """An async stage's message on the worker-based engine (its hot path): one coroutine that calls
    the function and then reports the message done (or marks it failed)."""
    if inner:

        async def call(msg: Any, emit: Any) -> Any:
            try:
                result = await fn(msg if with_id else msg.body, _emitter(emit, msg.id + ".", True))
            except _RAISED:
                msg.failed = True
                raise
            await emit(msg)
            return result

        return call

    async def leaf(msg: Any) -> Any:
        try:
            result = await fn(msg if with_id else msg.body)
        except _RAISED:
            msg.failed = True
            raise
        ack(msg)
        return result

    return leaf


_RAISED = (Exception, SystemExit, KeyboardInterrupt)  # what a stage may raise as its failure (not a cancellation)


def _failed(unit: Any, batch: bool) -> None:
    """The stage raised for ``unit``: its messages' delivery counts (the others' are not)."""
    for msg in unit if batch else (unit,):
        msg.failed = True


def _acking(fn: Callable[..., Any], inner: bool, is_async: bool, ack: Any, batch: bool) -> Callable[..., Any]:
    """``fn``, then the message (or each of the batch) reported done; when ``fn`` raised, marked failed.

    An inner stage reports through its ``emit`` (a message done never waits there, so nothing
    is awaited), a leaf through ``ack``. ``emit`` comes as the optional second argument.
    """

    def report(unit: Any, emit: tuple[Any, ...]) -> None:
        done = emit[0] if inner else ack
        for msg in unit if batch else (unit,):
            done(msg)

    if is_async:

        async def call(unit: Any, *emit: Any) -> Any:
            try:
                result = await fn(unit, *emit)
            except _RAISED:
                _failed(unit, batch)
                raise
            report(unit, emit)
            return result

        return call

    def plain(unit: Any, *emit: Any) -> Any:
        try:
            result = fn(unit, *emit)
        except _RAISED:
            _failed(unit, batch)
            raise
        report(unit, emit)
        return result

    return plain


def _emitter(emit: Any, prefix: str, is_async: bool = False) -> Any:
    """An ``emit`` that wraps each item in a ``Message`` whose id is ``prefix`` and the next number."""
    seq = [0]  # the next number: one list cell, read and written without a call

    def wrapped(item: Any) -> Any:
        n = seq[0]
        seq[0] = n + 1
        return emit(Message(f"{prefix}{n}", item))

    def numbered(items: list[Any] | tuple[Any, ...]) -> list[Message[Any]]:
        n = seq[0]
        seq[0] = n + len(items)
        return [Message(f"{prefix}{i}", item) for i, item in enumerate(items, n)]

    def many(items: Iterable[Any]) -> Any:
        if type(items) is list or type(items) is tuple:
            return emit.many(numbered(items))
        if is_async:
            return _many_in_pieces(emit, numbered, items)
        return emit.many(_numbered(items, prefix, seq))  # a plain stage: read as lazily as before

    wrapped.many = many  # type: ignore[attr-defined]
    return wrapped


async def _many_in_pieces(emit: Any, numbered: Callable[[list[Any]], list[Any]], items: Iterable[Any]) -> None:
    """An async ``emit.many`` of any iterable: read 1,024 at a time, each piece made messages at once."""
    iterator = iter(items)
    while piece := list(itertools.islice(iterator, 1024)):
        await emit.many(numbered(piece))


def _numbered(items: Iterable[Any], prefix: str, seq: list[int]) -> Iterator[Message[Any]]:
    """``items`` as messages, read as lazily as the items themselves."""
    for item in items:
        n = seq[0]
        seq[0] = n + 1
        yield Message(f"{prefix}{n}", item)


def _root(fn: Callable[..., Any], name: str, is_async: bool) -> Callable[..., Any]:
    prefix = f"{name}:"
    if is_async:

        async def root(emit: Any) -> Any:
            return await fn(_emitter(emit, prefix, True))

        return root

    def plain_root(emit: Any) -> Any:
        return fn(_emitter(emit, prefix))

    return plain_root


def _single(fn: Callable[..., Any], with_id: bool, inner: bool, is_async: bool) -> Callable[..., Any]:
    if inner and is_async:

        async def call(msg: Message[Any], emit: Any) -> Any:
            return await fn(msg if with_id else msg.body, _emitter(emit, msg.id + ".", True))

    elif inner:

        def call(msg: Message[Any], emit: Any) -> Any:  # type: ignore[misc]
            return fn(msg if with_id else msg.body, _emitter(emit, msg.id + "."))

    elif is_async:

        async def call(msg: Message[Any]) -> Any:  # type: ignore[misc]
            return await fn(msg if with_id else msg.body)

    else:

        def call(msg: Message[Any]) -> Any:  # type: ignore[misc]
            return fn(msg if with_id else msg.body)

    return call


def _batch(fn: Callable[..., Any], with_id: bool, inner: bool, is_async: bool) -> Callable[..., Any]:
    def unwrap(msgs: list[Message[Any]]) -> list[Any]:
        return msgs if with_id else [msg.body for msg in msgs]

    if inner and is_async:

        async def call(msgs: list[Message[Any]], emit: Any) -> Any:
            return await fn(unwrap(msgs), _emitter(emit, msgs[0].id + ".", True))

    elif inner:

        def call(msgs: list[Message[Any]], emit: Any) -> Any:  # type: ignore[misc]
            return fn(unwrap(msgs), _emitter(emit, msgs[0].id + "."))

    elif is_async:

        async def call(msgs: list[Message[Any]]) -> Any:  # type: ignore[misc]
            return await fn(unwrap(msgs))

    else:

        def call(msgs: list[Message[Any]]) -> Any:  # type: ignore[misc]
            return fn(unwrap(msgs))

    return call
