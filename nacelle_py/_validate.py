"""Checking numeric options: one rule and one wording for every component's settings."""

from __future__ import annotations

import math
from typing import Any

from ._errors import RegistrationError

__all__ = ["positive", "positive_setting"]


def positive(owner: str, option: str, value: object, *, integer: bool = False, allow_none: bool = False) -> Any:
    """``value`` if it is a positive finite number (an int when ``integer``), or ``None`` when allowed.

    Anything else raises ``RegistrationError`` naming ``owner`` and ``option``;
    ``bool`` is refused although it is an ``int``. Seconds come back as floats.
    """
    if value is None and allow_none:
        return None
    numeric = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not numeric:
        kind = "an int" if integer else "a number of seconds" + (" or None (no limit)" if allow_none else "")
        raise RegistrationError(f"{owner}: {option} must be {kind}, got {value!r}")
    try:
        finite = math.isfinite(value)  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite or value <= 0:  # type: ignore[operator]
        hint = " (or None for no limit)" if allow_none else ""
        kind = "a positive int" if integer else "a positive number of seconds"
        raise RegistrationError(f"{owner}: {option} must be {kind}{hint}, got {value!r}")
    return value if integer else float(value)  # type: ignore[arg-type]


def positive_setting(value: float | None) -> float | None:
    """A settings validator's check: ``None`` (unset) or positive finite seconds, else ``ValueError``.

    pydantic-settings turns the ValueError into a ``ConfigError`` naming the env variable.
    """
    if value is not None and not (0 < value < math.inf):
        raise ValueError("must be a positive number of seconds")
    return value
