"""Stacks as text: every task of the running event loop (as a tree) and every other thread.

For the dump an operator asks for with SIGUSR1, and for the blocked-loop
warning. Tasks come from ``anyio.get_running_tasks()``, which is every task
on asyncio and the task tree under the root task on trio, so no backend is
imported here. A task's stack is the chain of coroutines it is suspended in,
followed through ``cr_await`` (``gi_yieldfrom``, ``ag_await``) the way
trio's ``Task.iter_await_frames`` does, innermost call last, as in a
traceback.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Iterator
from types import FrameType
from typing import Any

import anyio

__all__ = ["await_frames", "format_frame", "is_idle", "task_tree", "thread_stacks"]

_IDLE_WAITS = (
    ("selectors.py", "select"),  # asyncio's selector event loop
    ("_io_epoll.py", "get_events"),  # trio, Linux
    ("_io_kqueue.py", "get_events"),  # trio, BSD and macOS
    ("_io_windows.py", "get_events"),  # trio, Windows
)
"""Where a loop thread waits for I/O or its next timer: a sampled stack there is an idle loop, not a blocked one."""


def await_frames(coro: Any) -> Iterator[tuple[FrameType, int]]:
    """The frames a suspended coroutine (or generator) is in, outermost first, with their current lines."""
    seen = 0
    while coro is not None and seen < 1000:  # a chain that long is a bug elsewhere, not a stack to print
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:  # finished, or not a coroutine (a future it awaits)
            return
        yield frame, frame.f_lineno
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)


def _indented(lines: list[str], indent: str) -> str:
    """Traceback lines (each ``  File ...\n    code\n``) shifted right by ``indent``."""
    return "".join(indent + line.rstrip("\n").replace("\n", "\n" + indent) + "\n" for line in lines)


def format_frame(frame: FrameType, indent: str = "") -> str:
    """A thread's stack from its innermost ``frame``, formatted as a traceback (innermost last)."""
    return _indented(traceback.format_stack(frame), indent)


def is_idle(frame: FrameType) -> bool:
    """Whether a loop thread's innermost frame is the backend waiting for I/O (the loop is idle, not blocked)."""
    filename = frame.f_code.co_filename
    name = frame.f_code.co_name
    return any(filename.endswith(file) and name == func for file, func in _IDLE_WAITS)


def task_tree() -> tuple[int, str]:
    """How many tasks run on this loop, and each one's name and stack, children indented under parents.

    Call it on the loop's thread. The current task (the one asking) is
    listed too, in the middle of this very call.
    """
    tasks = list(anyio.get_running_tasks())
    ids = {task.id for task in tasks}
    children: dict[int | None, list[Any]] = {}
    for task in tasks:
        parent = task.parent_id if task.parent_id in ids else None
        children.setdefault(parent, []).append(task)
    out: list[str] = []

    def render(task: Any, depth: int) -> None:
        indent = "  " * depth
        out.append(f"{indent}task {task.name!r} (id {task.id})\n")
        out.append(_indented(traceback.StackSummary.extract(await_frames(task.coro)).format(), indent))
        for child in children.get(task.id, ()):
            render(child, depth + 1)

    for root in children.get(None, ()):
        render(root, 0)
    return len(tasks), "".join(out)


def thread_stacks(skip: int | None = None) -> tuple[int, str]:
    """How many threads run besides ``skip`` (a thread id), and each one's name and stack."""
    frames = sys._current_frames()
    out: list[str] = []
    count = 0
    for thread in threading.enumerate():
        ident = thread.ident
        if ident is None or ident == skip or ident not in frames:
            continue
        count += 1
        daemon = ", daemon" if thread.daemon else ""
        out.append(f"thread {thread.name!r} (id {ident}{daemon})\n")
        out.append(format_frame(frames[ident]))
    return count, "".join(out)
