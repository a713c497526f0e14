"""The error bodies the Runtime API takes: an invocation's (``invocation/{id}/error``) and a failed boot's (``init/error``)."""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from typing import Any

import nacelle_py

from ..._errors import ComponentError

__all__ = ["ErrorBody", "error_body", "init_error_body", "stack_trace"]

ErrorBody = dict[str, Any]
_OURS = os.path.dirname(nacelle_py.__file__) + os.sep


def error_body(error_type: str, message: str, exc: BaseException | None = None) -> ErrorBody:
    """``{"errorMessage", "errorType", "stackTrace"}``: the trace is one string per frame, innermost last.

    The listener's own frames above the user's code (the call into ``handle``,
    the thread that ran it) are left out: the trace starts where their code does.
    """
    return {"errorMessage": message, "errorType": error_type, "stackTrace": stack_trace(exc)}


def stack_trace(exc: BaseException | None) -> list[str]:
    """One line per frame (file, line, function, source), without nacelle_py's frames before the first of the user."""
    if exc is None:
        return []
    frames = traceback.extract_tb(exc.__traceback__)
    first = next((i for i, frame in enumerate(frames) if not frame.filename.startswith(_OURS)), 0)
    summary = traceback.StackSummary.from_list(frames[first:])
    return [line.rstrip("\n") for line in summary.format()]


def init_error_body(errors: Sequence[ComponentError]) -> ErrorBody:
    """A failed boot as one error: the first error's original type, every error's message (component, operation).

    ``errorType`` is the class name of what failed first (``ConfigError`` for
    invalid settings, ``InjectionError``, the exception an ``init`` raised,
    ``ComponentTimeoutError`` for a start timeout); the trace is that error's.
    """
    if not errors:
        return error_body("Runtime.InitError", "the app failed to start")
    first = errors[0]
    cause = first.cause if first.cause is not None else first
    return error_body(type(cause).__name__, "\n".join(str(e) for e in errors), cause)
