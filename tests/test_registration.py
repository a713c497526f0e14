"""Bad input: registration mistakes raise at once; runtime mistakes end the app with status 1, no hang."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field
from pydantic_settings import BaseSettings

from nacelle_py import (
    DEFAULT,
    App,
    ComponentError,
    ConfigError,
    Initializer,
    Inject,
    NacelleError,
    Options,
    Process,
    RegistrationError,
    ServiceContainer,
)
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio

TIMEOUTS = ("start_timeout", "shutdown_timeout", "init_timeout", "finalize_timeout", "reload_timeout")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("T_") or key in ("TICK", "LOG_LEVEL", "START_TIMEOUT", "INIT_TIMEOUT"):
            monkeypatch.delenv(key)
    yield


class Noop(Process):
    async def run(self) -> None:
        await anyio.sleep_forever()


class Plain(Initializer):
    pass


class NotAComponent:
    async def init(self) -> None:
        pass


async def serve(app: App) -> int:
    app.on_ready(app.shutdown)
    with anyio.fail_after(10):
        return await app.serve()


def raises(match_all: list[str]) -> Any:
    """pytest.raises(RegistrationError), then check every word appears in the message."""

    class _Check:
        def __enter__(self) -> None:
            self._ctx = pytest.raises(RegistrationError)
            self._info = self._ctx.__enter__()

        def __exit__(self, *exc: Any) -> bool:
            handled = self._ctx.__exit__(*exc)
            message = str(self._info.value)
            for word in match_all:
                assert word in message, f"{word!r} not in {message!r}"
            return bool(handled)

    return _Check()


# -- registration ---------------------------------------------------------------------------


def test_registration_error_is_a_nacelle_error() -> None:
    assert issubclass(RegistrationError, NacelleError)


def test_register_returns_the_instance() -> None:
    app = test_app("t")
    component = Noop()
    assert app.register(component, name="pinger") is component


@pytest.mark.parametrize("thing", [object(), NotAComponent(), 42, "pinger", None, lambda: None])
def test_non_component_is_rejected(thing: object) -> None:
    app = test_app("t")
    with raises(["pinger", "not a component", "Initializer"]):
        app.register(thing, name="pinger")  # type: ignore[type-var]


def test_non_component_without_name_names_its_type() -> None:
    app = test_app("t")
    with raises(["NotAComponent"]):
        app.register(NotAComponent())  # type: ignore[type-var]


def test_class_instead_of_instance() -> None:
    app = test_app("t")
    with raises(["Noop", "instance", "Noop()"]):
        app.register(Noop)  # type: ignore[type-var]


def test_class_instead_of_instance_with_a_name() -> None:
    app = test_app("t")
    with raises(["pinger", "instance"]):
        app.register(Noop, name="pinger")  # type: ignore[type-var]


def test_duplicate_component_name() -> None:
    app = test_app("t")
    app.register(Noop(), name="pinger")
    with raises(["duplicate", "pinger"]):
        app.register(Noop(), name="pinger")


def test_duplicate_default_name_suggests_a_name() -> None:
    app = test_app("t")
    app.register(Noop())
    with raises(["Noop", "name="]):
        app.register(Noop())


def test_same_instance_twice() -> None:
    app = test_app("t")
    component = Noop()
    app.register(component, name="a")
    with raises(["b", "already registered", "a"]):
        app.register(component, name="b")


@pytest.mark.parametrize("name", ["", "   ", 3, b"x"])
def test_bad_component_name(name: Any) -> None:
    app = test_app("t")
    with pytest.raises(RegistrationError, match="name"):
        app.register(Noop(), name=name)


@pytest.mark.parametrize("option", TIMEOUTS)
@pytest.mark.parametrize("value", [-1, -0.5, 0, 0.0, math.nan, math.inf, -math.inf, True, False, "5", [1]])
def test_bad_timeout(option: str, value: object) -> None:
    app = test_app("t")
    with raises(["pinger", option, "seconds"]):
        app.register(Noop(), name="pinger", **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("option", TIMEOUTS)
def test_huge_int_timeout(option: str) -> None:
    app = test_app("t")
    with raises(["pinger", option]):
        app.register(Noop(), name="pinger", **{option: 10**400})  # type: ignore[arg-type]


@pytest.mark.parametrize("option", TIMEOUTS)
@pytest.mark.parametrize("value", [1, 0.001, 2.5, 10**6, None, DEFAULT])
def test_good_timeout(option: str, value: object) -> None:
    app = test_app("t")
    app.register(Noop(), name="pinger", **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", [1.5, "1", None, True, 1j])
def test_non_int_priority(priority: object) -> None:
    app = test_app("t")
    with raises(["pinger", "priority"]):
        app.register(Noop(), name="pinger", priority=priority)  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", [-5, 0, 3, 10**9])
def test_int_priority(priority: int) -> None:
    app = test_app("t")
    app.register(Noop(), name="pinger", priority=priority)


@pytest.mark.parametrize("silent_exit", [1, 0, "yes", None])
def test_non_bool_silent_exit(silent_exit: object) -> None:
    app = test_app("t")
    with raises(["pinger", "silent_exit"]):
        app.register(Noop(), name="pinger", silent_exit=silent_exit)  # type: ignore[arg-type]


def test_rejected_registration_leaves_no_trace() -> None:
    """A rejected option does not reserve the name nor the instance."""
    app = test_app("t")
    component = Noop()
    with pytest.raises(RegistrationError):
        app.register(component, name="pinger", start_timeout=-1)
    assert app.register(component, name="pinger", start_timeout=1) is component


async def test_register_after_serve() -> None:
    app = test_app("t")
    app.register(Plain(), name="a")
    assert await serve(app) == 0
    with raises(["b", "started"]):
        app.register(Plain(), name="b")


async def test_register_while_serving() -> None:
    app = test_app("t")
    caught: list[BaseException] = []

    class Registers(Initializer):
        async def init(self) -> None:
            try:
                app.register(Plain(), name="late")
            except RegistrationError as exc:
                caught.append(exc)

    app.register(Registers(), name="r")
    assert await serve(app) == 0
    assert len(caught) == 1 and "late" in str(caught[0])


async def test_serve_twice() -> None:
    app = test_app("t")
    assert await serve(app) == 0
    with pytest.raises(RuntimeError, match="once"):
        await app.serve()


@pytest.mark.parametrize("name", ["", "---", 5])
def test_bad_app_name(name: Any) -> None:
    with pytest.raises(RegistrationError, match="name"):
        App(name, handle_signals=False)


def test_on_ready_needs_a_callable() -> None:
    app = test_app("t")
    with pytest.raises(RegistrationError):
        app.on_ready("not callable")  # type: ignore[arg-type]


def test_boot_with_unknown_backend() -> None:
    app = test_app("t")
    with pytest.raises(RegistrationError, match="backend"):
        app.boot([], backend="curio")  # type: ignore[arg-type]


# -- Inject with bad input --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", 5, b"db"])
def test_inject_with_a_bad_key(key: Any) -> None:
    with pytest.raises((TypeError, RegistrationError), match="Inject"):
        Inject(key)


def test_inject_with_non_bool_optional() -> None:
    with pytest.raises((TypeError, RegistrationError), match="optional"):
        Inject("db", optional="yes")  # type: ignore[arg-type]


class WantsMissing(Initializer):
    db = Inject("no-such-service")

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    async def init(self) -> None:
        self.trace.add("wants.init")


async def test_inject_with_an_unknown_key_fails_before_init() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(WantsMissing(trace), name="wants")
    assert await serve(app) == 1
    assert trace.events == []
    (error,) = app.errors
    assert (error.component, error.operation) == ("wants", "inject")
    assert "db" in str(error) and "no-such-service" in str(error)


# -- duplicate service key at run time --------------------------------------------------------


class SetsDb(Initializer):
    services: ServiceContainer = Inject("services")

    def __init__(self, trace: Trace, label: str, key: str = "db") -> None:
        self.trace = trace
        self.label = label
        self.key = key

    async def init(self) -> None:
        self.services.set(self.key, object())
        self.trace.add(f"{self.label}.init")

    async def finalize(self) -> None:
        self.trace.add(f"{self.label}.finalize")


async def test_duplicate_service_key_during_init() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(SetsDb(trace, "first"), name="first", priority=0)
    app.register(SetsDb(trace, "second"), name="second", priority=1)
    assert await serve(app) == 1
    (error,) = app.errors
    assert (error.component, error.operation) == ("second", "init")
    message = str(error)
    assert "second" in message and "init" in message and "'db'" in message and "duplicate" in message
    # what initialised is finalised
    assert trace.events == ["first.init", "first.finalize"]


async def test_overwriting_a_builtin_service_is_an_error() -> None:
    trace = Trace()
    app = test_app("t")
    app.register(SetsDb(trace, "x", key="logger"), name="x")
    assert await serve(app) == 1
    assert [(e.component, e.operation) for e in app.errors] == [("x", "init")]
    assert "logger" in str(app.errors[0])


# -- missing env: exit 1, no hang --------------------------------------------------------------


class NeedsTick(BaseSettings):
    tick: float = Field(description="Seconds between ticks.")


class Ticker(Process):
    settings: NeedsTick = Inject()

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    async def init(self) -> None:
        self.trace.add("ticker.init")

    async def run(self) -> None:
        await anyio.sleep_forever()


async def test_missing_required_env_exits_one_without_hanging() -> None:
    trace = Trace()
    app = App("t", handle_signals=True)  # also with signal handling asked for
    app.register(Ticker(trace), name="ticker")
    with anyio.fail_after(5):
        status = await app.serve()
    assert status == 1
    assert trace.events == []
    (error,) = app.errors
    assert isinstance(error, ComponentError) and error.operation == "config"
    assert isinstance(error.cause, ConfigError)
    assert [e.env for e in error.cause.errors] == ["T_TICK"]


# -- property-based: timeout options -----------------------------------------------------------


timeout_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(option=st.sampled_from(TIMEOUTS), value=timeout_values)
def test_timeout_option_is_rejected_or_a_positive_finite_float(option: str, value: object) -> None:
    app = test_app("t")
    try:
        app.register(Noop(), name="p", **{option: value})  # type: ignore[arg-type]
    except RegistrationError as exc:
        assert "p" in str(exc) and option in str(exc)
        rejected = True
    else:
        rejected = False
    try:
        options = Options(name="p", **{option: value})  # type: ignore[arg-type]
    except RegistrationError:
        assert rejected  # App.register and Options agree
        return
    assert not rejected
    stored = getattr(options, option)
    if value is None:
        assert stored is None
    else:
        assert isinstance(stored, float) and math.isfinite(stored) and stored > 0
        assert not isinstance(value, bool)
        assert stored == pytest.approx(float(value))  # type: ignore[arg-type]


@given(priority=st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=3), st.none()))
def test_priority_is_rejected_or_an_int(priority: object) -> None:
    app = test_app("t")
    valid = isinstance(priority, int) and not isinstance(priority, bool)
    if valid:
        app.register(Noop(), name="p", priority=priority)  # type: ignore[arg-type]
    else:
        with pytest.raises(RegistrationError, match="priority"):
            app.register(Noop(), name="p", priority=priority)  # type: ignore[arg-type]
