"""Retry controllers: attached to a subflow, they decide what its failure leads to.

When an atom of a subflow with a controller fails, the subflow's atoms that
ran are reverted first; then the controller decides: ``RETRY`` (run the
subflow again after its backoff), ``REVERT`` (the failure goes on to the
enclosing flow, whose own controller decides next) or ``REVERT_ALL`` (revert
the whole flow, whatever the enclosing controllers would say).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any

from ._atoms import names_of
from ._failure import Failures

__all__ = ["REVERT", "REVERT_ALL", "RETRY", "Decision", "ForEach", "Retry", "Times"]


class Decision(StrEnum):
    """What a retry controller decides after its subflow failed (and was reverted)."""

    RETRY = "RETRY"
    REVERT = "REVERT"
    REVERT_ALL = "REVERT_ALL"


RETRY = Decision.RETRY
REVERT = Decision.REVERT
REVERT_ALL = Decision.REVERT_ALL

Backoff = float | tuple[float, float] | Callable[[int], float]


def _backoff(where: str, backoff: object) -> Callable[[int], float]:
    """The seconds to wait before attempt ``n + 1`` after ``n`` failed ones, from what the user gave."""
    if callable(backoff):
        return backoff
    if isinstance(backoff, bool):
        raise TypeError(f"{where}: backoff must be seconds, (first, cap) or a function, got {backoff!r}")
    if isinstance(backoff, (int, float)):
        if backoff < 0:
            raise ValueError(f"{where}: backoff must be >= 0 seconds, got {backoff!r}")
        fixed = float(backoff)
        return lambda _failed: fixed
    if (
        isinstance(backoff, tuple)
        and len(backoff) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in backoff)
    ):
        first, cap = float(backoff[0]), float(backoff[1])
        if not first <= cap or not math.isfinite(first):
            raise ValueError(
                f"{where}: backoff (first, cap) doubles from first up to cap, so it needs a finite first <= cap; "
                f"got {backoff!r}"
            )
        return lambda failed: min(cap, first * 2 ** (failed - 1))
    raise TypeError(f"{where}: backoff must be seconds, (first, cap) or a function of the attempt, got {backoff!r}")


class Retry:
    """The base of retry controllers: subclass it and write ``on_failure`` to decide yourself.

    ``provides`` names a value the subflow's atoms can require: what
    ``value(attempt)`` returns for the attempt about to run (1 for the first).
    ``backoff`` is the wait before another attempt: seconds, ``(first, cap)``
    doubling from ``first``, or a function of the number of failed attempts.
    """

    def __init__(self, *, name: str | None = None, provides: str | None = None, backoff: Backoff = 0.0) -> None:
        cls = type(self).__name__
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise TypeError(f"{cls}: name must be a non-empty string, got {name!r}")
        self.name: str | None = name  # the subflow's name plus ".retry" when None (set by the pattern)
        self.provided = names_of(cls, provides)
        if len(self.provided) > 1:
            raise TypeError(f"{cls}: a retry controller provides one value, got {provides!r}")
        self.wait = _backoff(cls, backoff)

    def on_failure(self, failures: Failures, attempt: int) -> Decision:
        """What to do after attempt number ``attempt`` (1 for the first) failed with ``failures``."""
        raise NotImplementedError

    def value(self, attempt: int) -> Any:
        """The value provided to the subflow for attempt ``attempt`` (default: the attempt number)."""
        return attempt

    def has_value(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` can run at all (ForEach: whether a value is left)."""
        return True


class Times(Retry):
    """Run the subflow up to ``attempts`` times in all, then ``REVERT`` (``REVERT_ALL`` with ``revert_all``).

    As in TaskFlow, ``Times(3)`` means three attempts: the first and two retries.
    """

    def __init__(
        self,
        attempts: int,
        *,
        backoff: Backoff = 0.0,
        revert_all: bool = False,
        name: str | None = None,
        provides: str | None = None,
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"Times: attempts must be an int >= 1 (attempts in all), got {attempts!r}")
        super().__init__(name=name, provides=provides, backoff=backoff)
        self.attempts = attempts
        self.revert_all = revert_all

    def on_failure(self, failures: Failures, attempt: int) -> Decision:
        """RETRY while attempts remain, then REVERT (or REVERT_ALL)."""
        if attempt < self.attempts:
            return RETRY
        return REVERT_ALL if self.revert_all else REVERT

    def __repr__(self) -> str:
        return f"Times({self.attempts})"


class ForEach(Retry):
    """Run the subflow with each of ``values`` in turn (provided as ``provides``) until one attempt succeeds.

    When every value failed: ``REVERT`` (``REVERT_ALL`` with ``revert_all``).
    """

    def __init__(
        self,
        values: Iterable[Any],
        *,
        provides: str = "value",
        backoff: Backoff = 0.0,
        revert_all: bool = False,
        name: str | None = None,
    ) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise TypeError(f"ForEach: values must be a list (or other iterable) of values, got {values!r}")
        super().__init__(name=name, provides=provides, backoff=backoff)
        self.values: Sequence[Any] = list(values)
        if not self.values:
            raise ValueError("ForEach: values is empty; give at least one value to try")
        self.revert_all = revert_all

    def on_failure(self, failures: Failures, attempt: int) -> Decision:
        """RETRY with the next value while one is left, then REVERT (or REVERT_ALL)."""
        if attempt < len(self.values):
            return RETRY
        return REVERT_ALL if self.revert_all else REVERT

    def value(self, attempt: int) -> Any:
        """The value of attempt ``attempt``: ``values[attempt - 1]``."""
        return self.values[attempt - 1]

    def has_value(self, attempt: int) -> bool:
        """Whether a value is left for attempt ``attempt``."""
        return attempt <= len(self.values)

    def __repr__(self) -> str:
        return f"ForEach({list(self.values)!r})"
