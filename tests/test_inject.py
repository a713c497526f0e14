"""Injection: by key, optional, by annotated type, settings models, errors and pre-registered services."""

from __future__ import annotations

import io
from typing import Any

import anyio
import pytest
import structlog
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from nacelle_py import (
    App,
    ComponentError,
    Config,
    ConfigError,
    Health,
    Initializer,
    Inject,
    InjectionError,
    Process,
    ServiceContainer,
)
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio


async def serve(app: App) -> int:
    with anyio.fail_after(10):
        return await app.serve()


def ops(app: App) -> list[tuple[str, str]]:
    return [(e.component, e.operation) for e in app.errors]


class Db:
    """A fake service type, looked up by type."""

    def __init__(self, url: str = "mem") -> None:
        self.url = url


class Cache:
    pass


class DbSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NTDB_")

    url: str = Field(description="Where the database is.")
    port: int = 5432
    password: SecretStr = SecretStr("")


class MakeDb(Initializer):
    """Sets ``db`` (a ``Db``) into the container."""

    services: ServiceContainer = Inject("services")

    def __init__(self, trace: Trace, key: str = "db") -> None:
        self.trace, self.key = trace, key

    async def init(self) -> None:
        self.services.set(self.key, Db())
        self.trace.add("make.init")

    async def finalize(self) -> None:
        self.trace.add("make.finalize")


class Recorder(Initializer):
    def __init__(self, trace: Trace, name: str) -> None:
        self.trace, self.name = trace, name

    async def init(self) -> None:
        self.trace.add(f"{self.name}.init")

    async def finalize(self) -> None:
        self.trace.add(f"{self.name}.finalize")


class UsesDbByKey(Initializer):
    db = Inject("db")

    async def init(self) -> None:
        self.seen = self.db


class UsesDbByType(Initializer):
    db: Db = Inject()

    async def init(self) -> None:
        self.seen = self.db


class UsesOptional(Initializer):
    missing: Db | None = Inject("nope", optional=True)
    missing_by_type: Cache | None = Inject(optional=True)

    async def init(self) -> None:
        self.seen = (self.missing, self.missing_by_type)


class NeedsMissing(Initializer):
    x = Inject("notset")

    async def init(self) -> None:
        raise AssertionError("init must not run when injection failed")


class WrongType(Initializer):
    db: int = Inject("db")

    async def init(self) -> None:
        raise AssertionError("init must not run when injection failed")


class WithSettings(Initializer):
    settings: DbSettings = Inject()

    async def init(self) -> None:
        self.seen = self.settings


async def test_inject_by_key_from_a_lower_priority() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(MakeDb(trace), name="make")
    user = app.register(UsesDbByKey(), name="user", priority=1)
    app.on_ready(app.shutdown)
    assert await serve(app) == 0, app.errors
    assert isinstance(user.seen, Db)
    assert user.seen is app.services.get("db")


async def test_inject_by_annotated_type() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(MakeDb(trace), name="make")
    user = app.register(UsesDbByType(), name="user", priority=1)
    app.on_ready(app.shutdown)
    assert await serve(app) == 0, app.errors
    assert user.seen is app.services.get("db")


async def test_inject_by_type_with_two_candidates_is_an_error() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(MakeDb(trace, "db1"), name="make1")
    app.register(MakeDb(trace, "db2"), name="make2")
    app.register(UsesDbByType(), name="user", priority=1)
    assert await serve(app) == 1
    assert ops(app) == [("user", "inject")]
    text = str(app.errors[0])
    assert "db1" in text and "db2" in text and "user" in text


async def test_optional_injection_leaves_none() -> None:
    app = test_app("t")
    user = app.register(UsesOptional(), name="user")
    app.on_ready(app.shutdown)
    assert await serve(app) == 0, app.errors
    assert user.seen == (None, None)


async def test_optional_injection_takes_the_service_when_present() -> None:
    class Opt(Initializer):
        db = Inject("db", optional=True)

        async def init(self) -> None:
            self.seen = self.db

    trace = Trace()
    app = test_app("t")
    app.register(MakeDb(trace), name="make")
    user = app.register(Opt(), name="user", priority=1)
    app.on_ready(app.shutdown)
    assert await serve(app) == 0
    assert isinstance(user.seen, Db)


async def test_missing_service_is_reported_before_any_init_of_the_group() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(Recorder(trace, "a"), name="a")
    app.register(Recorder(trace, "b"), name="b", priority=1)
    app.register(NeedsMissing(), name="needy", priority=1)
    app.register(Recorder(trace, "c"), name="c", priority=2)
    assert await serve(app) == 1
    assert ops(app) == [("needy", "inject")]
    err = app.errors[0]
    assert isinstance(err, ComponentError)
    assert isinstance(err.cause, InjectionError)
    assert err.cause.component == "needy" and err.cause.attribute == "x"
    assert "needy" in str(err) and "'x'" in str(err) and "notset" in str(err)
    assert trace.events == ["a.init", "a.finalize"]  # b (same group) never initialised


async def test_every_injection_error_of_a_group_is_reported() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(MakeDb(trace), name="make")
    app.register(NeedsMissing(), name="one", priority=1)
    app.register(WrongType(), name="two", priority=1)
    assert await serve(app) == 1
    assert sorted(ops(app)) == [("one", "inject"), ("two", "inject")]


async def test_wrong_type_names_component_attribute_and_types() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(MakeDb(trace), name="make")
    app.register(WrongType(), name="wrong", priority=1)
    with structlog.testing.capture_logs() as logs:
        assert await serve(app) == 1
    assert ops(app) == [("wrong", "inject")]
    cause = app.errors[0].cause
    assert isinstance(cause, InjectionError)
    assert (cause.component, cause.attribute) == ("wrong", "db")
    text = str(app.errors[0])
    assert "Db" in text and "int" in text
    assert "is a Db, but the attribute is annotated int" in text, text
    logged = [e for e in logs if e.get("log_level") == "error" and e.get("component") == "wrong"]
    assert len(logged) == 1 and logged[0]["operation"] == "inject"
    assert trace.events == ["make.init", "make.finalize"]


async def test_injection_error_in_a_later_group_stops_running_processes() -> None:
    trace = Trace()

    class P(Process):
        async def init(self) -> None:
            self.done = anyio.Event()

        async def run(self) -> None:
            trace.add("p.run")
            await self.done.wait()

        async def stop(self) -> None:
            trace.add("p.stop")
            self.done.set()

    app = test_app("t")
    app.register(P(), name="p")
    app.register(NeedsMissing(), name="needy", priority=1)
    assert await serve(app) == 1
    assert trace.events == ["p.run", "p.stop"]


async def test_injected_attribute_read_before_injection_says_so() -> None:
    with pytest.raises(AttributeError, match="injected"):
        UsesDbByKey().db  # noqa: B018


def test_inject_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        Inject("")
    with pytest.raises(TypeError):
        Inject("x", optional="yes")  # type: ignore[arg-type]


# -- settings --------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("T_NTDB_URL", "NTDB_URL", "T_NTDB_PORT", "NTDB_PORT", "T_NTDB_PASSWORD", "NTDB_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


async def test_settings_model_injected_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("T_NTDB_URL", "postgres://prefixed")
    clean_env.setenv("NTDB_URL", "postgres://plain")
    clean_env.setenv("NTDB_PORT", "6000")
    app = test_app("t")
    user = app.register(WithSettings(), name="user")
    app.on_ready(app.shutdown)
    assert await serve(app) == 0, app.errors
    assert isinstance(user.seen, DbSettings)
    assert user.seen.url == "postgres://prefixed"  # the app prefix wins
    assert user.seen.port == 6000  # the unprefixed name works too


async def test_settings_model_shared_between_components(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("T_NTDB_URL", "x")
    app = test_app("t")
    one = app.register(WithSettings(), name="one")
    two = app.register(WithSettings(), name="two", priority=1)
    app.on_ready(app.shutdown)
    assert await serve(app) == 0
    assert one.seen is two.seen


async def test_settings_errors_reported_together_before_any_init(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("T_NTDB_PORT", "not-a-port")
    trace = Trace()
    app = test_app("t")
    app.register(Recorder(trace, "first"), name="first")
    app.register(WithSettings(), name="user", priority=9)
    assert await serve(app) == 1
    assert trace.events == []  # nothing initialised
    assert [e.operation for e in app.errors] == ["config"]
    cause = app.errors[0].cause
    assert isinstance(cause, ConfigError)
    envs = {e.env for e in cause.errors}
    assert {"T_NTDB_URL", "T_NTDB_PORT"} <= envs
    assert "T_NTDB_URL" in str(app.errors[0]) and "T_NTDB_PORT" in str(app.errors[0])


async def test_secret_settings_are_masked_in_the_boot_log(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("T_NTDB_URL", "x")
    clean_env.setenv("T_NTDB_PASSWORD", "hunter2")
    app = test_app("t")
    user = app.register(WithSettings(), name="user")
    app.on_ready(app.shutdown)
    with structlog.testing.capture_logs() as logs:
        assert await serve(app) == 0
    assert user.seen.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(logs)
    loaded = [e for e in logs if e.get("event") == "config loaded" and e.get("settings") == "DbSettings"]
    assert len(loaded) == 1


# -- pre-registered services -----------------------------------------------------------


class UsesBuiltins(Initializer):
    services: ServiceContainer = Inject("services")
    config: Config = Inject("config")
    logger: Any = Inject("logger")
    health: Health = Inject("health")

    async def init(self) -> None:
        self.logger.info("hello from init")
        self.flag = self.health.register("builtin-user")
        self.flag.update(True)


async def test_pre_registered_services() -> None:
    app = test_app("t")
    user = app.register(UsesBuiltins(), name="user")
    app.on_ready(app.shutdown)
    with structlog.testing.capture_logs() as logs:
        assert await serve(app) == 0, app.errors
    assert user.services is app.services
    assert user.config is app.config
    hello = [e for e in logs if e["event"] == "hello from init"]
    assert len(hello) == 1 and hello[0]["component"] == "user"
    status = {s.key: s for s in app.health.statuses()}["builtin-user"]
    assert status.component == "user" and status.healthy


async def test_pre_registered_services_by_type() -> None:
    class ByType(Initializer):
        services: ServiceContainer = Inject()
        config: Config = Inject()
        health: Health = Inject()

        async def init(self) -> None:
            self.health.register("typed").update(True)

    app = test_app("t")
    user = app.register(ByType(), name="typed-user")
    app.on_ready(app.shutdown)
    assert await serve(app) == 0, app.errors
    assert user.services is app.services and user.config is app.config
    assert {s.key: s.component for s in app.health.statuses()}["typed"] == "typed-user"


async def test_each_component_gets_its_own_logger() -> None:
    class Logs(Initializer):
        logger: Any = Inject("logger")

        async def init(self) -> None:
            self.logger.info("mine")

    app = test_app("t")
    app.register(Logs(), name="one")
    app.register(Logs(), name="two")
    app.on_ready(app.shutdown)
    with structlog.testing.capture_logs() as logs:
        assert await serve(app) == 0
    assert sorted(e["component"] for e in logs if e["event"] == "mine") == ["one", "two"]


async def test_overriding_a_service_for_a_test() -> None:
    class Uses(Initializer):
        db = Inject("db")

        async def init(self) -> None:
            self.seen = self.db

    app = test_app("t")
    app.services.set("db", Db("real"))
    user = app.register(Uses(), name="user")
    app.on_ready(app.shutdown)
    fake = Db("fake")
    with app.services.override("db", fake):
        assert await serve(app) == 0
    assert user.seen is fake


async def test_unresolvable_annotation_does_not_break_other_attributes() -> None:
    class Local:
        pass

    class Mixed(Initializer):
        services: ServiceContainer = Inject()
        local: Local | None = Inject("absent", optional=True)

        async def init(self) -> None:
            self.seen = self.services

    app = test_app("t")
    user = app.register(Mixed(), name="mixed")
    app.on_ready(app.shutdown)
    assert await serve(app) == 0, app.errors
    assert user.seen is app.services


async def test_a_protocol_annotation_is_not_isinstance_checked() -> None:
    """structlog's FilteringBoundLogger is a runtime-checkable protocol its own loggers do not fully satisfy."""
    from structlog.typing import FilteringBoundLogger

    seen: list[object] = []

    class UsesLogger(Initializer):
        logger: FilteringBoundLogger = Inject("logger")

        async def init(self) -> None:
            seen.append(self.logger)

    app = App("t", handle_signals=False, log_stream=io.StringIO())
    app.register(UsesLogger(), name="uses")
    with anyio.fail_after(10):
        assert await app.serve() == 0, app.errors
    assert len(seen) == 1


async def test_wrong_type_message_reads_as_english() -> None:
    class Put(Initializer):
        services: ServiceContainer = Inject("services")

        def init(self) -> None:
            self.services.set("count", 3)

    class Wants(Initializer):
        count: str = Inject("count")

    app = test_app("t")
    app.register(Put(), name="put")
    app.register(Wants(), name="wants", priority=1)
    assert await serve(app) == 1
    assert "service 'count' is an int, but the attribute is annotated str" in str(app.errors[0])  # not "a int"
