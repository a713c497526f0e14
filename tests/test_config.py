"""Settings: env prefix and fallback, validation before any init, error reporting, masking, --help."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, Field, SecretBytes, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from structlog.testing import capture_logs

from nacelle_py import (
    DEFAULT,
    App,
    ComponentError,
    ComponentTimeoutError,
    Config,
    ConfigError,
    Health,
    Initializer,
    Inject,
    Process,
    RegistrationError,
    SettingError,
)
from nacelle_py._settings import AppSettings as AppSettingsModel
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio

MASK = "**********"
UNPREFIXED = (
    "TICK",
    "DB_URL",
    "DB_POOL",
    "TOKEN",
    "RAW",
    "PIN",
    "NAME",
    "CREDS",
    "LIMIT",
    "LOG_LEVEL",
    "LOG_ENCODING",
    "LOG_FIELDS",
    "START_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "INIT_TIMEOUT",
    "FINALIZE_TIMEOUT",
    "RELOAD_TIMEOUT",
    "LOOP_BLOCK_WARN",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing from the developer's shell leaks into these tests."""
    for key in list(os.environ):
        if key.startswith("T_") or key in UNPREFIXED:
            monkeypatch.delenv(key)
    yield


# -- models and components (module level so that Inject() annotations resolve) ----------------


class TickSettings(BaseSettings):
    """How often to tick."""

    tick: float = Field(description="Seconds between two ticks.")


class DbSettings(BaseSettings):
    """Where the database lives."""

    model_config = SettingsConfigDict(env_prefix="DB_")

    url: str = Field(description="The database URL.")
    pool: int = Field(5, description="Connections in the pool.")


class Creds(BaseModel):
    user: str
    password: SecretStr


class SecretSettings(BaseSettings):
    """Credentials."""

    name: str = "svc"
    token: SecretStr = Field(SecretStr("default-token-value"), description="API token.")
    raw: SecretBytes = Field(SecretBytes(b"default-raw-value"), description="Raw key.")
    pin: str = Field("default-pin-value", json_schema_extra={"secret": True}, description="A PIN.")


class SecretIntSettings(BaseSettings):
    pin: int = Field(json_schema_extra={"secret": True})


class NestedSettings(BaseSettings):
    creds: Creds


class JsonSettings(BaseSettings):
    limit: dict[str, int] = Field(default_factory=dict)


class TickUser(Initializer):
    settings: TickSettings = Inject()

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def init(self) -> None:
        self.seen.append(self.settings)


class DbUser(Initializer):
    settings: DbSettings = Inject()

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def init(self) -> None:
        self.seen.append(self.settings)


class SecretUser(Initializer):
    settings: SecretSettings = Inject()

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def init(self) -> None:
        self.seen.append(self.settings)


class SecretIntUser(Initializer):
    settings: SecretIntSettings = Inject()

    async def init(self) -> None:
        pass


class NestedUser(Initializer):
    settings: NestedSettings = Inject()

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def init(self) -> None:
        self.seen.append(self.settings)


class JsonUser(Initializer):
    settings: JsonSettings = Inject()

    async def init(self) -> None:
        pass


class Recorder(Initializer):
    """A component without settings that records whether its init ran."""

    def __init__(self, trace: Trace, label: str) -> None:
        self.trace = trace
        self.label = label

    async def init(self) -> None:
        self.trace.add(f"{self.label}.init")


async def serve(app: App) -> int:
    """Serve until every group is up (then shut down), or until boot fails."""
    app.on_ready(app.shutdown)
    with anyio.fail_after(10):
        return await app.serve()


def config_error(app: App) -> ConfigError:
    assert len(app.errors) == 1, app.errors
    error = app.errors[0]
    assert isinstance(error, ComponentError)
    assert error.operation == "config"
    assert isinstance(error.cause, ConfigError)
    assert error.__cause__ is error.cause
    return error.cause


def envs(error: ConfigError) -> set[str]:
    assert all(isinstance(e, SettingError) for e in error.errors)
    return {e.env for e in error.errors}


# -- loading ----------------------------------------------------------------------------------


async def test_prefixed_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TICK", "2.5")
    seen: list[Any] = []
    app = test_app("t")
    app.register(TickUser(seen), name="ticker")
    assert await serve(app) == 0
    assert [s.tick for s in seen] == [2.5]


async def test_unprefixed_variable_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICK", "3")
    seen: list[Any] = []
    app = test_app("t")
    app.register(TickUser(seen), name="ticker")
    assert await serve(app) == 0
    assert [s.tick for s in seen] == [3.0]


async def test_prefixed_variable_beats_unprefixed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICK", "3")
    monkeypatch.setenv("T_TICK", "4")
    seen: list[Any] = []
    app = test_app("t")
    app.register(TickUser(seen), name="ticker")
    assert await serve(app) == 0
    assert [s.tick for s in seen] == [4.0]


async def test_model_env_prefix_is_kept_between(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_URL", "sqlite://fallback")
    monkeypatch.setenv("T_DB_URL", "sqlite://prefixed")
    monkeypatch.setenv("DB_POOL", "7")  # only the fallback: still read
    monkeypatch.setenv("T_URL", "sqlite://wrong")  # the app prefix alone is not the field's name
    seen: list[Any] = []
    app = test_app("t")
    app.register(DbUser(seen), name="db")
    assert await serve(app) == 0
    assert [(s.url, s.pool) for s in seen] == [("sqlite://prefixed", 7)]


async def test_model_env_prefix_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_URL", "sqlite://fallback")
    seen: list[Any] = []
    app = test_app("t")
    app.register(DbUser(seen), name="db")
    assert await serve(app) == 0
    assert [s.url for s in seen] == ["sqlite://fallback"]


async def test_explicit_env_prefix_of_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOM_TICK", "6")
    monkeypatch.setenv("T_TICK", "1")
    seen: list[Any] = []
    app = test_app("t", env_prefix="CUSTOM_")
    app.register(TickUser(seen), name="ticker")
    assert await serve(app) == 0
    assert [s.tick for s in seen] == [6.0]


async def test_same_model_is_loaded_once_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TICK", "1")
    seen: list[Any] = []
    app = test_app("t")
    app.register(TickUser(seen), name="a")
    app.register(TickUser(seen), name="b", priority=1)
    assert await serve(app) == 0
    assert len(seen) == 2 and seen[0] is seen[1]


async def test_config_service_loads_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TICK", "1.5")
    got: list[float] = []

    class UsesConfig(Initializer):
        config = Inject("config")

        async def init(self) -> None:
            assert isinstance(self.config, Config)
            got.append(self.config.load(TickSettings).tick)

    app = test_app("t")
    app.register(UsesConfig(), name="c")
    assert await serve(app) == 0
    assert got == [1.5]


# -- validation before any init ---------------------------------------------------------------


async def test_every_model_is_validated_before_any_init(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TICK", "not-a-number")
    trace = Trace()
    seen: list[Any] = []
    app = test_app("t")
    app.register(Recorder(trace, "first"), name="first", priority=0)
    app.register(TickUser(seen), name="ticker", priority=1)
    app.register(DbUser(seen), name="db", priority=5)  # T_DB_URL missing
    app.register(Recorder(trace, "last"), name="last", priority=9)
    assert await serve(app) == 1
    assert trace.events == []
    assert seen == []
    error = config_error(app)
    assert envs(error) == {"T_TICK", "T_DB_URL"}  # both problems, in one error
    assert {(e.model, e.field) for e in error.errors} == {("TickSettings", "tick"), ("DbSettings", "url")}


async def test_missing_required(monkeypatch: pytest.MonkeyPatch) -> None:
    app = test_app("t")
    app.register(TickUser([]), name="ticker")
    assert await serve(app) == 1
    error = config_error(app)
    assert envs(error) == {"T_TICK"}
    (problem,) = error.errors
    assert "required" in problem.message
    assert "TICK" in problem.message  # the fallback name is mentioned too
    assert "T_TICK" in str(app.errors[0])
    assert "T_TICK" in str(error)


async def test_wrong_type_names_the_variable_and_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_DB_URL", "sqlite://x")
    monkeypatch.setenv("T_DB_POOL", "many")
    app = test_app("t")
    app.register(DbUser([]), name="db")
    assert await serve(app) == 1
    error = config_error(app)
    assert envs(error) == {"T_DB_POOL"}
    assert "many" in error.errors[0].message
    assert "pool" not in {e.env for e in error.errors}  # env names, not pydantic field paths


async def test_wrong_type_through_the_fallback_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICK", "soon")
    app = test_app("t")
    app.register(TickUser([]), name="ticker")
    assert await serve(app) == 1
    error = config_error(app)
    assert envs(error) <= {"T_TICK", "TICK"} and len(error.errors) == 1


async def test_bad_json_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LIMIT", "{not json")
    app = test_app("t")
    app.register(JsonUser(), name="j")
    assert await serve(app) == 1
    error = config_error(app)
    assert envs(error) == {"T_LIMIT"}


async def test_config_error_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    app = test_app("t")
    app.register(TickUser([]), name="ticker")
    with capture_logs() as logs:
        assert await serve(app) == 1
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["operation"] == "config"
    assert "T_TICK" in errors[0]["event"]
    assert not any(e["event"] == "config loaded" for e in logs)


async def test_secret_input_never_appears_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_PIN", "hunter2-secret-pin")
    app = test_app("t")
    app.register(SecretIntUser(), name="s")
    with capture_logs() as logs:
        assert await serve(app) == 1
    error = config_error(app)
    assert envs(error) == {"T_PIN"}
    assert "hunter2" not in str(error)
    assert "hunter2" not in str(app.errors[0])
    assert "hunter2" not in repr(error.errors)
    assert "hunter2" not in repr(logs)


async def test_secret_inside_a_nested_model_is_not_shown_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # the nested value is valid JSON but not an object: pydantic reports the whole input
    monkeypatch.setenv("T_CREDS", '["admin", "hunter2-secret"]')
    app = test_app("t")
    app.register(NestedUser([]), name="n")
    with capture_logs() as logs:
        assert await serve(app) == 1
    error = config_error(app)
    assert "T_CREDS" in envs(error)
    assert "hunter2" not in str(error)
    assert "hunter2" not in repr(logs)


# -- env file and secrets dir -----------------------------------------------------------------


async def test_env_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("T_TICK=2.5\n")
    seen: list[Any] = []
    app = test_app("t", env_file=env)
    app.register(TickUser(seen), name="ticker")
    assert await serve(app) == 0, app.errors
    assert [s.tick for s in seen] == [2.5]


async def test_env_file_unprefixed_fallback(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("TICK=3.5\n")
    seen: list[Any] = []
    app = test_app("t", env_file=env)
    app.register(TickUser(seen), name="ticker")
    assert await serve(app) == 0, app.errors
    assert [s.tick for s in seen] == [3.5]


async def test_environment_beats_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    env.write_text("T_TICK=2.5\n")
    monkeypatch.setenv("T_TICK", "9")
    seen: list[Any] = []
    app = test_app("t", env_file=env)
    app.register(TickUser(seen), name="ticker")
    assert await serve(app) == 0, app.errors
    assert [s.tick for s in seen] == [9.0]


async def test_one_env_file_shared_by_several_models(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("T_TICK=2.5\nT_DB_URL=sqlite://file\nT_LOG_LEVEL=debug\nOTHER_THING=1\n")
    seen: list[Any] = []
    app = test_app("t", env_file=env)
    app.register(TickUser(seen), name="ticker")
    app.register(DbUser(seen), name="db")
    assert await serve(app) == 0, [str(e) for e in app.errors]
    assert {type(s).__name__ for s in seen} == {"TickSettings", "DbSettings"}


async def test_secrets_dir(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("from-secrets-dir")
    seen: list[Any] = []
    app = test_app("t", secrets_dir=secrets)
    app.register(SecretUser(seen), name="s")
    assert await serve(app) == 0, app.errors
    assert seen[0].token.get_secret_value() == "from-secrets-dir"


async def test_environment_beats_secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("from-secrets-dir")
    monkeypatch.setenv("T_TOKEN", "from-env")
    seen: list[Any] = []
    app = test_app("t", secrets_dir=secrets)
    app.register(SecretUser(seen), name="s")
    assert await serve(app) == 0, app.errors
    assert seen[0].token.get_secret_value() == "from-env"


# -- the boot log of loaded values ------------------------------------------------------------


async def test_loaded_values_logged_once_with_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "tok-hunter2")
    monkeypatch.setenv("T_RAW", "raw-hunter2")
    monkeypatch.setenv("T_PIN", "pin-hunter2")
    monkeypatch.setenv("T_NAME", "visible-name")
    seen: list[Any] = []
    app = test_app("t")
    app.register(SecretUser(seen), name="s")
    app.register(SecretUser(seen), name="s2", priority=1)  # same model: still logged once
    with capture_logs() as logs:
        assert await serve(app) == 0
    assert seen[0].token.get_secret_value() == "tok-hunter2"  # the real value reached the component
    loaded = [e for e in logs if e["event"] == "config loaded" and e.get("settings") == "SecretSettings"]
    assert len(loaded) == 1
    values = loaded[0]["values"]
    assert values["name"] == "visible-name"
    assert values["token"] == MASK
    assert values["raw"] == MASK
    assert values["pin"] == MASK
    assert "hunter2" not in repr(logs)
    assert [e["log_level"] for e in loaded] == ["info"]


async def test_app_settings_are_logged_at_boot() -> None:
    app = test_app("t")
    with capture_logs() as logs:
        assert await serve(app) == 0
    loaded = [e for e in logs if e["event"] == "config loaded" and e.get("settings") == "AppSettings"]
    assert len(loaded) == 1
    assert loaded[0]["values"]["shutdown_timeout"] == 10.0
    assert loaded[0]["values"]["start_timeout"] == 60.0


async def test_nested_secret_is_masked_in_the_boot_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_CREDS", '{"user": "admin", "password": "nested-hunter2"}')
    seen: list[Any] = []
    app = test_app("t")
    app.register(NestedUser(seen), name="n")
    with capture_logs() as logs:
        assert await serve(app) == 0
    (loaded,) = [e for e in logs if e["event"] == "config loaded" and e.get("settings") == "NestedSettings"]
    assert loaded["values"]["creds"]["user"] == "admin"
    assert loaded["values"]["creds"]["password"] == MASK
    assert "nested-hunter2" not in repr(logs)


# -- app-wide settings change behaviour -------------------------------------------------------


class SlowInit(Initializer):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def init(self) -> None:
        await anyio.sleep(self.seconds)


class SlowFinalize(Initializer):
    async def finalize(self) -> None:
        await anyio.sleep(5)


class NeverHealthy(Process):
    health: Health = Inject("health")

    async def init(self) -> None:
        self.ok = self.health.register("never")

    async def run(self) -> None:
        await anyio.sleep_forever()


class IgnoresStop(Process):
    """Its stop() does not make run() return; only cancellation ends it."""

    def __init__(self, returns_after: float | None = None) -> None:
        self.returns_after = returns_after
        self.stopped = anyio.Event()

    async def run(self) -> None:
        await self.stopped.wait()
        if self.returns_after is not None:
            await anyio.sleep(self.returns_after)
            return
        await anyio.sleep_forever()

    async def stop(self) -> None:
        self.stopped.set()


async def test_init_timeout_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_INIT_TIMEOUT", "0.05")
    app = test_app("t")
    app.register(SlowInit(5), name="slow")
    assert await serve(app) == 1
    (error,) = app.errors
    assert isinstance(error, ComponentTimeoutError)
    assert (error.component, error.operation) == ("slow", "init")
    assert error.timeout == pytest.approx(0.05)


async def test_unprefixed_init_timeout_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INIT_TIMEOUT", "0.05")
    app = test_app("t")
    app.register(SlowInit(5), name="slow")
    assert await serve(app) == 1
    assert [(e.component, e.operation) for e in app.errors] == [("slow", "init")]


async def test_registration_option_beats_the_app_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_INIT_TIMEOUT", "0.05")
    app = test_app("t")
    app.register(SlowInit(0.3), name="slow", init_timeout=None)
    assert await serve(app) == 0, app.errors


async def test_start_timeout_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_START_TIMEOUT", "0.05")
    app = test_app("t")
    app.register(NeverHealthy(), name="pinger")
    assert await serve(app) == 1
    (error,) = app.errors
    assert isinstance(error, ComponentTimeoutError)
    assert error.operation == "start"
    assert "pinger" in str(error) and "never" in str(error)


async def test_shutdown_timeout_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SHUTDOWN_TIMEOUT", "0.05")
    app = test_app("t")
    app.register(IgnoresStop(), name="stubborn")
    assert await serve(app) == 1
    (error,) = app.errors
    assert isinstance(error, ComponentTimeoutError)
    assert (error.component, error.operation) == ("stubborn", "stop")


async def test_shutdown_timeout_none_means_no_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SHUTDOWN_TIMEOUT", "none")
    app = test_app("t")
    app.register(IgnoresStop(returns_after=0.2), name="slow", shutdown_timeout=DEFAULT)
    with capture_logs() as logs:
        assert await serve(app) == 0, app.errors
    (loaded,) = [e for e in logs if e["event"] == "config loaded" and e.get("settings") == "AppSettings"]
    assert loaded["values"]["shutdown_timeout"] is None


async def test_none_is_case_insensitive_and_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SHUTDOWN_TIMEOUT", "0.05")
    monkeypatch.setenv("T_START_TIMEOUT", "none")
    app = test_app("t")
    # 0.05 s from settings is replaced by "no limit" at registration
    app.register(IgnoresStop(returns_after=0.2), name="slow", shutdown_timeout=None)
    assert await serve(app) == 0, app.errors


async def test_finalize_timeout_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_FINALIZE_TIMEOUT", "0.05")
    app = test_app("t")
    app.register(SlowFinalize(), name="closer")
    assert await serve(app) == 1
    (error,) = app.errors
    assert isinstance(error, ComponentTimeoutError)
    assert (error.component, error.operation) == ("closer", "finalize")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("T_START_TIMEOUT", "-1"),
        ("T_SHUTDOWN_TIMEOUT", "0"),
        ("T_INIT_TIMEOUT", "nan"),
        ("T_FINALIZE_TIMEOUT", "inf"),
        ("T_RELOAD_TIMEOUT", "-2"),
        ("T_INIT_TIMEOUT", "soon"),
        ("T_LOG_LEVEL", "loud"),
        ("T_LOG_ENCODING", "xml"),
    ],
)
async def test_bad_app_setting_is_a_config_error(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    trace = Trace()
    app = test_app("t")
    app.register(Recorder(trace, "r"), name="r")
    assert await serve(app) == 1
    assert envs(config_error(app)) == {var}
    assert trace.events == []


async def test_bad_log_fields_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LOG_FIELDS", "env=prod")
    app = test_app("t")
    assert await serve(app) == 1
    assert envs(config_error(app)) == {"T_LOG_FIELDS"}


async def test_app_and_component_problems_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_START_TIMEOUT", "-3")
    app = test_app("t")
    app.register(TickUser([]), name="ticker")
    assert await serve(app) == 1
    assert envs(config_error(app)) == {"T_START_TIMEOUT", "T_TICK"}


# -- describe / --help ------------------------------------------------------------------------


def help_app() -> tuple[App, Trace]:
    trace = Trace()
    app = test_app("t")
    app.register(Recorder(trace, "r"), name="r")
    app.register(TickUser([]), name="ticker")
    app.register(DbUser([]), name="db")
    app.register(SecretUser([]), name="creds")
    return app, trace


def test_describe_lists_every_setting() -> None:
    app, trace = help_app()
    text = app.describe()
    for env in ("T_TICK", "TICK", "T_DB_URL", "DB_URL", "T_DB_POOL", "T_TOKEN", "T_RAW", "T_PIN", "T_NAME"):
        assert env in text
    # app-wide settings too
    for env in (
        "T_LOG_LEVEL",
        "T_LOG_ENCODING",
        "T_LOG_FIELDS",
        "T_START_TIMEOUT",
        "T_SHUTDOWN_TIMEOUT",
        "T_INIT_TIMEOUT",
        "T_FINALIZE_TIMEOUT",
        "T_RELOAD_TIMEOUT",
        "T_LOOP_BLOCK_WARN",
    ):
        assert env in text
    # types, required/default, descriptions
    assert "float" in text and "int" in text and "str" in text
    assert "required" in text
    assert "default: 5" in text
    assert "Seconds between two ticks." in text
    assert "The database URL." in text
    assert "Connections in the pool." in text
    # which component uses what
    assert "ticker" in text and "db" in text and "creds" in text
    assert trace.events == []


def test_describe_masks_secret_defaults() -> None:
    app, _ = help_app()
    text = app.describe()
    assert "default-token-value" not in text
    assert "default-raw-value" not in text
    assert "default-pin-value" not in text
    assert MASK in text
    assert "svc" in text  # the non-secret default is shown


def _block(text: str, env: str) -> str:
    """The lines describing one env variable (its line and the indented lines under it)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if env in line)
    out = [lines[start]]
    for line in lines[start + 1 :]:
        if line.startswith("      "):
            out.append(line)
        else:
            break
    return "\n".join(out)


def test_describe_entry_of_one_setting() -> None:
    app, _ = help_app()
    text = app.describe()
    block = _block(text, "T_DB_POOL")
    assert "DB_POOL" in block and "int" in block and "default: 5" in block and "Connections" in block
    block = _block(text, "T_TICK")
    assert "float" in block and "required" in block
    block = _block(text, "T_PIN")
    assert "secret" in block and "default-pin-value" not in block


def test_help_prints_and_returns_zero_without_init(capsys: pytest.CaptureFixture[str]) -> None:
    app, trace = help_app()  # T_TICK and T_DB_URL are missing: --help works anyway
    assert app.boot(["--help"]) == 0
    out = capsys.readouterr().out
    assert out == app.describe()
    assert "T_TICK" in out and "T_DB_URL" in out
    assert trace.events == []


def test_short_help_flag(capsys: pytest.CaptureFixture[str]) -> None:
    app, trace = help_app()
    assert app.boot(["-h"]) == 0
    assert "T_TICK" in capsys.readouterr().out
    assert trace.events == []


def test_help_mentions_env_file_and_secrets_dir(tmp_path: Path) -> None:
    app = test_app("t", env_file=tmp_path / ".env", secrets_dir=tmp_path / "secrets")
    text = app.describe()
    assert str(tmp_path / ".env") in text
    assert str(tmp_path / "secrets") in text


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_boot_with_missing_env_returns_one(backend: str) -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Recorder(trace, "r"), name="r")
    app.register(TickUser([]), name="ticker")
    app.on_ready(app.shutdown)
    assert app.boot([], backend=backend) == 1  # type: ignore[arg-type]
    assert trace.events == []
    assert envs(config_error(app)) == {"T_TICK"}


# -- env_fallback=False -----------------------------------------------------------------------


async def test_without_fallback_the_plain_name_is_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICK", "3")  # a shell's generic variable
    monkeypatch.setenv("DB_URL", "sqlite://plain")
    monkeypatch.setenv("T_DB_URL", "sqlite://prefixed")
    monkeypatch.setenv("DB_POOL", "7")  # only the plain name: not read, the default stays
    ticks: list[Any] = []
    dbs: list[Any] = []
    app = test_app("t", env_fallback=False)
    app.register(TickUser(ticks), name="ticker")
    app.register(DbUser(dbs), name="db")
    assert await serve(app) == 1  # T_TICK is required and unset: TICK does not count
    assert envs(config_error(app)) == {"T_TICK"}
    assert "also read from" not in str(config_error(app))
    monkeypatch.setenv("T_TICK", "4")
    app = test_app("t", env_fallback=False)
    app.register(TickUser(ticks), name="ticker")
    app.register(DbUser(dbs), name="db")
    assert await serve(app) == 0, app.errors
    assert [s.tick for s in ticks] == [4.0]
    assert [(s.url, s.pool) for s in dbs] == [("sqlite://prefixed", DbSettings.model_fields["pool"].default)]


async def test_without_fallback_the_framework_settings_ignore_plain_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "bogus")  # would be a config error if it were read
    monkeypatch.setenv("SHUTDOWN_TIMEOUT", "0.5")
    app = test_app("t", env_fallback=False)
    app.register(Recorder(Trace(), "r"), name="r")
    assert await serve(app) == 0, app.errors
    assert app.config.load(AppSettingsModel).shutdown_timeout == 10.0


async def test_without_fallback_env_file_and_secrets_use_the_prefixed_names(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("TICK=3.5\n")
    seen: list[Any] = []
    app = test_app("t", env_file=env, env_fallback=False)
    app.register(TickUser(seen), name="ticker")
    assert await serve(app) == 1
    assert envs(config_error(app)) == {"T_TICK"}
    env.write_text("TICK=3.5\nT_TICK=4.5\n")
    app = test_app("t", env_file=env, env_fallback=False)
    app.register(TickUser(seen), name="ticker")
    assert await serve(app) == 0, app.errors
    assert [s.tick for s in seen] == [4.5]


def test_without_fallback_help_lists_only_prefixed_names() -> None:
    app = test_app("t", env_fallback=False)
    app.register(TickUser([]), name="ticker")
    text = app.describe()
    assert "T_TICK" in text and "| TICK" not in text
    assert "no unprefixed fallback" in text
    default = test_app("t")
    default.register(TickUser([]), name="ticker")
    assert "T_TICK | TICK" in default.describe()


@pytest.mark.parametrize("option", ["env_fallback", "parse_args"])
def test_app_boolean_options_are_checked(option: str) -> None:
    with pytest.raises(RegistrationError, match=rf"App\({option}\): True or False, got 'no'"):
        App("t", **{option: "no"})  # type: ignore[arg-type]


# -- overrides (for tests: nacelle_py.testing.override_settings) -------------------------------


def test_an_override_beats_every_source_for_this_config_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("T_DB_URL", "from-env")
    (tmp_path / ".env").write_text("T_DB_POOL=7\n")
    config, other = Config("T_", env_file=tmp_path / ".env"), Config("T_")
    assert config.load(DbSettings).url == "from-env"
    with config.override({"db_url": "overridden", "T_DB_POOL": 9}):  # any case; prefixed or not
        assert (config.load(DbSettings).url, config.load(DbSettings).pool) == ("overridden", 9)
        assert other.load(DbSettings).url == "from-env"  # another app's config reads the environment
        assert os.environ["T_DB_URL"] == "from-env"  # which is left as it was
    assert (config.load(DbSettings).url, config.load(DbSettings).pool) == ("from-env", 7)


def test_an_override_string_is_decoded_as_the_environment_would_be() -> None:
    config = Config("T_")
    with config.override({"LIMIT": '{"a": 1}'}):
        assert config.load(JsonSettings).limit == {"a": 1}
    with config.override({"LIMIT": "not json"}), pytest.raises(ConfigError, match="T_LIMIT: cannot be decoded"):
        config.load(JsonSettings)
    with config.override({"T_LIMIT": {"b": "2"}}):  # not a string: validated as a value
        assert config.load(JsonSettings).limit == {"b": 2}


def test_overrides_nest_and_the_inner_one_wins() -> None:
    config = Config("T_")
    with config.override({"TICK": "1"}):
        with config.override({"T_TICK": "2"}):
            assert config.load(TickSettings).tick == 2
        assert config.load(TickSettings).tick == 1
    with pytest.raises(ConfigError, match="T_TICK: required but not set"):
        config.load(TickSettings)


async def test_an_invalid_framework_setting_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SHUTDOWN_TIMEOUT", "-1")
    app = test_app("t")
    app.register(TickUser([]), name="ticker")  # and a component's model with a problem of its own
    assert await serve(app) == 1
    assert sorted(e.env for e in config_error(app).errors) == ["T_SHUTDOWN_TIMEOUT", "T_TICK"]
