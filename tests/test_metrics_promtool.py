"""``/metrics`` passes Prometheus' own linter: ``promtool check metrics`` exits 0 and says nothing.

Two apps are checked: example_app as a real subprocess (both backends), after some work through its
HTTP API, and an in-process app (both backends) whose components' ``stats()`` use every field and
type name the naming rules exist for (``count``, ``sum``, ``bucket``, ``total``, ``le``,
``quantile``, dashes, dots, colons, unicode, a leading digit, names that collide once cleaned, a
type that produces one of the app's own names). The scrapes go over a real socket with a real
HTTP client; the names the rules give are asserted one by one, as docs/operations.md lists them.
"""

from __future__ import annotations

import enum
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import anyio
import anyio.to_thread
import httpx
import pytest
from _promtool import promtool_check, require_promtool
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from nacelle_py import Histogram, HistogramSnapshot, Metric
from nacelle_py.base import Dispatcher
from nacelle_py.testing import Trace

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from test_example_app import EXIT_TIMEOUT, boot  # noqa: E402
from test_example_app_http import _summaries, ports  # noqa: E402
from test_ops import Gate, make_app, serving  # noqa: E402

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
APP_WIDE = ("nacelle_app_ready", "nacelle_app_phase", "nacelle_loop_blocked")  # the families without a component label


def assert_clean(binary: str, text: str) -> None:
    status, said = promtool_check(binary, text)
    assert (status, said) == (0, ""), f"promtool check metrics: exit {status}\n{said}\n---\n{text}"


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def assert_component_everywhere(text: str) -> None:
    """Every sample but the app's readiness and phase carries the ``component`` label."""
    missing = sorted(
        {
            s.name
            for f in families(text).values()
            if f.name not in APP_WIDE
            for s in f.samples
            if "component" not in s.labels
        }
    )
    assert not missing, f"samples without a component label: {missing}"


def test_promtool_is_no_rubber_stamp() -> None:
    """The checker fails the issue's original complaint, so a clean pass means something."""
    status, said = promtool_check(
        require_promtool(),
        "# HELP nacelle_machine_total x\n# TYPE nacelle_machine_total gauge\nnacelle_machine_total 1\n",
    )
    assert status != 0 and 'non-counter metrics should not have "_total" suffix' in said, (status, said)


# -- example_app, a real subprocess -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_example_app_metrics_pass_promtool(backend: str, tmp_path: Path) -> None:
    promtool = require_promtool()
    with boot(backend, tmp_path / "metrics.sqlite3") as app:
        (api_host, api_port), (ops_host, ops_port) = ports(app)
        with (
            httpx.Client(base_url=f"http://{api_host}:{api_port}", timeout=5) as api,
            httpx.Client(base_url=f"http://{ops_host}:{ops_port}", timeout=5) as ops,
        ):
            assert api.post("/rows", json={"name": "ada"}).status_code == 201
            assert len(_summaries(api, 3)) == 3  # the dispatcher runs tasks: its latency histogram fills
            response = ops.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = response.text
            assert_clean(promtool, text)
            assert_component_everywhere(text)
            found = families(text)
            for name, kind in (
                ("nacelle_component_restarts", "counter"),
                ("nacelle_dispatcher_accepted", "counter"),
                ("nacelle_dispatcher_queued", "gauge"),
                ("nacelle_dispatcher_latency_seconds", "histogram"),
                ("nacelle_stage_messages_in", "counter"),
                ("nacelle_stage_busy_seconds", "counter"),
                ("nacelle_worker_ticks", "counter"),
                ("nacelle_worker_last_duration_seconds", "gauge"),
                ("nacelle_http_served", "counter"),
                ("nacelle_http_active", "gauge"),
                ("nacelle_machine_routines", "counter"),
                ("nacelle_machine_active", "gauge"),
                ("nacelle_heartbeat_beats", "counter"),
                ("nacelle_heartbeat_write_seconds", "histogram"),
            ):
                assert found[name].type == kind, (name, found[name].type)
                assert found[name].documentation, name
            latency = {
                s.name: s.value
                for s in found["nacelle_dispatcher_latency_seconds"].samples
                if s.labels.get("le") in (None, "+Inf")
            }
            assert latency["nacelle_dispatcher_latency_seconds_count"] >= 1
            assert (
                latency["nacelle_dispatcher_latency_seconds_bucket"]
                == latency["nacelle_dispatcher_latency_seconds_count"]
            )
            served = [s.value for s in found["nacelle_http_served"].samples]
            assert served and served[0] >= 2
            # OpenMetrics, for a scraper that asks: the strict parser takes it
            strict = ops.get("/metrics", headers={"Accept": OPENMETRICS}).text
            assert {f.name for f in openmetrics_families(strict)} == set(found)  # type: ignore[no-untyped-call]
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()


# -- user stats() with every name the rules are for --------------------------------------------------


class Mode(enum.Enum):
    IDLE = 1
    BUSY = 2


class ReservedStats(NamedTuple):
    """Field names Prometheus reserves or that clash once cleaned; no annotations but three."""

    count: int  # type: ignore[assignment]  # tuple.count: on purpose
    sum: float
    bucket: int
    total: int
    created: int
    info: int
    le: int
    quantile: int
    queueDepth: int  # noqa: N815  (camelCase on purpose)
    queue_depth: int  # the same name as queueDepth once cleaned
    größe: int
    数量: int
    mode: Mode
    requests_total: Annotated[int, Metric.counter("Requests answered.")]
    wait_ms: Annotated[
        float, Metric.gauge("How long the oldest request waits.", name="wait", unit="seconds", scale=0.001)
    ]
    latency: Annotated[HistogramSnapshot, Metric.histogram("Seconds per request.", unit="seconds")]
    note: str  # not a number: left out


class Raw:
    """Stats with keys no identifier can have: anything with ``_asdict()`` is read."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def _asdict(self) -> dict[str, Any]:
        return dict(self.values)


OddKind = type("queue-stats.v2", (Raw,), {})  # a type name with a dash and a dot


class ComponentStats(NamedTuple):
    """A user type whose kind is ``component``: it would produce the app's ``nacelle_component_state``."""

    name: str
    state: int


class QuantileStats(NamedTuple):
    """A named type whose name label would be ``quantile``."""

    name: str
    ready: int


class ShardStats(NamedTuple):
    """Unnamed stats in a dict: the key names each one."""

    depth: int


class Reserved(Gate):
    def __init__(self, trace: Trace, name: str, histogram: Histogram) -> None:
        super().__init__(trace, name)
        self.histogram = histogram

    def stats(self) -> dict[str, Any]:
        return {
            "reserved": ReservedStats(
                1, 2.5, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, Mode.BUSY, 13, 1500.0, self.histogram.snapshot(), "x"
            ),
            "raw": OddKind(
                {
                    "cache-hits": 1,
                    "cache.hits": 2,
                    "p.99": 3,
                    "1st-try": 4,
                    "x:y": 5,
                    "naïve": 6,
                    "ключ": 7,
                    "le": 8,
                    "__": 9,
                    "count": 10,
                }
            ),
            "component": ComponentStats("inner", 1),
            "quantile": QuantileStats("q1", 1),
            "shards": {"eu": ShardStats(3), "us": ShardStats(4), 7: ShardStats(5)},
        }


EXPECTED: dict[str, dict[str, str]] = {  # sample -> labels besides component and the name (docs/operations.md)
    "nacelle_reserved_count_value": {},
    "nacelle_reserved_sum_value": {},
    "nacelle_reserved_bucket_value": {},
    "nacelle_reserved_total_value": {},
    "nacelle_reserved_created_value": {},
    "nacelle_reserved_info_value": {},
    "nacelle_reserved_le": {},
    "nacelle_reserved_quantile": {},
    "nacelle_reserved_queue_depth": {},
    "nacelle_reserved_queue_depth_2": {},
    "nacelle_reserved_gro_e": {},  # ö loses its accent; ß has no ASCII form
    "nacelle_reserved_field_11": {},
    "nacelle_reserved_mode": {"mode": "busy"},
    "nacelle_reserved_requests_total": {},
    "nacelle_reserved_wait_seconds": {},
    "nacelle_reserved_latency_seconds_count": {},
    "nacelle_queue_stats_v2_cache_hits": {},
    "nacelle_queue_stats_v2_cache_hits_2": {},
    "nacelle_queue_stats_v2_p_99": {},
    "nacelle_queue_stats_v2_1st_try": {},
    "nacelle_queue_stats_v2_x_y": {},
    "nacelle_queue_stats_v2_naive": {},
    "nacelle_queue_stats_v2_field_6": {},
    "nacelle_queue_stats_v2_le": {},
    "nacelle_queue_stats_v2_field_8": {},
    "nacelle_queue_stats_v2_count_value": {},
    "nacelle_component_state_2": {"component_label": "inner"},
    "nacelle_quantile_ready": {"quantile_label": "q1"},
    "nacelle_shard_depth": {"shard": "eu"},
}


@pytest.mark.anyio
async def test_reserved_user_field_names_pass_promtool() -> None:
    promtool = require_promtool()
    histogram = Histogram()
    for seconds in (0.0001, 0.002, 0.3, 120.0):  # one on a bound, one above the last
        histogram.observe(seconds)
    app = make_app(ops_addr="127.0.0.1:0")
    app.register(Reserved(Trace(), "r", histogram), name="one")
    app.register(Reserved(Trace(), "r2", histogram), name="two")  # one family, two components
    app.register(Dispatcher(), name="jobs")
    async with serving(app) as ops:
        text = (await ops.get("/metrics")).text
        with anyio.fail_after(60):
            await anyio.to_thread.run_sync(assert_clean, promtool, text)
        assert_component_everywhere(text)
        samples = [(s.name, dict(s.labels), s.value) for f in families(text).values() for s in f.samples]

        def value(name: str, **labels: str) -> float:
            found = [v for n, ls, v in samples if n == name and ls == labels]
            assert len(found) == 1, (name, labels, found, text)
            return float(found[0])

        for name, labels in EXPECTED.items():
            for component in ("one", "two"):
                extra = (
                    {"reserved": "reserved"}
                    if name.startswith("nacelle_reserved_")
                    else {"queue_stats_v2": "raw"}
                    if name.startswith("nacelle_queue_stats_v2_")
                    else {}
                )
                assert value(name, component=component, **extra, **labels) is not None
        assert value("nacelle_reserved_wait_seconds", component="one", reserved="reserved") == 1.5  # scaled
        assert value("nacelle_reserved_mode", component="one", reserved="reserved", mode="idle") == 0
        assert value("nacelle_reserved_requests_total", component="one", reserved="reserved") == 13
        assert value("nacelle_reserved_latency_seconds_bucket", component="one", reserved="reserved", le="0.0001") == 1
        assert value("nacelle_reserved_latency_seconds_bucket", component="one", reserved="reserved", le="60.0") == 3
        assert value("nacelle_reserved_latency_seconds_bucket", component="one", reserved="reserved", le="+Inf") == 4
        assert value("nacelle_shard_depth", component="one", shard="7") == 5  # a key that is not text
        # the app's own family keeps its name and its meaning
        assert value("nacelle_component_state", component="one", state="running") == 1
        found = families(text)
        assert found["nacelle_reserved_requests"].type == "counter"
        assert found["nacelle_reserved_latency_seconds"].type == "histogram"
        assert (
            found["nacelle_reserved_count_value"].documentation
            == "Field 'count' of ReservedStats, from the component's stats()."
        )
        assert not any(n.startswith("nacelle_reserved_note") for n, _, _ in samples)
        strict = (await ops.get("/metrics", headers={"Accept": OPENMETRICS})).text
        assert {f.name for f in openmetrics_families(strict)} == set(found)  # type: ignore[no-untyped-call]
    assert ops.status == 0, app.errors
