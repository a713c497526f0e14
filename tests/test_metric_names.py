"""The naming rules of /metrics (nacelle_py/_ops/_names.py), a stats type's plan, the export, Histogram, Metric.

Unit tests on the functions, then a property: whatever the type and field names, every metric
and label name is valid, none is reserved, and both of prometheus-client's parsers read the
exposition back (promtool's own check is in tests/test_metrics_promtool.py).
"""

from __future__ import annotations

import enum
import math
import re
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from nacelle_py import Histogram, HistogramSnapshot, Metric
from nacelle_py._ops._export import export
from nacelle_py._ops._families import Families
from nacelle_py._ops._names import (
    RESERVED_LABELS,
    RESERVED_SUFFIXES,
    field_name,
    kind_name,
    label_name,
    metric_base,
    unique,
)
from nacelle_py._ops._shapes import shape_of

if TYPE_CHECKING:
    from collections.abc import Iterator
    from decimal import Decimal  # for the type checker only: get_type_hints cannot resolve it

METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # Prometheus' own, less the ':' kept for recording rules
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


# -- the rules, one by one ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "kind"),
    [
        ("DispatcherStats", "dispatcher"),
        ("HTTPStats", "http"),
        ("OrderQueueStats", "orderqueue"),  # only lowercased, as it always was: user names stay stable
        ("Stats", "stats"),
        ("queue-stats.v2", "queue_stats_v2"),
        ("ÜberStats", "uber"),
        ("数量Stats", "stats"),
        ("My::Thing", "my_thing"),
    ],
)
def test_kind_name(type_name: str, kind: str) -> None:
    assert kind_name(type_name) == kind


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("completed", "completed"),
        ("latency_p50", "latency_p50"),
        ("queueDepth", "queue_depth"),
        ("HTTPRequests", "http_requests"),
        ("requestsIn2xx", "requests_in2xx"),
        ("cache-hits", "cache_hits"),
        ("p.99", "p_99"),
        ("x:y", "x_y"),
        ("1st", "1st"),
        ("__private__", "private"),
        ("a  b--c", "a_b_c"),
        ("naïve", "naive"),
        ("größe", "gro_e"),
        ("ключ", "field_3"),
        ("", "field_3"),
        ("_", "field_3"),
    ],
)
def test_field_name(field: str, name: str) -> None:
    assert field_name(field, 3) == name


@pytest.mark.parametrize(
    ("field", "counter", "unit", "base"),
    [
        ("depth", False, None, "nacelle_q_depth"),
        ("served", True, None, "nacelle_q_served"),  # the counter's samples add _total
        ("requests_total", True, None, "nacelle_q_requests"),  # not _total_total
        ("total", True, None, "nacelle_q"),  # so its sample is nacelle_q_total
        ("x_total_total", True, None, "nacelle_q_x"),
        ("total", False, None, "nacelle_q_total_value"),  # a gauge may not end in _total
        ("count", False, None, "nacelle_q_count_value"),
        ("sum", False, None, "nacelle_q_sum_value"),
        ("bucket", False, None, "nacelle_q_bucket_value"),
        ("created", True, None, "nacelle_q_created"),  # a counter's samples end in _total: nothing to avoid
        ("count", True, None, "nacelle_q_count"),
        ("info", False, None, "nacelle_q_info_value"),
        ("gcount", False, None, "nacelle_q_gcount_value"),
        ("le", False, None, "nacelle_q_le"),  # reserved as a label, not in a name
        ("busy", True, "seconds", "nacelle_q_busy_seconds"),
        ("wait_seconds", False, "seconds", "nacelle_q_wait_seconds"),  # not _seconds_seconds
        ("seconds", False, "seconds", "nacelle_q_seconds"),
        ("total", True, "seconds", "nacelle_q_seconds"),
        ("size", False, "Bytes", "nacelle_q_size_bytes"),
    ],
)
def test_metric_base(field: str, counter: bool, unit: str | None, base: str) -> None:
    assert metric_base("q", field, counter=counter, unit=unit) == base


@pytest.mark.parametrize(
    ("name", "taken", "label"),
    [
        ("stage", (), "stage"),
        ("le", (), "le_label"),
        ("quantile", (), "quantile_label"),
        ("component", (), "component_label"),
        ("mode", ("mode",), "mode_label"),
        ("le", ("le_label",), "le_label_label"),
        ("1st", (), "_1st"),
    ],
)
def test_label_name(name: str, taken: tuple[str, ...], label: str) -> None:
    assert label_name(name, taken) == label


def test_unique_numbers_from_two() -> None:
    assert unique("a", set()) == "a"
    assert unique("a", {"a"}) == "a_2"
    assert unique("a", {"a", "a_2"}) == "a_3"


# -- one type's plan ------------------------------------------------------------------------------------


class PlanStats(NamedTuple):
    queueDepth: int  # noqa: N815
    queue_depth: int
    p50: Annotated[float | None, Metric.omit()]
    p50_2: int  # the omitted field took no name: this one keeps its own
    placed: Annotated[int, Metric.counter("Orders placed.")]
    wait: Annotated[float, Metric.gauge("Oldest wait.", unit="seconds", scale=0.001, name="oldestWait")]


def test_a_plan_in_field_order_with_collisions_numbered() -> None:
    shape = shape_of(PlanStats, PlanStats._fields)
    assert shape.kind == "plan" and shape.label == "plan"
    plans = {p.key: p for p in shape.fields}
    assert plans["queueDepth"].base == "nacelle_plan_queue_depth"
    assert plans["queue_depth"].base == "nacelle_plan_queue_depth_2"
    assert plans["p50"].kind == "omit"
    assert plans["p50_2"].base == "nacelle_plan_p50_2"
    assert (plans["placed"].base, plans["placed"].kind, plans["placed"].help) == (
        "nacelle_plan_placed",
        "counter",
        "Orders placed.",
    )
    assert (plans["wait"].base, plans["wait"].scale) == ("nacelle_plan_oldest_wait_seconds", 0.001)
    assert plans["queue_depth"].help == "Field 'queue_depth' of PlanStats, from the component's stats()."
    assert shape_of(PlanStats, PlanStats._fields) is shape  # worked out once


class UnresolvableStats(NamedTuple):
    served: Annotated[int, Metric.counter("x")]
    other: Decimal


def test_annotations_that_do_not_resolve_leave_every_field_a_gauge() -> None:
    shape = shape_of(UnresolvableStats, UnresolvableStats._fields)
    assert [(p.base, p.kind) for p in shape.fields] == [
        ("nacelle_unresolvable_served", "gauge"),
        ("nacelle_unresolvable_other", "gauge"),
    ]


# -- the export -------------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"


class ItemStats(NamedTuple):
    name: str
    count: Annotated[int, Metric.counter("Items counted.")]  # type: ignore[assignment]  # tuple.count: on purpose
    color: Color
    ok: bool
    missing: int | None
    text: str
    parts: dict[str, Any]


def registry(*values: tuple[Any, dict[str, str]]) -> CollectorRegistry:
    class Collector:
        def collect(self) -> Iterator[Family]:
            families = Families()
            for value, labels in values:
                export(families, value, labels)
            yield from families

    found = CollectorRegistry(auto_describe=False)
    found.register(Collector())
    return found


def scrape(*values: tuple[Any, dict[str, str]]) -> str:
    return generate_latest(registry(*values)).decode()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def test_named_stats_nest_with_their_path_and_keep_outer_labels() -> None:
    inner = ItemStats("child", 2, Color.GREEN, False, None, "t", {})
    outer = ItemStats("parent", 1, Color.RED, True, None, "t", {"child": inner})
    got = samples(scrape((outer, {"component": "c"})))
    assert ("nacelle_item_count_total", {"component": "c", "item": "parent"}, 1.0) in got
    assert ("nacelle_item_count_total", {"component": "c", "item": "parent/child"}, 2.0) in got
    assert ("nacelle_item_color", {"component": "c", "item": "parent", "color": "red"}, 1.0) in got
    assert ("nacelle_item_color", {"component": "c", "item": "parent", "color": "green"}, 0.0) in got
    assert ("nacelle_item_ok", {"component": "c", "item": "parent"}, 1.0) in got
    assert not [
        n for n, _, _ in got if n.startswith(("nacelle_item_missing", "nacelle_item_text", "nacelle_item_name"))
    ]


def test_a_repeated_label_set_is_dropped_and_another_origin_of_a_name_is_numbered() -> None:
    # Another type called ItemStats, whose ``ok`` is a counter where the first one's is a gauge.
    class Other(NamedTuple):
        ok: Annotated[int, Metric.counter("Oks.")]

    Other.__name__ = Other.__qualname__ = "ItemStats"  # the module's type's name: another origin of its metrics
    other = Other
    item = ItemStats("x", 1, Color.RED, True, None, "", {})
    got = samples(
        scrape(
            (item, {"component": "c"}),
            (item, {"component": "c"}),
            ({"a": other(3)}, {"component": "c"}),
            (other(4), {"component": "d"}),
        )
    )
    assert [s for s in got if s[0].startswith("nacelle_item_ok")] == [
        ("nacelle_item_ok", {"component": "c", "item": "x"}, 1.0),  # once: the identical second one dropped
        ("nacelle_item_ok_2_total", {"component": "c", "item": "a"}, 3.0),
        ("nacelle_item_ok_2_total", {"component": "d"}, 4.0),
    ]


def test_a_histogram_field_scaled() -> None:
    class TimingStats(NamedTuple):
        took: Annotated[HistogramSnapshot, Metric.histogram("Took.", unit="seconds", scale=0.001)]

    histogram = Histogram([1, 10, 100])  # milliseconds
    for ms in (1, 5, 50, 5000):
        histogram.observe(ms)
    got = samples(scrape((TimingStats(histogram.snapshot()), {"component": "c"})))
    buckets = {ls["le"]: v for n, ls, v in got if n == "nacelle_timing_took_seconds_bucket"}
    assert buckets == {"0.001": 1, "0.01": 2, "0.1": 3, "+Inf": 4}
    assert ("nacelle_timing_took_seconds_count", {"component": "c"}, 4.0) in got
    (took,) = [v for n, _, v in got if n == "nacelle_timing_took_seconds_sum"]
    assert took == pytest.approx(5.056)


# -- the property -------------------------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)  # utf-8: no lone surrogates


@settings(max_examples=150, deadline=None)
@given(
    type_name=names,
    fields=st.lists(names, min_size=1, max_size=8),
    kinds=st.lists(st.sampled_from(["counter", "gauge", "histogram", None, "enum"]), min_size=8, max_size=8),
    name=st.one_of(st.none(), names),
)
def test_any_names_give_a_valid_exposition(
    type_name: str, fields: list[str], kinds: list[str | None], name: str | None
) -> None:
    notes: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for i, (field, kind) in enumerate(zip(fields, kinds)):
        values[field] = {"histogram": Histogram([1.0]).snapshot(), "enum": Color.RED}.get(kind or "", i)
        if kind in ("counter", "gauge", "histogram"):
            notes[field] = Annotated[Any, Metric(kind, "h")]  # type: ignore[arg-type]
    if name is not None:
        values["name"] = name
    cls = type(type_name, (), {"__annotations__": notes, "_asdict": lambda self: dict(values)})
    both = registry((cls(), {"component": "c"}), ({"k": cls()}, {"component": "d"}))
    text = generate_latest(both).decode()
    for family in text_string_to_metric_families(text):
        assert METRIC_NAME.match(family.name) and not family.name.startswith("__"), family.name
        if family.type == "gauge":
            assert not family.name.endswith(RESERVED_SUFFIXES), family.name
        for sample in family.samples:
            assert METRIC_NAME.match(sample.name), sample.name
            for label in sample.labels:
                assert LABEL_NAME.match(label) and not label.startswith("__"), label
                assert label not in RESERVED_LABELS - {"component"} or (label == "le" and family.type == "histogram")
            assert sample.labels["component"] in ("c", "d")
    strict = generate_openmetrics(both).decode()  # type: ignore[no-untyped-call]
    assert len(list(openmetrics_families(strict))) == len(list(text_string_to_metric_families(text)))  # type: ignore[no-untyped-call]


# -- Histogram and Metric ------------------------------------------------------------------------------------


def test_histogram_buckets_include_their_bound_and_merge() -> None:
    a, b = Histogram([1, 2]), Histogram([1, 2])
    for x in (0.5, 1, 1.5, 2, 3):
        a.observe(x)
    b.observe(2.5)
    snapshot = a.snapshot()
    assert snapshot == HistogramSnapshot((1.0, 2.0), (2, 2, 1), 8.0)
    assert snapshot.observations == 5
    assert snapshot.cumulative() == [(1.0, 2), (2.0, 4), (math.inf, 5)]
    assert HistogramSnapshot.merge([snapshot, b.snapshot()]) == HistogramSnapshot((1.0, 2.0), (2, 2, 2), 10.5)
    with pytest.raises(ValueError, match="different bounds"):
        HistogramSnapshot.merge([snapshot, Histogram([1]).snapshot()])
    with pytest.raises(ValueError, match="nothing to merge"):
        HistogramSnapshot.merge([])


@pytest.mark.parametrize("bounds", [[], [2, 1], [1, 1], [1, math.inf], [math.nan]])
def test_histogram_bounds_must_ascend_and_be_finite(bounds: list[float]) -> None:
    with pytest.raises(ValueError, match="finite and strictly ascending"):
        Histogram(bounds)


def test_metric_checks_its_kind_and_scale() -> None:
    assert Metric.counter("x", unit="seconds") == Metric("counter", "x", "seconds")
    assert Metric.omit().kind == "omit"
    with pytest.raises(ValueError, match="kind must be"):
        Metric("summary", "x")  # type: ignore[arg-type]
    for scale in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            Metric.gauge("x", scale=scale)


# -- the example in docs/operations.md ("Your own stats") gives the names it says -----------------------


class OrdersStats(NamedTuple):
    placed: Annotated[int, Metric.counter("Orders placed.")]
    open: Annotated[int, Metric.gauge("Orders placed, not yet shipped.")]
    wait_ms: Annotated[
        float,
        Metric.gauge("How long the oldest open order has waited.", name="oldest_wait", unit="seconds", scale=0.001),
    ]
    took: Annotated[HistogramSnapshot, Metric.histogram("Seconds per order.", unit="seconds")]
    cache: Annotated[dict[str, int], Metric.omit()]


def test_the_operations_docs_example() -> None:
    took = Histogram()
    took.observe(0.2)
    found = {
        f.name: f
        for f in text_string_to_metric_families(
            scrape((OrdersStats(3, 2, 1500.0, took.snapshot(), {"x": 1}), {"component": "orders"}))
        )
    }
    assert {name: f.type for name, f in found.items()} == {
        "nacelle_orders_placed": "counter",
        "nacelle_orders_open": "gauge",
        "nacelle_orders_oldest_wait_seconds": "gauge",
        "nacelle_orders_took_seconds": "histogram",
    }
    assert [s.value for s in found["nacelle_orders_oldest_wait_seconds"].samples] == [1.5]
    assert found["nacelle_orders_placed"].samples[0].name == "nacelle_orders_placed_total"
