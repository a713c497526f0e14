"""Initializer and Process bases, and the registration options.

The bases hold no state: a subclass need not call ``super().__init__()``.
Their methods exist so that editors and type checkers know the lifecycle;
the runner calls only the ones a subclass overrides, so an absent method
costs nothing, ``stop`` falls back to cancelling ``run`` and a component
without ``reload`` is left alone by a reload (SIGHUP).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Final, Literal, get_args

from ._errors import ComponentError, RegistrationError
from ._validate import positive

__all__ = ["DEFAULT", "RESTART_POLICIES", "Initializer", "Options", "Process", "RestartPolicy", "declared_keys"]


class _Default(Enum):
    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default.DEFAULT
"""Marks a registration option left to the app-wide default (from settings)."""

TimeoutOption = float | None | _Default
LIFECYCLE_METHODS: Final = ("preflight", "init", "run", "stop", "finalize", "reload")
RestartPolicy = Literal["never", "on_failure", "always"]
RESTART_POLICIES: Final[tuple[RestartPolicy, ...]] = get_args(RestartPolicy)
"""Erlang/OTP's temporary, transient and permanent children: when a process's run is restarted."""


class Initializer:
    """A component that prepares shared state before the processes run.

    Override ``init`` (and optionally ``finalize``) as ``async def`` or plain
    ``def``; a plain ``def`` runs in a worker thread so it may block.
    ``init`` usually creates a service and puts it into the container;
    ``finalize`` releases it, in reverse order of successful ``init``;
    ``reload`` applies settings re-read on SIGHUP (or ``App.reload()``);
    ``boot_failed`` hears once of a boot that failed.

    ``provides`` names the service keys the component sets (``provides =
    ("db",)``), so that ``nacelle-py check`` can resolve every ``Inject`` key
    without running anything. ``health_keys`` names the health keys it
    registers, where known (``"{name}"`` stands for its registered name);
    ``None`` means unknown. Both are read, never required.
    """

    __slots__ = ()

    provides: ClassVar[tuple[str, ...]] = ()
    health_keys: ClassVar[tuple[str, ...] | None] = None

    def init(self) -> Awaitable[None] | None:
        """Prepare the component; services are injected before this runs."""
        return None

    def finalize(self) -> Awaitable[None] | None:
        """Release what ``init`` acquired; runs during unwind, only if ``init`` succeeded.

        A component that defines ``preflight`` is also finalized when the app
        ends before its ``init`` succeeded: ``finalize`` then releases what
        ``preflight`` took (it must cope with ``init`` not having run).
        """
        return None

    def preflight(self) -> Awaitable[None] | None:
        """Before any component of the app initialises: take or check what ``init`` will need.

        Bind a port, reach a server: a misconfigured deployment then fails
        before anything changed. Settings models and the services set before
        serving are injected by then (nothing a component sets at ``init``).
        Raising fails the boot; ``nacelle-py check`` runs it too, then
        ``finalize``. Bounded by the component's ``start_timeout``.
        """
        return None

    def boot_failed(self, errors: Sequence[ComponentError]) -> Awaitable[None] | None:
        """Called once, after the unwind, when the app's boot failed; ``errors`` are the boot's errors.

        A boot fails when the settings are invalid, an injection, a
        ``preflight`` or an ``init`` fails, or a priority group is not healthy
        in time (never when a signal or ``shutdown()`` ends the boot). Every
        registered component that overrides it is called, in registration
        order, including those never injected or initialised (so it must not
        rely on what ``init`` does): a platform that wants start-up failures
        reported (the Lambda Runtime API's ``init/error``) hears of them here.
        ``async def`` is awaited, plain ``def`` is called on the loop thread;
        each is bounded by the app's ``SHUTDOWN_TIMEOUT``; one that raises is
        logged and the others still run. ``App.on_boot_failure`` adds such a
        hook without a component.
        """
        return None

    def reload(self) -> Awaitable[None] | None:
        """Apply the settings re-read by a reload (SIGHUP); called with nothing, only while running.

        Before it is called, the component's ``Inject()`` settings attributes
        hold the freshly validated models (``config.load`` returns them too);
        it re-reads what it needs from them. Called in priority order, each
        bounded by ``reload_timeout``; one that raises is logged and the app
        keeps running. Only components that override it take part.
        """
        return None


class Process(Initializer):
    """A long-running component: ``run`` lives for the life of the app.

    ``run`` should block until the work ends; ``stop`` asks it to return and
    need not wait. Without ``stop`` the runner cancels ``run``. A process
    that registers no health component is healthy once ``run`` has started.
    """

    __slots__ = ()

    def run(self) -> Awaitable[None] | None:
        """The long-running work; returning ends the app unless registered with ``silent_exit``."""
        return None

    def stop(self) -> Awaitable[None] | None:
        """Ask ``run`` to return; the default cancels ``run``."""
        return None


def overridden(component: object, method: str) -> Any:
    """The bound method if the component's class (not our base) defines it, else ``None``."""
    func = getattr(type(component), method, None)
    if func is None or func is getattr(Process, method, None):
        return None
    return getattr(component, method)


def _check_timeout(name: str, option: str, value: object) -> TimeoutOption:
    return value if value is DEFAULT else positive(name, option, value, allow_none=True)


def _check_backoff(name: str, value: object) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise RegistrationError(
            f"{name}: backoff must be a pair (initial, cap) of seconds with 0 < initial <= cap, got {value!r}"
        )
    initial = positive(name, "backoff's initial delay", value[0])
    cap = positive(name, "backoff's cap", value[1])
    if initial > cap:
        raise RegistrationError(f"{name}: backoff's initial delay must not exceed its cap, got {value!r}")
    return initial, cap


@dataclass(frozen=True)
class Options:
    """How one component is registered: its name, priority, bounds, exit and restart policy.

    Timeouts left at ``DEFAULT`` take the app-wide default from settings;
    ``None`` means no limit. ``restart`` is ``"never"`` (a failure unwinds the
    app), ``"on_failure"`` or ``"always"``; more than ``max_restarts``
    restarts within ``restart_window`` seconds escalate; ``backoff`` is the
    (initial, cap) of the exponential wait before each restart.
    """

    name: str
    priority: int = 0
    start_timeout: TimeoutOption = DEFAULT
    shutdown_timeout: TimeoutOption = DEFAULT
    init_timeout: TimeoutOption = DEFAULT
    finalize_timeout: TimeoutOption = DEFAULT
    reload_timeout: TimeoutOption = DEFAULT
    silent_exit: bool = False
    restart: RestartPolicy = "never"
    max_restarts: int = 3
    restart_window: float = 5.0
    backoff: tuple[float, float] = (0.1, 10.0)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise RegistrationError(f"component name must be a non-empty string, got {self.name!r}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise RegistrationError(f"{self.name}: priority must be an int, got {self.priority!r}")
        for option in ("start_timeout", "shutdown_timeout", "init_timeout", "finalize_timeout", "reload_timeout"):
            object.__setattr__(self, option, _check_timeout(self.name, option, getattr(self, option)))
        if not isinstance(self.silent_exit, bool):
            raise RegistrationError(f"{self.name}: silent_exit must be a bool, got {self.silent_exit!r}")
        if self.restart not in RESTART_POLICIES:
            raise RegistrationError(
                f"{self.name}: restart must be one of {', '.join(map(repr, RESTART_POLICIES))}, got {self.restart!r}"
            )
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise RegistrationError(f"{self.name}: max_restarts must be an int >= 0, got {self.max_restarts!r}")
        object.__setattr__(self, "restart_window", positive(self.name, "restart_window", self.restart_window))
        object.__setattr__(self, "backoff", _check_backoff(self.name, self.backoff))


def declared_keys(component: Initializer, name: str, attribute: str) -> tuple[str, ...]:
    """A component's ``provides`` (or ``health_keys``) as a tuple of non-empty strings; ``RegistrationError`` if not."""
    value = getattr(component, attribute, ())
    if value is None or (value.__class__ is tuple and not value):  # the usual case, checked first: nothing declared
        return ()
    if isinstance(value, str) or not isinstance(value, (tuple, list, frozenset, set)):
        raise RegistrationError(
            f"{name}: {attribute} must be a tuple of strings, e.g. {attribute} = ({str(value)!r},), got {value!r}"
        )
    for key in value:
        if not isinstance(key, str) or not key:
            raise RegistrationError(f"{name}: {attribute} holds {key!r}; every key is a non-empty string")
    return tuple(key.replace("{name}", name) for key in value)
