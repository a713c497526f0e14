"""``nacelle-py check``: settings, injections and registrations, checked without initialising anything.

fx's ``ValidateApp`` is the model: everything a boot would find wrong before
its first ``init``, found at once and listed together. Injections are
resolved statically: an ``Inject("key")`` must name a service set before
serving, or one that a component of a lower priority declares in its
``provides``; the same priority is too late (a group is injected before
any of its ``init``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from .._app import App
from .._components import Initializer, Options, declared_keys, overridden
from .._errors import ConfigError
from .._inject import planned_injections
from .._registry import resolved
from .._settings import AppSettings

__all__ = ["CheckReport", "ComponentRow", "Problem", "check_app"]


@dataclass(frozen=True)
class Problem:
    """One thing that would fail the boot."""

    component: str
    """The component at fault, or ``"settings"``."""
    kind: str
    """``config``, ``preflight`` (or ``finalize``, releasing what a preflight took) or ``inject``."""
    message: str
    env: str | None = None
    """For a setting: the env variable to set."""

    def __str__(self) -> str:
        where = self.env or self.component
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ComponentRow:
    """One line of the component table."""

    name: str
    kind: str
    priority: int
    init_timeout: float | None
    start_timeout: float | None
    shutdown_timeout: float | None
    finalize_timeout: float | None
    restart: str
    provides: tuple[str, ...]
    injects: tuple[str, ...]
    health_keys: tuple[str, ...] | None
    """``None``: the component does not say which keys it registers."""


@dataclass
class CheckReport:
    """What ``check`` found: the table and every problem (none: the app would boot)."""

    app: str
    components: list[ComponentRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    settings_checked: int = 0

    @property
    def ok(self) -> bool:
        """Whether nothing was found wrong."""
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        """The report as plain data (``--json``)."""
        return {
            "app": self.app,
            "ok": self.ok,
            "settings_checked": self.settings_checked,
            "components": [asdict(row) for row in self.components],
            "problems": [asdict(problem) for problem in self.problems],
        }


def _settings(app: App, report: CheckReport) -> AppSettings:
    """Load every settings model (nothing cached); each problem is reported. Returns the app's own settings."""
    app_settings = AppSettings.model_construct()
    for model in app.settings_models():
        report.settings_checked += len(model.model_fields)
        try:
            loaded = app.config.build(model)
        except ConfigError as exc:
            report.problems.extend(Problem("settings", "config", e.message, e.env) for e in exc.errors)
            continue
        if isinstance(loaded, AppSettings):
            app_settings = loaded
    return app_settings


def _row(component: Initializer, options: Options, settings: AppSettings, injects: tuple[str, ...]) -> ComponentRow:
    name = options.name
    health = getattr(component, "health_keys", None)
    restart: str = options.restart
    if restart != "never":
        restart = f"{restart} (max {options.max_restarts} in {options.restart_window:g}s)"
    return ComponentRow(
        name=name,
        kind="process" if overridden(component, "run") is not None else "initializer",
        priority=options.priority,
        init_timeout=resolved(options.init_timeout, settings.init_timeout),
        start_timeout=resolved(options.start_timeout, settings.start_timeout),
        shutdown_timeout=resolved(options.shutdown_timeout, settings.shutdown_timeout),
        finalize_timeout=resolved(options.finalize_timeout, settings.finalize_timeout),
        restart=restart,
        provides=declared_keys(component, name, "provides"),
        injects=injects,
        health_keys=None if health is None else declared_keys(component, name, "health_keys"),
    )


def _providers(app: App) -> dict[str, list[Options]]:
    """Which components declare each service key."""
    found: dict[str, list[Options]] = {}
    for component, options in app.registrations:
        for key in declared_keys(component, options.name, "provides"):
            found.setdefault(key, []).append(options)
    return found


def _late(key: str, by: list[Options], priority: int) -> str:
    """Why a key provided by ``by`` is not there yet for a component of ``priority``."""
    first = min(by, key=lambda o: o.priority)
    when = "at the same priority" if first.priority == priority else f"at priority {first.priority}, later"
    return (
        f"{first.name!r} provides it {when} (a priority group is injected before its init): "
        f"give {first.name!r} a priority lower than {priority}"
    )


def _injections(app: App, report: CheckReport) -> dict[str, tuple[str, ...]]:
    """Resolve every ``Inject`` key statically; each component's injected keys, for the table."""
    providers = _providers(app)
    ready = set(app.services.keys())  # set before serving: the app's own and the user's
    injected: dict[str, tuple[str, ...]] = {}
    for priority in sorted({options.priority for _, options in app.registrations}):
        group = [(c, o) for c, o in app.registrations if o.priority == priority]
        for component, options in group:
            shown: list[str] = []
            for attribute, key, optional, text, problem in planned_injections(component):
                shown.append(text)
                if problem is not None:
                    report.problems.append(Problem(options.name, "inject", f"{attribute}: {problem}"))
                elif key is not None and key not in ready and not optional:
                    if key in providers:
                        reason = _late(key, providers[key], priority)
                    else:
                        reason = (
                            "no component provides it and it is not set before serving; declare it on the "
                            f"component that sets it (provides = ({key!r},)), or set it on app.services before boot"
                        )
                    report.problems.append(Problem(options.name, "inject", f"{attribute}: Inject({key!r}): {reason}"))
            injected[options.name] = tuple(shown)
        for component, options in group:
            ready.update(declared_keys(component, options.name, "provides"))
    return injected


def _preflight(app: App, settings: AppSettings, report: CheckReport) -> None:
    """The components' preflight (bind, reach), on the app's event loop; what they took is released."""
    if report.problems:  # a preflight reads the settings: with bad ones it would only fail again
        return
    for error in anyio.run(app.preflight, backend=settings.backend):
        report.problems.append(Problem(error.component, error.operation, error.detail or str(error.cause)))


def check_app(app: App) -> CheckReport:
    """Check ``app`` as a boot would before its first ``init``, without initialising anything.

    Settings, then the preflight (servers bind their port and let it go,
    Redis backends are reached), then every injection, resolved statically.
    """
    report = CheckReport(app=app.name)
    settings = _settings(app, report)
    _preflight(app, settings, report)
    injected = _injections(app, report)
    report.components = [
        _row(component, options, settings, injected[options.name]) for component, options in app.registrations
    ]
    return report
