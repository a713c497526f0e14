"""The pytest plugin of nacelle_py (entry point ``pytest11``: installing nacelle_py is enough).

Fixtures: ``nacelle_logs`` (structlog's captured events, per test),
``nacelle_trace`` (a fresh ``Trace``), ``nacelle_override`` and
``nacelle_settings`` (``override_service`` / ``override_settings`` reset at
the test's teardown, even when it failed).

Opt-in: ``--nacelle-backends`` (or the ini option ``nacelle_backends``)
parametrises anyio's ``anyio_backend`` fixture over the backends named
(asyncio and trio by default), so that every ``anyio`` test runs on each.
Without it nothing about backends changes; a project's own
``anyio_backend`` fixture (in a conftest or a test module) always wins over
the plugin's. Disable the plugin with ``-p no:nacelle_py``.
"""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import structlog
from pydantic_settings import BaseSettings
from structlog.typing import EventDict

from .._app import App
from ._overrides import override_service, override_settings
from ._trace import Trace

__all__ = [
    "BACKENDS",
    "nacelle_logs",
    "nacelle_override",
    "nacelle_settings",
    "nacelle_trace",
    "pytest_addoption",
    "pytest_configure",
    "pytest_runtest_makereport",
]

BACKENDS = ("asyncio", "trio")
"""The backends ``--nacelle-backends`` runs on when it names none."""

_FAILED = pytest.StashKey[bool]()
"""Set on a test item whose setup or call failed: the override fixtures then reset without checking."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nacelle_py")
    group.addoption(
        "--nacelle-backends",
        dest="nacelle_backends",
        nargs="?",
        const=",".join(BACKENDS),
        default=None,
        metavar="BACKENDS",
        help="run every anyio test on each of these anyio backends (comma-separated; default: asyncio,trio). "
        "A project's own anyio_backend fixture wins.",
    )
    parser.addini(
        "nacelle_backends",
        type="args",
        default=[],
        help="anyio backends every anyio test runs on (e.g. 'asyncio trio'); empty: leave anyio's default.",
    )


def pytest_configure(config: pytest.Config) -> None:
    backends = _chosen_backends(config)
    if backends:
        config.pluginmanager.register(_backends_plugin(backends), "nacelle_py-backends")


def _chosen_backends(config: pytest.Config) -> tuple[str, ...]:
    """The backends asked for on the command line (first) or in the ini file; () when not asked."""
    given = config.getoption("nacelle_backends")
    source = "--nacelle-backends"
    if given is not None:
        names = [name.strip() for name in str(given).split(",")]
    else:
        names = [str(name) for name in config.getini("nacelle_backends")]
        source = "the ini option nacelle_backends"
        if not names:
            return ()
    names = [name for name in names if name]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise pytest.UsageError(f"{source}: backends are {' and '.join(BACKENDS)}, got {', '.join(names) or 'none'}")
    missing = [name for name in names if name != "asyncio" and importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"{source} names {', '.join(missing)}, which is not installed: pip install {' '.join(missing)}"
        )
    return tuple(dict.fromkeys(names))


def _backends_plugin(backends: tuple[str, ...]) -> types.ModuleType:
    """Registered only with the opt-in: a plugin whose ``anyio_backend`` fixture runs over ``backends``.

    Registered after anyio's plugin, so its fixture replaces anyio's; a
    conftest's or a test module's fixture of the same name is closer to the
    test and replaces this one. (A module, because pytest reads the fixtures
    of a plugin object from its class, and this one is made per run.)
    """
    plugin = types.ModuleType("nacelle_py.testing.plugin.backends", _backends_plugin.__doc__)

    # Module scope, as anyio's own fixture: a module's tests run on one backend, then the next,
    # and module-scoped async fixtures keep working.
    @pytest.fixture(scope="module", params=backends)
    def anyio_backend(request: pytest.FixtureRequest) -> str:
        """The anyio backend of this test (``--nacelle-backends``, or the ini option ``nacelle_backends``)."""
        return str(request.param)

    plugin.anyio_backend = anyio_backend  # type: ignore[attr-defined]
    return plugin


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        item.stash[_FAILED] = True
    return report


@pytest.fixture
def nacelle_logs() -> Iterator[list[EventDict]]:
    """Every event logged through structlog's configuration during the test (``capture_logs``).

    Apps built with ``test_app()`` (or ``App(..., logger=structlog.get_logger())``)
    log there; an app that builds its own logger from settings writes to its stream instead.
    """
    with structlog.testing.capture_logs() as logs:
        yield logs


@pytest.fixture
def nacelle_trace() -> Trace:
    """A fresh ``Trace`` for the test."""
    return Trace()


class _Overrides:
    """The overrides a test applied through a fixture, reset together at its teardown."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self.stack = ExitStack()

    def close(self) -> None:
        if self._request.node.stash.get(_FAILED, False):
            # The test failed already: reset without the checks a clean exit makes (they would only add noise).
            self.stack.__exit__(_TestFailed, _TestFailed(), None)
        else:
            self.stack.close()


class _TestFailed(Exception):
    """Stands for the test's own failure while the fixtures reset the overrides."""


@pytest.fixture
def nacelle_override(request: pytest.FixtureRequest) -> Iterator[Callable[[App, str, Any], Any]]:
    """``nacelle_override(app, key, fake)``: ``override_service`` until the test's teardown; returns ``fake``."""
    overrides = _Overrides(request)

    def override(app: App, key: str, fake: Any) -> Any:
        return overrides.stack.enter_context(override_service(app, key, fake))

    try:
        yield override
    finally:
        overrides.close()


@pytest.fixture
def nacelle_settings(request: pytest.FixtureRequest) -> Iterator[Callable[..., None]]:
    """``nacelle_settings(app, *models, **values)``: ``override_settings`` until the test's teardown."""
    overrides = _Overrides(request)

    def override(app: App, *models: type[BaseSettings], **values: Any) -> None:
        overrides.stack.enter_context(override_settings(app, *models, **values))

    try:
        yield override
    finally:
        overrides.close()
