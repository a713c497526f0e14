"""What the machine's modules share: the error, and the names of a subscription's handler and overflow.

A leaf: it imports no other module of the package, and the others import
it downward, so none of them needs another's module for these names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

__all__ = ["OVERFLOWS", "Handler", "MachineError", "Overflow"]


class MachineError(RuntimeError):
    """A machine was used when it could not run routines (not open, or cancelled)."""


Overflow = Literal["block", "drop_oldest", "error"]
OVERFLOWS = ("block", "drop_oldest", "error")
Handler = Callable[[Any], "Awaitable[Any] | Any"]
