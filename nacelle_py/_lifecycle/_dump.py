"""The dump (SIGUSR1, ``App.dump()``): every component's state and every task's and thread's stack, logged.

Three log entries, written on the loop thread between two steps of the
runner, so the states agree with each other; nothing is stopped or changed.
They are logged at warning level: an operator who asked for them must see
them under ``LOG_LEVEL=warning`` too.
"""

from __future__ import annotations

import threading
from typing import Any

import sniffio

from .._stacks import task_tree, thread_stacks
from ._context import Context

__all__ = ["dump"]


def dump(ctx: Context, reason: str) -> None:
    """Log ``dump: components``, ``dump: tasks`` (the loop's task tree) and ``dump: threads`` (the others)."""
    log = ctx.logger
    components: list[dict[str, Any]] = [
        {
            "name": e.name,
            "kind": e.kind,
            "state": str(e.state),
            "priority": e.options.priority,
            "restarts": e.restarts,
            "error_count": e.error_count,
            "last_error": e.last_error,
        }
        for e in ctx.entries
    ]
    log.warning("dump: components", reason=reason, phase=str(ctx.phases.phase), components=components)
    count, text = task_tree()
    log.warning("dump: tasks", backend=sniffio.current_async_library(), tasks=count, stack=text)
    count, text = thread_stacks(skip=threading.get_ident())
    log.warning("dump: threads", threads=count, stack=text)
