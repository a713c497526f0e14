"""ServiceContainer: set/get, duplicates, factories, override; and the container inside an app."""

from __future__ import annotations

import threading

import anyio
import pytest

from nacelle_py import App, Initializer, Inject, ServiceContainer, ServiceError
from nacelle_py.testing import Trace, test_app

pytestmark = pytest.mark.anyio


async def serve(app: App) -> int:
    with anyio.fail_after(10):
        return await app.serve()


def test_set_and_get() -> None:
    services = ServiceContainer()
    value = object()
    services.set("thing", value)
    assert services.get("thing") is value
    assert services.has("thing") and "thing" in services
    assert "other" not in services and not services.has("other")
    assert services.keys() == ["thing"]


def test_get_missing_names_the_key_and_the_registered_ones() -> None:
    services = ServiceContainer()
    services.set("present", 1)
    with pytest.raises(ServiceError) as info:
        services.get("absent")
    assert isinstance(info.value, KeyError)  # callers may catch KeyError
    text = str(info.value)
    assert "'absent'" in text and "present" in text


def test_get_with_default() -> None:
    services = ServiceContainer()
    assert services.get("absent", None) is None
    assert services.get("absent", 7) == 7
    services.set("present", 0)
    assert services.get("present", 7) == 0


def test_duplicate_key_is_an_error_and_keeps_the_first() -> None:
    services = ServiceContainer()
    services.set("db", "first")
    with pytest.raises(ServiceError, match="duplicate service key 'db'"):
        services.set("db", "second")
    with pytest.raises(ServiceError):
        services.set_factory("db", lambda: "third")
    assert services.get("db") == "first"


@pytest.mark.parametrize("key", ["", None, 3])
def test_keys_are_non_empty_strings(key: object) -> None:
    with pytest.raises(ServiceError):
        ServiceContainer().set(key, 1)  # type: ignore[arg-type]


def test_none_is_a_valid_value() -> None:
    services = ServiceContainer()
    services.set("nothing", None)
    assert services.get("nothing") is None
    assert services.get("nothing", "default") is None


def test_singleton_factory_is_lazy_and_called_once() -> None:
    calls: list[int] = []

    def make() -> object:
        calls.append(1)
        return object()

    services = ServiceContainer()
    services.set_factory("lazy", make)
    assert calls == []
    first = services.get("lazy")
    assert services.get("lazy") is first
    assert calls == [1]


def test_non_singleton_factory_builds_every_time() -> None:
    services = ServiceContainer()
    services.set_factory("fresh", list, singleton=False)
    assert services.get("fresh") is not services.get("fresh")


def test_factory_must_be_callable() -> None:
    with pytest.raises(ServiceError):
        ServiceContainer().set_factory("x", 3)  # type: ignore[arg-type]


def test_type_lookup_never_calls_factories() -> None:
    calls: list[int] = []
    services = ServiceContainer()

    def make() -> str:
        calls.append(1)
        return "built"

    services.set_factory("lazy", make)
    services.set("plain", "value")
    assert services.find_by_type(str) == [("plain", "value")]
    assert calls == []


def test_override_replaces_temporarily() -> None:
    services = ServiceContainer()
    services.set("db", "real")
    with services.override("db", "fake"):
        assert services.get("db") == "fake"
    assert services.get("db") == "real"


def test_override_restores_after_an_exception() -> None:
    services = ServiceContainer()
    services.set("db", "real")
    with pytest.raises(RuntimeError), services.override("db", "fake"):
        raise RuntimeError
    assert services.get("db") == "real"


def test_override_of_a_factory() -> None:
    services = ServiceContainer()
    services.set_factory("db", lambda: "built")
    with services.override("db", "fake"):
        assert services.get("db") == "fake"
    assert services.get("db") == "built"


def test_override_of_a_missing_key_is_an_error() -> None:
    with pytest.raises(ServiceError, match="absent"), ServiceContainer().override("absent", 1):
        pass


def test_an_override_allowed_to_miss_applies_when_the_key_is_set() -> None:
    services = ServiceContainer()
    with services.override("db", "fake", allow_missing=True):
        assert "db" not in services
        services.set("db", "real")
        assert services.get("db") == "fake"
    assert services.get("db") == "real"


def test_an_override_allowed_to_miss_applies_to_a_factory_too() -> None:
    services = ServiceContainer()
    with services.override("db", "fake", allow_missing=True):
        services.set_factory("db", lambda: "built")
        assert services.get("db") == "fake"
    assert services.get("db") == "built"


def test_an_override_that_ended_before_the_set_leaves_nothing_behind() -> None:
    services = ServiceContainer()
    with services.override("db", "fake", allow_missing=True):
        pass
    services.set("db", "real")
    assert services.get("db") == "real"


def test_two_containers_do_not_share_services() -> None:
    one, two = ServiceContainer(), ServiceContainer()
    one.set("x", 1)
    assert "x" not in two
    two.set("x", 2)
    assert (one.get("x"), two.get("x")) == (1, 2)


def test_concurrent_set_of_one_key_succeeds_once() -> None:
    services = ServiceContainer()
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            services.set("shared", i)
            outcomes.append("ok")
        except ServiceError:
            outcomes.append("dup")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert outcomes.count("ok") == 1 and outcomes.count("dup") == 7


def test_app_pre_registers_its_services() -> None:
    app = test_app("t")
    assert {"services", "config", "logger", "health"} <= set(app.services.keys())
    assert app.services.get("services") is app.services
    assert app.services.get("config") is app.config


async def test_duplicate_key_inside_init_is_an_init_error() -> None:
    trace = Trace()

    class Setter(Initializer):
        services: ServiceContainer = Inject("services")

        def __init__(self, name: str) -> None:
            self.name = name

        async def init(self) -> None:
            self.services.set("db", self.name)
            trace.add(f"{self.name}.init")

        async def finalize(self) -> None:
            trace.add(f"{self.name}.finalize")

    app = test_app("t")
    app.register(Setter("one"), name="one")
    app.register(Setter("two"), name="two", priority=1)
    assert await serve(app) == 1
    assert [(e.component, e.operation) for e in app.errors] == [("two", "init")]
    assert isinstance(app.errors[0].cause, ServiceError)
    assert "db" in str(app.errors[0])
    assert trace.events == ["one.init", "one.finalize"]
    assert app.services.get("db") == "one"


async def test_services_set_from_a_worker_thread_init() -> None:
    class ThreadSetter(Initializer):
        services: ServiceContainer = Inject("services")

        def init(self) -> None:  # runs in a worker thread
            self.services.set("from-thread", threading.get_ident())

    class Reader(Initializer):
        value = Inject("from-thread")

        async def init(self) -> None:
            self.seen = self.value

    app = test_app("t")
    app.register(ThreadSetter(), name="setter")
    reader = app.register(Reader(), name="reader", priority=1)
    app.on_ready(app.shutdown)
    assert await serve(app) == 0, app.errors
    assert reader.seen != threading.get_ident()


def test_forget_unregisters_what_one_component_set_and_keeps_its_overrides() -> None:
    from nacelle_py._services import setting_as

    services = ServiceContainer()
    services.set("shared", "kept")  # set outside any component's init: nobody's to forget
    with setting_as("db"):
        services.set("db", "first")
        services.set_factory("pool", lambda: "pool-1")
    with setting_as("cache"):
        services.set("cache", "c")
    with services.override("db", "fake"):
        assert services.forget("db") == ["db", "pool"]
        assert services.keys() == ["shared", "cache"]
        with setting_as("db"):  # the next incarnation's init() sets them again: no duplicate key
            services.set("db", "second")
            services.set_factory("pool", lambda: "pool-2")
        assert services.get("db") == "fake"  # the override still in force applies to the new service
        assert services.get("pool") == "pool-2"
    assert services.get("db") == "second"
    assert services.forget("nobody") == []
    assert services.forget("db") == ["db", "pool"]
