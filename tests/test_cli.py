"""The command line: `python -m nacelle_py run/check/config` (and the `nacelle-py` script) as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from nacelle_py import Initializer, Inject, RegistrationError, ServiceContainer
from nacelle_py.testing import test_app

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from harness import ROOT, AppProcess, clean_env  # noqa: E402

TIMEOUT = 60

PROBLEMS = """
from pydantic import SecretStr
from pydantic_settings import BaseSettings
from nacelle_py import App, Initializer, Inject, Process, ServiceContainer


class Keys(BaseSettings):
    token: SecretStr
    port: int = 80


class Cache(Initializer):
    provides = ("cache",)
    services: ServiceContainer = Inject("services")


class Late(Initializer):
    provides = ("late",)


class Needs(Process):
    cache: object = Inject("cache")        # provided at the same priority: too late
    late: object = Inject("late")          # provided at a higher priority: too late
    nothing: object = Inject("nothing")    # provided by nobody
    maybe: object = Inject("maybe", optional=True)  # optional: fine
    pre: object = Inject("pre")            # set before serving: fine
    keys: Keys = Inject()


def build() -> App:
    app = App("probe", handle_signals=False)
    app.services.set("pre", 1)
    app.register(Cache(), name="cache", priority=1)
    app.register(Needs(), name="needs", priority=1, restart="on_failure")
    app.register(Late(), name="late", priority=2)
    return app


def takes_args(x: int) -> App:
    return build()


def registers_badly() -> App:
    app = App("probe")
    app.register(Cache(), priority="high")
    return app


def boom() -> App:
    raise RuntimeError("the builder broke")


not_an_app = 42
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "probe_app.py").write_text(PROBLEMS)
    (tmp_path / "broken_import.py").write_text("import nacelle_py\nraise RuntimeError('broken at import')\n")
    return tmp_path


def cli(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    base = clean_env(**env)
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "nacelle_py", *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=TIMEOUT
    )


# -- usage -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["config"]])
def test_help_of_every_command(command: list[str]) -> None:
    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: python -m nacelle_py" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["check"], "the following arguments are required: target"),
        (["check", "--nope", "example_app:build_app"], "unrecognized arguments: --nope"),
        (["run", "--backend", "tornado", "example_app:build_app"], "invalid choice: 'tornado'"),
        (["check", "example_app"], "give the app as module:attribute"),
        (["check", "no_such_module:app"], "no module named 'no_such_module'"),
        (["check", "probe_app:missing"], "'probe_app' has no attribute 'missing'"),
        (["check", "probe_app:not_an_app"], "not_an_app is int, not an App"),
        (["check", "probe_app:takes_args"], "takes_args takes arguments"),
    ],
)
def test_argument_errors_are_clear_and_exit_two(project: Path, args: list[str], message: str) -> None:
    done = cli(*args, cwd=project)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failing_builder_or_module_exits_one_with_its_traceback(project: Path) -> None:
    done = cli("check", "probe_app:boom", cwd=project)
    assert done.returncode == 1 and "RuntimeError: the builder broke" in done.stderr
    done = cli("check", "broken_import:app", cwd=project)
    assert done.returncode == 1 and "RuntimeError: broken at import" in done.stderr
    done = cli("check", "probe_app:registers_badly", cwd=project)
    assert done.returncode == 1 and "priority must be an int" in done.stderr and "Traceback" not in done.stderr


# -- check -------------------------------------------------------------------------------------


def test_check_of_example_app_passes_and_prints_the_table() -> None:
    done = cli("check", "example_app:build_app")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "example: 8 components"
    for name in ("db", "jobs", "flows", "heartbeat", "load", "report", "flaky", "api"):
        assert any(line.startswith(f"{name} ") for line in lines), name
    flaky = next(line for line in lines if line.startswith("flaky "))
    assert "on_failure (max" in flaky
    assert lines[-1].startswith("ok: ")


def test_check_initialises_nothing(tmp_path: Path) -> None:
    db = tmp_path / "never.sqlite3"
    done = cli("check", "--json", "example_app:build_app", EXAMPLE_DB_PATH=str(db))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["problems"] == []
    rows = {row["name"]: row for row in report["components"]}
    assert rows["db"]["provides"] == ["db"] and rows["db"]["kind"] == "initializer"
    assert rows["heartbeat"]["health_keys"] == ["heartbeat"] and rows["api"]["health_keys"] == ["api"]
    assert rows["heartbeat"]["start_timeout"] == 5.0 and "db" in rows["heartbeat"]["injects"]
    assert not db.exists()  # the database initializer did not run


def test_check_lists_every_problem_at_once(project: Path) -> None:
    done = cli("check", "probe_app:build", cwd=project, PROBE_PORT="eighty")
    assert done.returncode == 1, done.stdout
    out = done.stdout
    assert "5 problems:" in out
    assert "PROBE_TOKEN: required but not set" in out
    assert "PROBE_PORT: Input should be a valid integer" in out
    assert "needs: cache: Inject('cache'): 'cache' provides it at the same priority" in out
    assert "give 'cache' a priority lower than 1" in out
    assert "needs: late: Inject('late'): 'late' provides it at priority 2, later" in out
    assert "needs: nothing: Inject('nothing'): no component provides it" in out
    assert "maybe" not in out.split("problems:")[1] and "pre:" not in out


def test_check_json_reports_the_same_problems(project: Path) -> None:
    done = cli("check", "--json", "probe_app:build", cwd=project, PROBE_TOKEN="s3cret-value")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    kinds = sorted((p["component"], p["kind"]) for p in report["problems"])
    assert kinds == [("needs", "inject")] * 3
    assert "s3cret-value" not in done.stdout


# -- config ------------------------------------------------------------------------------------


def test_config_lists_every_setting_with_its_value_and_masks_secrets() -> None:
    done = cli("config", "example_app:build_app", EXAMPLE_API_TOKEN="very-secret-token", EXAMPLE_TICK="0.5")
    assert done.returncode == 0, done.stderr
    assert "very-secret-token" not in done.stdout
    tick = next(line for line in done.stdout.splitlines() if line.strip().startswith("EXAMPLE_TICK"))
    assert "0.5" in tick and "EXAMPLE_TICK" in tick.split()[-1]  # the value, and where it came from
    done = cli("config", "--json", "example_app:build_app", EXAMPLE_API_TOKEN="very-secret-token")
    rows = {row["env"]: row for row in json.loads(done.stdout)["settings"]}
    token = rows["EXAMPLE_API_TOKEN"]
    assert token["secret"] is True and token["value"] == "**********" and token["set_by"] == "EXAMPLE_API_TOKEN"
    assert "very-secret-token" not in done.stdout
    level = rows["EXAMPLE_LOG_LEVEL"]
    assert level["also"] == ["LOG_LEVEL"] and level["default"] == "'info'" and level["required"] is False
    assert level["set_by"] is None and level["value"] == "info"


def test_config_shows_an_invalid_value_and_exits_one(project: Path) -> None:
    done = cli("config", "--json", "probe_app:build", cwd=project, PROBE_PORT="eighty", PROBE_TOKEN="hidden")
    assert done.returncode == 1
    rows = {row["env"]: row for row in json.loads(done.stdout)["settings"]}
    assert rows["PROBE_PORT"]["value"] == "eighty" and "valid integer" in rows["PROBE_PORT"]["error"]
    assert rows["PROBE_TOKEN"]["value"] == "**********" and rows["PROBE_TOKEN"]["required"] is True
    assert "hidden" not in done.stdout


# -- run ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_boots_the_app_and_exits_with_its_status(backend: str, tmp_path: Path) -> None:
    env = clean_env(EXAMPLE_DB_PATH=str(tmp_path / "x.sqlite3"), EXAMPLE_HTTP_PORT="0", EXAMPLE_OPS_ADDR="127.0.0.1:0")
    with AppProcess(["-m", "nacelle_py", "run", "--backend", backend, "example_app:build_app"], env) as app:
        assert app.wait_event("app starting", 30)["backend"] == backend
        app.wait_event("app healthy; supervising", 30)
        app.send(signal.SIGTERM)
        assert app.wait(15) == 0, app.dump()


def test_run_passes_the_rest_to_the_app(tmp_path: Path) -> None:
    done = cli("run", "example_app:build_app", "--bogus", EXAMPLE_DB_PATH=str(tmp_path / "x.sqlite3"))
    assert done.returncode == 2 and "unknown option '--bogus'" in done.stderr
    done = cli("run", "example_app:build_app", "--help")
    assert done.returncode == 0 and "EXAMPLE_TICK" in done.stdout


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "nacelle-py"
    if not script.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("the nacelle-py console script is missing: `make test` installs the package")
        pytest.skip("nacelle-py is not installed in this venv (pip install -e .)")
    done = subprocess.run(
        [str(script), "check", "example_app:build_app"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("example: 8 components")


# -- provides, in process ----------------------------------------------------------------------


class SetsUndeclared(Initializer):
    services: ServiceContainer = Inject("services")

    async def init(self) -> None:
        self.services.set("declared", 1)
        self.services.set("surprise", 2)

    provides = ("declared",)


@pytest.mark.anyio
async def test_a_service_set_without_provides_is_logged_once() -> None:
    app = test_app("t")
    app.register(SetsUndeclared(), name="sets")
    app.on_ready(app.shutdown)
    with structlog.testing.capture_logs() as logs:
        assert await app.serve() == 0
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert [e["key"] for e in warned] == ["surprise"]
    assert "nacelle-py check cannot see it" in warned[0]["event"]
    app.services.set("after", 3)  # outside serving: nothing to say


@pytest.mark.parametrize("bad", ["db", ("db", ""), ("db", 3), 5])
def test_bad_provides_is_a_registration_error(bad: object) -> None:
    class Bad(Initializer):
        provides = bad  # type: ignore[assignment]

    with pytest.raises(RegistrationError, match="bad: provides"):
        test_app("t").register(Bad(), name="bad")
