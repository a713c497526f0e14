"""The error types.

Every failure the framework reports is a value that says which component
failed and in which operation, so that a log line or a test can name it
without parsing a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "ComponentError",
    "ComponentTimeoutError",
    "ConfigError",
    "InjectionError",
    "NacelleError",
    "RegistrationError",
    "ServiceError",
    "SettingError",
    "UnavailableError",
]


class NacelleError(Exception):
    """Base class of every error raised or reported by nacelle_py."""


class RegistrationError(NacelleError, ValueError):
    """A component or one of its registration options was rejected by ``App.register``.

    Raised at once, before anything boots, so a mistake in ``main`` never
    reaches production half-started.
    """


class UnavailableError(NacelleError, RuntimeError):
    """A server the app needs (Redis, say) cannot be reached; the message names it and what to check.

    Logged as its message alone, like a bad setting: the fix is outside the code.
    """


class ServiceError(NacelleError, KeyError):
    """A service key was missing, duplicated or of the wrong kind in a ``ServiceContainer``."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence.
        return str(self.args[0]) if self.args else ""


class SettingError(NamedTuple):
    """One invalid or missing setting: the env variable(s) that set it and what is wrong."""

    env: str
    """The env variable that sets the value (the prefixed one; the unprefixed name also works)."""
    message: str
    """What pydantic said about the value, with the offending input when there was one."""
    model: str
    """The settings class the field belongs to."""
    field: str
    """The field's name in that class."""

    def __str__(self) -> str:  # a sentence, not the tuple
        return f"{self.env}: {self.message} ({self.model}.{self.field})"


class ConfigError(NacelleError):
    """The settings could not be loaded: every problem of every model, reported together."""

    def __init__(self, errors: Sequence[SettingError]) -> None:
        self.errors: tuple[SettingError, ...] = tuple(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(
            f"invalid configuration ({len(self.errors)} problem(s)); set or fix these env variables:\n{lines}"
        )


class InjectionError(NacelleError):
    """A service could not be injected into a component's attribute."""

    def __init__(self, component: str, attribute: str, message: str) -> None:
        self.component = component
        self.attribute = attribute
        super().__init__(f"{component}: cannot inject attribute {attribute!r}: {message}")


class ComponentError(NacelleError):
    """A lifecycle operation of a component failed.

    ``component`` is the registered name and ``operation`` one of ``preflight``, ``inject``,
    ``init``, ``start``, ``run``, ``stop``, ``finalize`` or ``config``; the
    original exception is ``__cause__`` (and ``cause``).
    """

    def __init__(self, component: str, operation: str, cause: BaseException | None, detail: str = "") -> None:
        self.component = component
        self.operation = operation
        self.cause = cause
        self.detail = detail or (f"{type(cause).__name__}: {cause}" if cause is not None else "")
        super().__init__(f"{component}: {operation} failed" + (f": {self.detail}" if self.detail else ""))
        self.__cause__ = cause


class ComponentTimeoutError(ComponentError):
    """A lifecycle operation did not finish within its bound (``*_timeout``)."""

    def __init__(self, component: str, operation: str, timeout: float, detail: str = "") -> None:
        self.timeout = timeout
        super().__init__(component, operation, None, detail or f"timed out after {timeout:g}s")
