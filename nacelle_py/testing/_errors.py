"""What ``running()`` raises: the app did not boot (``BootError``), or did not end cleanly (``ExitError``)."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import ComponentError, NacelleError

__all__ = ["BootError", "ExitError", "listing"]


def listing(errors: Sequence[ComponentError]) -> str:
    """``errors`` one per indented line, or a word saying there were none."""
    if not errors:
        return "no error was recorded"
    lines = (str(error).replace("\n", "\n    ") for error in errors)  # an error's own lines indented under it
    return f"{len(errors)} error(s):\n" + "\n".join(f"  - {line}" for line in lines)


class _Outcome(NacelleError):
    """An app served under ``running()`` that did not do what the test needed; says what happened."""

    def __init__(
        self, message: str, *, app: str, errors: Sequence[ComponentError], status: int | None, timed_out: bool
    ) -> None:
        super().__init__(message)
        self.app = app
        """The app's name."""
        self.errors: tuple[ComponentError, ...] = tuple(errors)
        """``app.errors`` once the app had ended: every failure, in order, with component and operation."""
        self.status = status
        """The exit status ``serve()`` returned (None if it never returned: a run ignored cancellation)."""
        self.timed_out = timed_out
        """Whether ``running()``'s ``timeout`` ran out (boot: not healthy in time; exit: the unwind overran)."""
        if self.errors:
            self.__cause__ = self.errors[0]  # the traceback shows the first failure and its own cause


class BootError(_Outcome):
    """The app did not become healthy: a component failed to boot, boot timed out, or the app stopped first.

    Raised by ``running()`` on entry, once what had started has unwound;
    ``errors`` lists what failed (``app.errors``), the first one is also the
    ``__cause__``, and the message names each failure, and on a timeout the
    health keys and components that held the boot up.
    """


class ExitError(_Outcome):
    """The app did not end cleanly: it exited with status 1 (an error while it ran or as it unwound), or its unwind overran.

    Raised by ``running()`` when the block is left without an exception;
    when the block raised, its exception wins and this one's message is
    attached to it as a note instead.
    """
