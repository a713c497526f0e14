"""``override_service`` and ``override_settings``: a fake or a setting for one block, reset on the way out.

Both are context managers over one ``App``, independent of ``running()``:
apply them before the app serves, and leave them after it has ended (the
``nacelle_override`` and ``nacelle_settings`` fixtures do the leaving at the
test's teardown). Leaving resets them whatever happened inside, a failed
assertion included, so nothing leaks into the next test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic_settings import BaseSettings

from .._app import App
from .._errors import ConfigError, ServiceError, SettingError
from ._access import check_app, started
from ._setting_names import Target, resolve

__all__ = ["override_service", "override_settings"]


@contextmanager
def override_service(app: App, key: str, fake: object) -> Iterator[object]:
    """Inside the block, the service ``key`` of ``app`` is ``fake``; yields ``fake``.

    The key need not be registered yet: a service an initializer sets in
    its ``init`` (``services.set("db", ...)``) is replaced the moment it is
    set, so every component injected after that, and every ``get``, has the
    fake (the initializer itself keeps the real one it made, and finalizes
    it). A service set before boot is replaced at once. An ``Inject``
    annotation still checks the fake's type. If the block ends without an
    error and nothing ever registered ``key`` (a typo, or a service that
    was never set), ``ServiceError`` says so.
    """
    app = check_app(app, "override_service()")
    with app.services.override(key, fake, allow_missing=True):
        yield fake
    if not app.services.has(key):
        known = ", ".join(app.services.keys())
        raise ServiceError(
            f"override_service(app, {key!r}, ...): no service was ever registered under {key!r}, so the fake "
            f"replaced nothing (registered: {known}); check the key, and that the component that sets it ran"
        )


@contextmanager
def override_settings(app: App, *models: type[BaseSettings], **values: Any) -> Iterator[None]:
    """Inside the block, ``app`` reads each setting of ``values`` as if it were set in the environment.

    A keyword names a setting by its env variable, with or without the app's
    prefix and in any case (``EXAMPLE_TICK=``, ``TICK=``, ``tick=``), or by
    the field name of the one settings model that has it (``path=`` for
    ``DbSettings.path``, read from ``DB_PATH``). The settings known are
    those ``--help`` lists (the framework's, and every model a registered
    component injects), those already loaded, and ``models``. A string is
    read exactly as the environment's value would be; any other value
    (``0.05``, ``tmp_path / "db"``, ``None``) is handed to the model as it is.
    Each value is validated at once, by its model: ``ConfigError`` names the
    env variable at fault. Apply it before the app serves (settings are
    loaded at boot); leaving the block restores what the environment says.
    """
    app = check_app(app, "override_settings()")
    if started(app):
        raise RuntimeError(
            f"override_settings(): app {app.name!r} has already started, and settings are loaded at boot; "
            "apply the override before running() (or serve())"
        )
    if not values:
        raise TypeError("override_settings(app, NAME=value, ...) takes at least one setting")
    names, targets = resolve(app, models, values)
    with app.config.override(names):
        _validate(app, targets, values)
        yield


def _validate(app: App, targets: list[Target], values: dict[str, Any]) -> None:
    """Build each model the overrides reach; ``ConfigError`` for the problems of the overridden fields."""
    problems: list[SettingError] = []
    for model in dict.fromkeys(target.model for target in targets):
        overridden = {target.field: target.keyword for target in targets if target.model is model}
        try:
            app.config.build(model)
        except ConfigError as exc:
            problems.extend(
                problem._replace(
                    message=f"{problem.message}; given as override_settings({overridden[problem.field]}=...)"
                )
                for problem in exc.errors
                if problem.field in overridden
            )
    if problems:
        error = ConfigError(problems)
        error.add_note("override_settings() validates each value as the environment's would be; fix the value")
        raise error
