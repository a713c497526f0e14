"""The pytest plugin of the test kit: its registration, fixtures, resets after a failed test, and the opt-in backends.

What must hold across tests (an override reset after a test that failed,
``--nacelle-backends`` parametrising a user's suite) is checked on real
pytest runs of small test files through ``pytester``; the fixtures also run
here, in this session, on both backends.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import anyio
import pytest
from _plugin import PLUGIN, installed
from pydantic_settings import BaseSettings

import nacelle_py.testing.plugin
from nacelle_py import App, Inject, Process
from nacelle_py.testing import Trace, running, test_app

pytest_plugins = ["pytester"]

LIMIT = 20.0


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider", *args)


class Idle(Process):
    """Runs until stopped."""

    async def run(self) -> None:
        await anyio.sleep_forever()


# -- registration and the fixtures, in this session --------------------------------------


def test_installing_the_package_registers_the_plugin(pytestconfig: pytest.Config) -> None:
    assert installed(), "no pytest11 entry point nacelle_py = nacelle_py.testing.plugin: reinstall the package"
    assert pytestconfig.pluginmanager.get_plugin("nacelle_py") is nacelle_py.testing.plugin


@pytest.mark.anyio
async def test_nacelle_logs_captures_what_an_app_logs(nacelle_logs: list[dict[str, object]]) -> None:
    app = test_app("logged")
    app.register(Idle(), name="idle")
    with anyio.fail_after(LIMIT):
        async with running(app):
            assert any(e["event"] == "app healthy; supervising" for e in nacelle_logs)
    idle = [e["event"] for e in nacelle_logs if e.get("component") == "idle"]
    assert idle[0] == "run starting" and "run cancelled" in idle  # no stop(): cancelled at the unwind


def test_nacelle_trace_is_a_fresh_trace(nacelle_trace: Trace) -> None:
    assert isinstance(nacelle_trace, Trace) and nacelle_trace.events == []


class Tick(BaseSettings):
    tick: float = 1.0


class Uses(Process):
    clock: str = Inject("clock")
    settings: Tick = Inject()

    async def run(self) -> None:
        await anyio.sleep_forever()


@pytest.mark.anyio
async def test_the_override_fixtures_apply_for_the_test(
    nacelle_override: Callable[[App, str, object], object], nacelle_settings: Callable[..., None]
) -> None:
    app = test_app("fixtures")
    app.services.set("clock", "real")
    uses = app.register(Uses(), name="uses")
    assert nacelle_override(app, "clock", "fake") == "fake"
    nacelle_settings(app, TICK="0.5")
    with anyio.fail_after(LIMIT):
        async with running(app):
            assert (uses.clock, uses.settings.tick) == ("fake", 0.5)


# -- resets across tests, on a real run --------------------------------------------------

SHARED_APP = """
import pytest
from pydantic_settings import BaseSettings
from nacelle_py import Initializer, Inject
from nacelle_py.testing import test_app


class Tick(BaseSettings):
    tick: float = 1.0


class Uses(Initializer):
    settings: Tick = Inject()


APP = test_app("shared")  # one app for the module: what leaks from one test would show in the next
APP.services.set("clock", "real")
APP.register(Uses(), name="uses")


def test_fails_with_overrides(nacelle_override, nacelle_settings):
    nacelle_override(APP, "clock", "fake")
    nacelle_override(APP, "never_set", "fake")  # would be reported, but the test failed already
    nacelle_settings(APP, TICK="5")
    assert APP.services.get("clock") == "fake" and APP.config.load(Tick).tick == 5
    assert False, "the test fails with its overrides applied"


def test_sees_nothing_of_them():
    assert APP.services.get("clock") == "real"
    assert APP.config.load(Tick).tick == 1.0


def test_a_misspelt_key_is_reported_at_teardown(nacelle_override):
    nacelle_override(APP, "clokc", "fake")
"""


def test_fixture_overrides_are_reset_after_a_failing_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shared=SHARED_APP)
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_a_misspelt_key_is_reported_at_teardown*",
            "*no service was ever registered under 'clokc'*",
        ]
    )
    assert "registered under 'never_set'" not in result.stdout.str()


# -- the opt-in backends -------------------------------------------------------------------

BACKEND_TEST = """
import anyio
import pytest
import sniffio
from nacelle_py import Process
from nacelle_py.testing import running, test_app

pytestmark = pytest.mark.anyio


class Idle(Process):
    async def run(self):
        await anyio.sleep_forever()


async def test_backend(anyio_backend):
    assert sniffio.current_async_library() == anyio_backend
    app = test_app()
    app.register(Idle(), name="idle")
    async with running(app) as handle:
        assert handle.health.healthy
"""


def ran_on(result: pytest.RunResult) -> list[str]:
    """The backends of the test ids that passed, in order (``[]`` for a test that was not parametrised)."""
    return re.findall(r"test_backend(?:\[(\w+)\])? PASSED", result.stdout.str())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--nacelle-backends"], ["asyncio", "trio"]),
        (["--nacelle-backends=trio"], ["trio"]),
        (["--nacelle-backends", "asyncio, trio"], ["asyncio", "trio"]),
    ],
    ids=["both", "trio", "listed"],
)
def test_the_backends_option_runs_every_anyio_test_on_each(
    pytester: pytest.Pytester, args: list[str], expected: list[str]
) -> None:
    pytester.makepyfile(test_backend=BACKEND_TEST)
    result = run(pytester, "-v", *args)
    result.assert_outcomes(passed=len(expected))
    assert ran_on(result) == expected


@pytest.mark.parametrize(
    "config",
    [
        "tox.ini: [pytest]\nnacelle_backends = trio asyncio\n",
        'pyproject.toml: [tool.pytest.ini_options]\nnacelle_backends = ["trio", "asyncio"]\n',
    ],
    ids=["ini", "pyproject"],
)
def test_the_ini_option_does_the_same(pytester: pytest.Pytester, config: str) -> None:
    name, _, text = config.partition(": ")
    pytester.path.joinpath(name).write_text(text)
    pytester.makepyfile(test_backend=BACKEND_TEST)
    result = run(pytester, "-v")
    result.assert_outcomes(passed=2)
    assert ran_on(result) == ["trio", "asyncio"]


def test_without_the_opt_in_anyio_keeps_its_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_backend=BACKEND_TEST)
    with_plugin = ran_on(run(pytester, "-v"))
    without = ran_on(pytester.runpytest("-p", "no:nacelle_py", "-p", "no:cacheprovider", "-v"))
    assert with_plugin == without and with_plugin


def test_a_projects_own_anyio_backend_fixture_wins(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return 'trio'\n")
    pytester.makepyfile(test_backend=BACKEND_TEST)
    result = run(pytester, "-v", "--nacelle-backends")
    result.assert_outcomes(passed=1)
    assert ran_on(result) == [""]  # the conftest's fixture, not parametrised (and the test checked it ran on trio)


@pytest.mark.parametrize("args", [["--nacelle-backends=curio"], ["--nacelle-backends="]], ids=["unknown", "empty"])
def test_a_bad_backend_is_a_usage_error(pytester: pytest.Pytester, args: list[str]) -> None:
    pytester.makepyfile(test_backend=BACKEND_TEST)
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nacelle-backends: backends are asyncio and trio, got*"])
