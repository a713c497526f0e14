"""boot()'s command line: --help, --backend, usage errors (status 2), parse_args=False, the BACKEND setting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sniffio

from nacelle_py import App, Initializer, RegistrationError
from nacelle_py._argv import BootArgs, UsageError, parse_boot_args
from nacelle_py.testing import Trace, test_app

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from harness import ROOT, AppProcess, clean_env  # noqa: E402


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("BACKEND", "T_BACKEND"):
        monkeypatch.delenv(key, raising=False)
    yield


class Seen(Initializer):
    """Records the event loop its init ran on."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    async def init(self) -> None:
        self.trace.add(sniffio.current_async_library())


def app_on(trace: Trace, **kwargs: object) -> App:
    app = test_app("t", **kwargs)  # type: ignore[arg-type]
    app.register(Seen(trace), name="seen")
    app.on_ready(app.shutdown)
    return app


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], BootArgs()),
        (["-h"], BootArgs(help=True)),
        (["--help"], BootArgs(help=True)),
        (["--backend", "trio"], BootArgs(backend="trio")),
        (["--backend=asyncio"], BootArgs(backend="asyncio")),
        (["--backend", "trio", "--help"], BootArgs(help=True, backend="trio")),
    ],
)
def test_known_arguments(args: list[str], expected: BootArgs) -> None:
    assert parse_boot_args(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option '--bogus'"),
        (["serve"], "unknown argument 'serve'"),
        (["--backend"], "--backend needs a value"),
        (["--backend", "tornado"], "--backend: asyncio or trio, got 'tornado'"),
        (["--backend=", "x"], "--backend: asyncio or trio, got ''"),
        (["-h", "--verbose"], "unknown option '--verbose'"),
    ],
)
def test_unknown_or_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_boot_args(args)


# -- boot() ------------------------------------------------------------------------------------


def test_an_unknown_argument_starts_nothing_and_returns_two(capsys: pytest.CaptureFixture[str]) -> None:
    trace = Trace()
    assert app_on(trace).boot(["--bogus"]) == 2
    err = capsys.readouterr().err
    assert "t: unknown option '--bogus'" in err and "usage: t [-h | --help] [--backend asyncio|trio]" in err
    assert trace.events == []


def test_sys_argv_is_read_when_no_argv_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace()
    monkeypatch.setattr(sys, "argv", ["prog", "--nope"])
    assert app_on(trace).boot() == 2
    assert trace.events == []


def test_parse_args_false_leaves_the_command_line_to_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace()
    monkeypatch.setattr(sys, "argv", ["prog", "--my-own-flag", "--help"])
    assert app_on(trace, parse_args=False).boot() == 0  # neither an error nor the settings table
    assert trace.events == ["asyncio"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_backend_option_picks_the_loop(backend: str) -> None:
    trace = Trace()
    assert app_on(trace).boot(["--backend", backend]) == 0
    assert trace.events == [backend]


def test_backend_setting_is_read_when_no_backend_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace()
    monkeypatch.setenv("T_BACKEND", "Trio")  # words are case-insensitive, as the log level's
    assert app_on(trace).boot([]) == 0
    monkeypatch.setenv("T_BACKEND", "trio")
    assert app_on(trace).boot(["--backend", "asyncio"]) == 0  # the command line beats the setting
    assert app_on(trace).boot([], backend="asyncio") == 0  # so does the argument
    assert trace.events == ["trio", "asyncio", "asyncio"]


def test_an_invalid_backend_setting_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace()
    monkeypatch.setenv("T_BACKEND", "tornado")
    app = app_on(trace)
    assert app.boot([]) == 1
    assert trace.events == []
    assert "T_BACKEND" in str(app.errors[0]) and "tornado" in str(app.errors[0])


def test_a_bad_backend_argument_is_a_registration_error() -> None:
    with pytest.raises(RegistrationError, match=r"boot\(backend=...\): 'asyncio' or 'trio', got 'uvloop'"):
        app_on(Trace()).boot([], backend="uvloop")  # type: ignore[arg-type]


# -- as users run it ---------------------------------------------------------------------------


def test_example_app_refuses_an_unknown_argument(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "example_app", "--bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(EXAMPLE_DB_PATH=str(tmp_path / "x.sqlite3")),
    )
    assert done.returncode == 2, done.stderr
    assert "unknown option '--bogus'" in done.stderr and "usage:" in done.stderr
    assert not (tmp_path / "x.sqlite3").exists()  # nothing was started


@pytest.mark.parametrize("how", ["setting", "option"])
def test_example_app_runs_on_trio(how: str, tmp_path: Path) -> None:
    env = {"EXAMPLE_BACKEND": "trio"} if how == "setting" else {}
    args = ["-m", "example_app"] + (["--backend", "trio"] if how == "option" else [])
    env.update(EXAMPLE_DB_PATH=str(tmp_path / "x.sqlite3"), EXAMPLE_HTTP_PORT="0", EXAMPLE_OPS_ADDR="127.0.0.1:0")
    with AppProcess(args, clean_env(**env)) as app:
        started = app.wait_event("app starting", 30)
        assert started["backend"] == "trio"
        app.wait_event("app healthy; supervising", 30)
        app.send(signal.SIGTERM)
        assert app.wait(15) == 0, app.dump()
    assert os.path.exists(tmp_path / "x.sqlite3")
