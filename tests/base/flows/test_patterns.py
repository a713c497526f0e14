"""Flows that cannot run are refused before anything runs, with the names involved and what to change.

Structural mistakes (cycles, two providers, duplicate names, racing
siblings) are refused when the flow is built; a value nobody provides, when
it is run or loaded. Bad arguments to every public function and class are a
TypeError or ValueError that names the culprit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pydantic
import pytest

from nacelle_py.base import flows

from ._tasks import Step
from .conftest import EngineUnderTest

pytestmark = pytest.mark.anyio


def step(name: str, requires: tuple[str, ...] = (), provides: str | None = None) -> Step:
    return Step(name, [], requires=requires, provides=provides)


# Structure, refused when the flow is built ---------------------------------------------------------


def test_flow_error_is_a_value_error() -> None:
    assert issubclass(flows.FlowError, ValueError)


def test_a_cycle_in_the_data_is_refused_naming_it() -> None:
    with pytest.raises(flows.FlowError, match=r"graph flow 'g' has a cycle: '(a|b)' -> '(a|b)' -> '(a|b)'"):
        flows.graph("g", step("a", ("y",), "x"), step("b", ("x",), "y"))


def test_a_cycle_through_links_is_refused_naming_it() -> None:
    a, b, c = step("a", provides="x"), step("b", ("x",)), step("c")
    with pytest.raises(flows.FlowError, match=r"cycle: .*'a'.*'b'.*'c'"):
        flows.graph("g", a, b, c, links=[(b, c), (c, a)])
    g = flows.graph("g2", step("p", provides="v"), step("q", ("v",)))
    g.link("q", "p")
    with pytest.raises(flows.FlowError, match="cycle"):
        flows.graph("outer", g)  # checked again when used


def test_two_providers_of_one_value_in_a_graph_are_refused() -> None:
    with pytest.raises(flows.FlowError, match=r"'x', required by 'c', is provided by both 'a' and 'b'"):
        flows.graph("g", step("a", provides="x"), step("b", provides="x"), step("c", ("x",)))


def test_two_unordered_providers_before_a_task_are_refused() -> None:
    with pytest.raises(flows.FlowError, match=r"'x', required by 'c', is provided by both 'a' and 'b'"):
        flows.linear("f", flows.unordered("u", step("a", provides="x"), step("b", provides="x")), step("c", ("x",)))


def test_a_later_provider_overrides_an_earlier_one_in_a_linear_flow() -> None:
    flows.linear("f", step("a", provides="x"), step("b", provides="x"), step("c", ("x",)))  # the latest wins


@pytest.mark.parametrize("kind", ["linear", "unordered", "graph"])
def test_two_atoms_with_one_name_are_refused(kind: str) -> None:
    build = {"linear": flows.linear, "unordered": flows.unordered, "graph": flows.graph}[kind]
    with pytest.raises(flows.FlowError, match=r"two atoms are named 'dup' \(task Step and task Step\)"):
        build("f", step("dup"), step("dup"))


def test_duplicate_names_across_nested_flows_and_controllers_are_refused() -> None:
    with pytest.raises(flows.FlowError, match="two atoms are named 'a'"):
        flows.linear("f", step("a"), flows.unordered("u", step("b"), flows.linear("l", step("a"))))
    with pytest.raises(flows.FlowError, match=r"'sub.retry'.*retry controller of 'sub'"):
        flows.linear("f", step("sub.retry"), flows.linear("sub", step("b"), retry=flows.Times(2)))
    with pytest.raises(flows.FlowError, match="'judge'"):
        flows.linear(
            "f",
            flows.linear("one", step("a"), retry=flows.Times(2, name="judge")),
            flows.linear("two", step("b"), retry=flows.Times(2, name="judge")),
        )


def test_an_unordered_sibling_needing_what_another_provides_is_refused() -> None:
    with pytest.raises(flows.FlowError, match=r"unordered flow 'u': 'b' requires 'x', which its sibling 'a' provides"):
        flows.unordered("u", step("a", provides="x"), step("b", ("x",)))
    with pytest.raises(flows.FlowError, match=r"'right' requires 'x', which its sibling 'left' provides"):
        flows.unordered("u", flows.linear("left", step("a", provides="x")), flows.linear("right", step("b", ("x",))))


def test_a_subflow_that_provides_its_own_need_is_no_sibling_clash() -> None:
    flows.unordered("u", flows.linear("left", step("a", provides="x"), step("b", ("x",))), step("c"))


def test_the_requirement_a_controller_provides_is_not_missing() -> None:
    flow = flows.linear("f", flows.linear("sub", step("a", ("attempt",)), retry=flows.Times(2, provides="attempt")))
    flows.load(flow)  # nothing missing


# Missing requirements, refused when run or loaded ---------------------------------------------------


async def test_a_missing_requirement_is_refused_before_anything_runs(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear("checkout", Step("reserve", trace), Step("charge", trace, requires=("card", "amount")))
    with anyio.fail_after(10):
        with pytest.raises(
            flows.FlowError, match=r"flow 'checkout': missing requirements 'amount' \(needed by charge\)"
        ):
            await flow_engine.run(flow, store={"card": "visa"})
        with pytest.raises(flows.FlowError, match=r"'card' \(needed by charge\)"):
            await flow_engine.load(flow, store={"amount": 3})
    assert trace == []


async def test_a_value_provided_later_in_a_linear_flow_does_not_count(flow_engine: EngineUnderTest) -> None:
    trace: list[str] = []
    flow = flows.linear("f", Step("needs", trace, requires=("x",)), Step("gives", trace, provides="x"))
    with pytest.raises(flows.FlowError, match=r"missing requirements 'x' \(needed by needs\).*earlier in the flow"):
        await flow_engine.run(flow)
    assert trace == []


# Bad arguments -----------------------------------------------------------------------------------


class Plain(flows.Task):
    async def execute(self, x: int) -> int:
        return x


class PositionalOnly(flows.Task):
    async def execute(self, x: int, /) -> int:
        return x


class NoExecute(flows.Task):
    pass


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": ""}, TypeError, "name must be a non-empty string"),
        ({"name": 3}, TypeError, "name must be a non-empty string, got 3"),
        ({"provides": 3}, TypeError, "'Plain': provides must be a name or a tuple of names, got 3"),
        ({"provides": ("a", "")}, TypeError, "provides must be a name or a tuple of names"),
        ({"provides": ("a", "a")}, ValueError, "provides names a value twice"),
        ({"timeout": 0}, ValueError, "'Plain': timeout must be a finite number of seconds > 0, got 0"),
        ({"timeout": -1.0}, ValueError, "timeout must be a finite number of seconds > 0"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a finite number of seconds > 0"),
        ({"timeout": "1"}, TypeError, "timeout must be a number of seconds or None, got '1'"),
        ({"timeout": True}, TypeError, "timeout must be a number of seconds or None"),
        ({"rebind": {"y": "z"}}, ValueError, "rebind names 'y', which execute\\(\\) does not take"),
        ({"rebind": {"x": 3}}, TypeError, "rebind must map parameter names to value names"),
        ({"requires": "x"}, TypeError, "requires must be a tuple of names, got 'x'"),
        ({"requires": ("x", 3)}, TypeError, "requires must be a tuple of names"),
    ],
)
def test_task_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Plain(**kwargs)


def test_a_task_class_must_write_execute_with_named_parameters() -> None:
    with pytest.raises(TypeError, match="NoExecute must define execute"):
        NoExecute()
    with pytest.raises(TypeError, match="'PositionalOnly'.execute: parameter 'x' is positional-only"):
        PositionalOnly()


def test_a_tasks_name_defaults_to_its_class_and_keywords_win_over_class_attributes() -> None:
    task = Plain(provides="y", timeout=2)
    assert (task.name, task.provided, task.time_limit, task.required) == ("Plain", ("y",), 2.0, ("x",))
    assert Plain("second").name == "second"
    assert repr(Plain("p")) == "<Plain 'p'>"


@pytest.mark.parametrize("build", [flows.linear, flows.unordered, flows.graph])
def test_pattern_arguments_are_checked(build: Any) -> None:
    kind = build.__name__
    with pytest.raises(TypeError, match=f"flows.{kind}: the flow's name must be a non-empty string, got ''"):
        build("", step("a"))
    with pytest.raises(TypeError, match=f"flows.{kind}: the flow's name must be a non-empty string, got 3"):
        build(3, step("a"))
    with pytest.raises(TypeError, match=r"\(an instance, not the class: Reserve\(\)\)"):
        build("f", Plain)
    with pytest.raises(TypeError, match=rf"flows.{kind}\('f'\): 5 is neither a flows.Task nor a flow"):
        build("f", 5)
    with pytest.raises(TypeError, match=r"retry must be a flows.Retry \(Times, ForEach, ...\), got 3"):
        build("f", step("a"), retry=3)


def test_links_are_checked() -> None:
    a, b = step("a"), step("b")
    with pytest.raises(TypeError, match=r"links must be \(before, after\) pairs, got \['a', 'b'\]"):
        flows.graph("g", a, b, links=[["a", "b"]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"'zzz' is not an atom of this graph \(its atoms: 'a', 'b'\)"):
        flows.graph("g", a, b, links=[("a", "zzz")])
    with pytest.raises(ValueError, match="is not an atom of this graph"):
        flows.graph("g", a, b).link(a, step("c"))
    with pytest.raises(TypeError, match="only a graph flow takes explicit links; 'l' is linear"):
        flows.linear("l", a, b).link(a, b)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: flows.Times(0), ValueError, r"Times: attempts must be an int >= 1 \(attempts in all\), got 0"),
        (lambda: flows.Times(True), ValueError, "attempts must be an int >= 1"),
        (lambda: flows.Times("3"), ValueError, "attempts must be an int >= 1"),  # type: ignore[arg-type]
        (lambda: flows.Times(2, backoff=-1), ValueError, "Times: backoff must be >= 0 seconds, got -1"),
        (lambda: flows.Times(2, backoff=True), TypeError, "Times: backoff must be seconds"),
        (lambda: flows.Times(2, backoff="1s"), TypeError, "Times: backoff must be seconds, .* got '1s'"),  # type: ignore[arg-type]
        (lambda: flows.Times(2, backoff=(1, -1)), TypeError, "backoff must be seconds, \\(first, cap\\)"),
        (lambda: flows.Times(2, name=""), TypeError, "Times: name must be a non-empty string"),
        (lambda: flows.Times(2, provides=("a", "b")), TypeError, "Times: a retry controller provides one value"),  # type: ignore[arg-type]
        (lambda: flows.ForEach([]), ValueError, "ForEach: values is empty"),
        (lambda: flows.ForEach("abc"), TypeError, "ForEach: values must be a list"),
        (lambda: flows.ForEach(5), TypeError, "ForEach: values must be a list"),  # type: ignore[arg-type]
        (lambda: flows.ForEach([1], provides=""), TypeError, "ForEach: provides must be a name"),
    ],
)
def test_retry_controller_arguments_are_checked(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_the_base_retry_must_be_subclassed_to_decide() -> None:
    with pytest.raises(NotImplementedError):
        flows.Retry().on_failure(flows.Failures(), 1)
    assert repr(flows.Times(3)) == "Times(3)"
    assert repr(flows.ForEach(["a"])) == "ForEach(['a'])"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"engine": "warp"}, ValueError, "unknown engine 'warp'; use one of: serial, parallel, worker-based"),
        ({"engine": 3}, ValueError, "unknown engine 3"),
        ({"store": ["a"]}, TypeError, "store must be a mapping of value names to values, got \\['a'\\]"),
        ({"concurrency": 0}, ValueError, "concurrency must be an int >= 1 or None \\(no bound\\), got 0"),
        ({"concurrency": 1.5}, ValueError, "concurrency must be an int >= 1"),
        ({"flow_id": ""}, TypeError, "flow_id must be a non-empty string"),
        ({"listeners": print}, TypeError, "listeners must be a list of callables"),
        ({"listeners": [3]}, TypeError, "listener 3 is not callable"),
    ],
)
def test_load_arguments_are_checked_naming_the_flow(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=r"flows \('f'\): " + match):
        flows.load(flows.linear("f", step("a")), **kwargs)


async def test_run_checks_its_arguments_too() -> None:
    with pytest.raises(TypeError, match="flows: expected a flow \\(flows.linear/unordered/graph\\), got"):
        await flows.run(step("a"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown engine 'warp'"):
        await flows.run(flows.linear("f", step("a")), engine="warp")


async def test_async_listeners_are_refused() -> None:
    async def listener(event: flows.Transition) -> None:
        pass

    with pytest.raises(TypeError, match="listener .* is async; listeners are plain callables"):
        flows.load(flows.linear("f", step("a")), listeners=[listener])
    engine = flows.load(flows.linear("f", step("a")))
    with pytest.raises(TypeError, match="is async"):
        engine.listen(listener)


def test_the_engine_name_comes_from_flows_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = flows.linear("f", step("a"))
    assert flows.load(flow).engine == "serial"
    monkeypatch.setenv("FLOWS_ENGINE", "Parallel")
    assert flows.load(flow).engine == "parallel"
    assert flows.load(flow, engine="serial").engine == "serial"
    monkeypatch.setenv("FLOWS_ENGINE", "warp")
    with pytest.raises(ValueError, match="unknown engine 'warp'"):
        flows.load(flow)


def test_the_worker_based_engine_needs_its_dispatcher() -> None:
    with pytest.raises(
        TypeError, match="worker-based engine runs atoms as named tasks of a Dispatcher; pass dispatcher="
    ):
        flows.load(flows.linear("f", step("a")), engine="worker-based")


def settings() -> flows.FlowsSettings:
    """The settings from the environment (pydantic-settings fills every field, which mypy cannot see)."""
    return flows.FlowsSettings()  # type: ignore[call-arg]


def test_flows_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings().engine is None  # unset: the code's choice (flows.run: serial)
    monkeypatch.setenv("FLOWS_ENGINE", "worker_based")
    assert settings().engine == "worker-based"
    monkeypatch.setenv("FLOWS_ENGINE", "warp")
    with pytest.raises(pydantic.ValidationError, match="FLOWS_ENGINE: unknown engine 'warp'"):
        settings()
    monkeypatch.delenv("FLOWS_ENGINE")
    monkeypatch.setenv("FLOWS_CONCURRENCY", "0")
    with pytest.raises(pydantic.ValidationError, match="must be at least 1, got 0"):
        settings()


def test_sqlite_store_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="SQLiteStore: path must be a file path, got 3"):
        flows.SQLiteStore(3)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="SQLiteStore: the folder .*missing.* does not exist; create it"):
        flows.SQLiteStore(tmp_path / "missing" / "flows.db")
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(OSError, match="SQLiteStore: cannot open .*junk.db.* as a flow store"):
        flows.SQLiteStore(tmp_path / "junk.db")


def test_persistence_refuses_a_store_that_is_not_json_and_a_taken_flow_id(tmp_path: Path) -> None:
    store = flows.SQLiteStore(tmp_path / "flows.db")
    try:
        flow = flows.linear("f", step("a"))
        with pytest.raises(TypeError, match="the store of flow 'f' is not JSON data"):
            flows.load(flow, store={"when": object()}, persistence=store)
        flows.load(flow, persistence=store, flow_id="one")
        with pytest.raises(ValueError, match="a flow run with id 'one' is already recorded; resume it"):
            flows.load(flow, persistence=store, flow_id="one")
    finally:
        store.close()


async def test_resume_arguments_are_checked(tmp_path: Path) -> None:
    store = flows.SQLiteStore(tmp_path / "flows.db")
    flow = flows.linear("f", step("a"))
    try:
        with pytest.raises(TypeError, match=r"flows.resume\('x'\): persistence is required"):
            await flows.resume(flow, "x", persistence=None)  # type: ignore[arg-type]
        with pytest.raises(LookupError, match=r"flows.resume\('x'\): no flow run with this id in SQLiteStore"):
            await flows.resume(flow, "x", persistence=store)
        flows.load(flow, persistence=store, flow_id="one")
        with pytest.raises(flows.FlowError, match="the recorded run is of flow 'f', not 'other'"):
            flows.resumed(flows.linear("other", step("a")), "one", persistence=store)
        store.atom_moved("one", "gone", flows.PENDING, None, 0, 0)
        with pytest.raises(flows.FlowError, match=r"atoms \['gone'\] that flow 'f' no longer has"):
            flows.resumed(flow, "one", persistence=store)
    finally:
        store.close()
