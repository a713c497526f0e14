"""Black-box QA of LambdaListener (issue 16), written from the issue's text and docs/lambda.md only.

The app (tests/scripts/qa_lambda_app.py) runs as a real subprocess on asyncio or trio, pointed
at the test Runtime API server of tests/_lambda_runtime.py (or, for the platform misbehaving,
at a small server of this file). Real signals, real sockets on 127.0.0.1, every wait bounded.
tests/base/test_lambda.py covers the basics; these are the scenarios an outside reviewer adds.
The bugs it found are fixed; each has its test here.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _lambda_runtime import INIT_ERROR, Invocation, RuntimeAPI, runtime_env  # noqa: E402
from harness import SCRIPTS, AppProcess, clean_env  # noqa: E402

BACKENDS = ["asyncio", "trio"]
BOOT = 30.0
EXIT = 20.0
ANSWER = 15.0
APP = str(SCRIPTS / "qa_lambda_app.py")
ERROR_TYPE = "lambda-runtime-function-error-type"


def env_for(address: str | None, **extra: str) -> dict[str, str]:
    """The machine's environment without anything Lambda or the app reads, JSON logs, pointed at ``address``."""
    return runtime_env(clean_env(), address, "QA_", "QAS_", **extra)


@pytest.fixture
def api() -> Iterator[RuntimeAPI]:
    with RuntimeAPI() as server:
        yield server


def launch(api: RuntimeAPI, backend: str, *args: str, **extra: str) -> AppProcess:
    """The app, booted and idle in its first ``next`` poll."""
    return api.wait_runtime(AppProcess([APP, backend, *args], env_for(api.address, **extra)), BOOT)


def terminate(app: AppProcess) -> int:
    app.send(signal.SIGTERM)
    return app.wait(EXIT)


def answered(api: RuntimeAPI, rid: str, kind: str, timeout: float = ANSWER) -> Any:
    outcome = api.outcome(rid, timeout)
    assert outcome.kind == kind, (outcome.kind, outcome.body, outcome.headers)
    return outcome.json()


def run_to_exit(address: str | None, backend: str, *args: str, timeout: float = BOOT, **extra: str) -> AppProcess:
    app = AppProcess([APP, backend, *args], env_for(address, **extra))
    try:
        app.wait(timeout)
    finally:
        app.close()
    return app


def ops_url(app: AppProcess) -> str:
    event = app.wait_event("ops endpoint listening", BOOT)
    return str(event["url"])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def queue_raw(api: RuntimeAPI, invocation: Invocation) -> None:
    """Queue an invocation with headers ``invoke()`` would JSON-encode (malformed ones)."""
    state = api._state  # the test server's own queue: invoke() only sends well-formed JSON headers
    with state.cond:
        state.queue.append(invocation)
        state.cond.notify_all()


# -- the contract's names and shapes --------------------------------------------------


@pytest.mark.parametrize("handler", ["fn-async", "fn-sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_handler_function_instead_of_a_subclass(api: RuntimeAPI, backend: str, handler: str) -> None:
    """docs: ``LambdaListener(handler=my_function)``, async or plain."""
    with launch(api, backend, QAS_HANDLER=handler) as app:
        ok = api.invoke({"op": "echo", "value": [1, "x"]})
        assert answered(api, ok, "response") == {"echo": [1, "x"], "rid": ok}
        bad = api.invoke({"op": "raise", "order": {"id": 1, "total": -3}})
        assert answered(api, bad, "error")["errorType"] == "OrderRejected"
        slow = api.invoke({"op": "sleep", "seconds": 0.2})
        assert answered(api, slow, "response")["rid"] == slow
        assert terminate(app) == 0, app.dump()
    assert api.violations == []


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inject_db_provided_by_a_lower_priority_initializer(api: RuntimeAPI, backend: str, handler: str) -> None:
    """The issue's ``db = Inject("db")`` with docs/lambda.md's Database initializer."""
    with launch(api, backend, QAS_HANDLER=handler) as app:
        rid = api.invoke({"op": "db"})
        assert answered(api, rid, "response") == {"db": "hello from db", "rid": rid}
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("handler", ["async", "sync", "fn-sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_error_answer_has_the_header_and_a_trace_of_the_users_frames(
    api: RuntimeAPI, backend: str, handler: str
) -> None:
    """errorType is the class name, also in Lambda-Runtime-Function-Error-Type; one stackTrace line per frame
    from the first frame of the user's code, the listener's own left out."""
    with launch(api, backend, QAS_HANDLER=handler) as app:
        rid = api.invoke({"op": "raise", "order": {"id": 42, "total": -5}})
        outcome = api.outcome(rid, ANSWER)
        assert outcome.kind == "error"
        assert outcome.headers.get(ERROR_TYPE) == "OrderRejected", outcome.headers
        body = outcome.json()
        assert body["errorType"] == "OrderRejected"
        assert body["errorMessage"] == "order 42 rejected: total -5 is negative"
        trace = body["stackTrace"]
        assert isinstance(trace, list) and all(isinstance(line, str) for line in trace), body
        assert trace and "qa_lambda_app.py" in trace[0], trace
        assert not any("nacelle_py" in line for line in trace), trace
        functions = [re.search(r", in (\w+)", line).group(1) for line in trace]  # type: ignore[union-attr]
        assert functions[-3:] == ["answer", "validate", "check_total"], trace
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_marshal_and_unmarshal_errors_are_named_as_documented(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend) as app:
        unencodable = api.invoke({"op": "unserialisable"})
        outcome = api.outcome(unencodable, ANSWER)
        body = outcome.json()
        assert outcome.kind == "error" and body["errorType"] == "Runtime.MarshalError", body
        assert outcome.headers.get(ERROR_TYPE) == "Runtime.MarshalError"
        assert "orders" in body["errorMessage"] and "set" in body["errorMessage"], body  # component and type
        for raw in (b"{not json", b"\xff\xfe\x00garbage"):
            rid = api.invoke(None, raw=raw)
            outcome = api.outcome(rid, ANSWER)
            body = outcome.json()
            assert outcome.kind == "error" and body["errorType"] == "Runtime.UnmarshalError", (raw, body)
            assert outcome.headers.get(ERROR_TYPE) == "Runtime.UnmarshalError"
        after = api.invoke({"op": "echo", "value": "on"})
        assert answered(api, after, "response")["echo"] == "on"
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_event_body_is_an_unmarshal_error(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend) as app:
        rid = api.invoke(None, raw=b"")
        outcome = api.outcome(rid, ANSWER)
        try:
            assert outcome.kind == "error", outcome.body
            assert outcome.json()["errorType"] == "Runtime.UnmarshalError", outcome.body
        finally:
            assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_events_and_results_of_any_json_shape(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend, QAS_HANDLER="sync") as app:
        for event in ("a string", 17, [1, 2], None, True):
            rid = api.invoke(event)
            assert answered(api, rid, "response") == {"got": event, "type": type(event).__name__}
        for value in (None, "plain", 3.5, [], {"nested": {"a": [None]}}):
            rid = api.invoke({"op": "return", "value": value})
            outcome = api.outcome(rid, ANSWER)
            assert outcome.kind == "response" and outcome.json() == value, outcome.body
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_invocations_are_answered_in_order_one_poll_each(api: RuntimeAPI, backend: str, handler: str) -> None:
    with launch(api, backend, QAS_HANDLER=handler) as app:
        ids = [api.invoke({"op": "echo", "value": i}) for i in range(150)]
        outcomes = api.wait_outcomes(len(ids), 60.0)
        assert [o.request_id for o in outcomes] == ids
        assert [o.json() for o in outcomes] == [{"echo": i, "rid": rid} for i, rid in enumerate(ids)]
        api.wait_polling(ANSWER, nexts=len(ids) + 1)
        assert terminate(app) == 0, app.dump()
    assert api.nexts == len(ids) + 1
    assert api.violations == []


# -- the context ---------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_context_values_and_types(api: RuntimeAPI, backend: str, handler: str) -> None:
    env = {
        "AWS_LAMBDA_FUNCTION_NAME": "qa-fn",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/qa-fn",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/05/[$LATEST]abc",
    }
    with launch(api, backend, QAS_HANDLER=handler, **env) as app:
        rid = api.invoke({"op": "context"}, timeout=25.0)
        outcome = api.outcome(rid, ANSWER)
        seen = outcome.json()
        assert seen["deadline_ms"] == outcome.deadline_ms and seen["deadline_ms_type"] == "int", seen
        assert seen["deadline_utcoffset"] == 0.0, seen  # timezone-aware UTC
        assert abs(seen["deadline_ts"] * 1000 - outcome.deadline_ms) < 1, seen  # type: ignore[operator]
        assert seen["memory_limit_in_mb"] == 512 and seen["memory_type"] == "int", seen
        assert (seen["function_name"], seen["function_version"]) == ("qa-fn", "$LATEST")
        assert (seen["log_group_name"], seen["log_stream_name"]) == ("/aws/lambda/qa-fn", "2026/12/05/[$LATEST]abc")

        slow = api.invoke({"op": "remaining", "seconds": 0.3}, timeout=20.0)
        body = answered(api, slow, "response")
        assert 0 < body["second_ms"] < body["first_ms"] <= 20_000, body  # decreasing

        # Never below 0: a context kept past its deadline says 0.
        kept = api.invoke({"op": "keep"}, timeout=1.0)
        assert answered(api, kept, "response")["kept"] == kept
        time.sleep(1.3)
        later = api.invoke({"op": "kept-remaining"})
        assert answered(api, later, "response") == {"remaining_ms": [0]}
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("outer", [None, "Root=1-outer-value"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_trace_variable_is_set_for_the_call_and_put_back(api: RuntimeAPI, backend: str, outer: str | None) -> None:
    extra = {} if outer is None else {"_X_AMZN_TRACE_ID": outer}
    trace = "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=1"
    with launch(api, backend, QAS_HANDLER="sync", **extra) as app:
        rid = api.invoke({"op": "context"}, trace_id=trace)
        seen = answered(api, rid, "response")
        assert seen["trace_id"] == trace and seen["env_trace_id"] == trace, seen
        assert terminate(app) == 0, app.dump()
    final = [e for e in app.events if e.get("event") == "qa final env"]
    assert final and final[0].get("trace_env") == outer, app.dump()  # after the call: the previous value


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_client_context_and_identity_are_none_and_warned(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend) as app:
        rid = "qa-malformed-headers"
        queue_raw(api, Invocation(rid, b'{"op": "context"}', 20.0, client_context="{not json", identity="[1,"))
        seen = answered(api, rid, "response")
        assert seen["client_context_is_none"] and seen["identity_is_none"], seen
        warning = app.wait_for(lambda e: e.get("level") == "warning" and e.get("aws_request_id") == rid, 10.0)
        assert warning
        assert terminate(app) == 0, app.dump()


# -- the deadline --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timeout_names_component_and_setting_and_runs_finally(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend, LAMBDA_DEADLINE_MARGIN="0.5") as app:
        rid = api.invoke({"op": "sleep", "seconds": 30}, timeout=1.5)
        outcome = api.outcome(rid, ANSWER)
        body = outcome.json()
        assert outcome.kind == "error" and body["errorType"] == "TimeoutError", body
        assert outcome.headers.get(ERROR_TYPE) == "TimeoutError"
        assert "orders" in body["errorMessage"] and "LAMBDA_DEADLINE_MARGIN" in body["errorMessage"], body
        # The async handler was cancelled at its await and its finally block ran, inside the invocation.
        cleanup = app.wait_for(lambda e: e.get("event") == "qa handler finally" and e.get("rid") == rid, 10.0)
        assert cleanup.get("aws_request_id") == rid, cleanup
        after = api.invoke({"op": "echo", "value": "next"})
        assert answered(api, after, "response")["rid"] == after
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_prefixed_margin_wins_over_the_plain_one(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend, QA_LAMBDA_DEADLINE_MARGIN="3.0", LAMBDA_DEADLINE_MARGIN="0.1") as app:
        rid = api.invoke({"op": "sleep", "seconds": 30}, timeout=4.0)
        outcome = api.outcome(rid, ANSWER)
        assert outcome.kind == "error" and outcome.json()["errorType"] == "TimeoutError"
        handed = api.handed_out(rid)
        assert handed is not None and handed.handed_out_at is not None
        # Margin 3.0: cut about 1 s after the hand-out; margin 0.1 would be 3.9 s.
        assert outcome.received_at - handed.handed_out_at < 3.0, outcome.received_at - handed.handed_out_at
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_margin_cuts_at_the_deadline(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend, LAMBDA_DEADLINE_MARGIN="0") as app:
        rid = api.invoke({"op": "sleep", "seconds": 30}, timeout=1.0)
        outcome = api.outcome(rid, ANSWER)
        assert outcome.kind == "error" and outcome.json()["errorType"] == "TimeoutError", outcome.body
        assert outcome.deadline_ms is not None and outcome.received_at * 1000 >= outcome.deadline_ms - 20
        after = api.invoke({"op": "echo", "value": 0})
        assert answered(api, after, "response")["echo"] == 0
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abandoned_plain_handler_never_answers_for_the_next_invocation(api: RuntimeAPI, backend: str) -> None:
    """A plain def past its deadline is abandoned on its thread; the next invocation gets a new
    (long-lived) thread, and the old one's late return is nobody's answer."""
    with launch(api, backend, QAS_HANDLER="sync", LAMBDA_DEADLINE_MARGIN="0.5") as app:
        first = api.invoke({"op": "thread"})
        thread_a = answered(api, first, "response")["thread"]
        again = api.invoke({"op": "thread"})
        assert answered(api, again, "response")["thread"] == thread_a  # one long-lived thread
        cut = api.invoke({"op": "sleep", "seconds": 1.5}, timeout=1.0)
        assert answered(api, cut, "error")["errorType"] == "TimeoutError"
        nxt = api.invoke({"op": "sleep", "seconds": 2.0}, timeout=30.0)  # the cut one wakes during this one
        body = answered(api, nxt, "response")
        assert body["rid"] == nxt and body["slept"] == 2.0, body
        assert body["thread"] != thread_a, body
        app.wait_for(lambda e: e.get("event") == "qa plain handler woke" and e.get("rid") == cut, 10.0)
        last = api.invoke({"op": "thread"})
        assert answered(api, last, "response")["thread"] == body["thread"]
        assert terminate(app) == 0, app.dump()
    assert len(api.outcomes) == 5
    assert api.violations == []


# -- logs ----------------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["async", "sync", "fn-sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_log_lines_about_an_invocation_carry_its_id(api: RuntimeAPI, backend: str, handler: str) -> None:
    with launch(api, backend, QAS_HANDLER=handler, LAMBDA_DEADLINE_MARGIN="0.3") as app:
        ids = [
            api.invoke({"op": "sleep", "seconds": 0.1}),
            api.invoke({"op": "raise", "order": {"id": 9, "total": -9}}),
            api.invoke({"op": "unserialisable"}),
            api.invoke(None, raw=b"nope"),
            api.invoke({"op": "sleep", "seconds": 2}, timeout=0.8),
        ]
        api.wait_outcomes(len(ids), ANSWER)
        time.sleep(2.0)  # the abandoned plain handler wakes and logs
        assert terminate(app) == 0, app.dump()
    for rid in ids:
        about = [e for e in app.events if rid in json.dumps({k: v for k, v in e.items() if k != "aws_request_id"})]
        assert all(e.get("aws_request_id") == rid for e in about), about
    mine = [e for e in app.events if e.get("event") in ("qa handler finally", "qa plain handler woke")]
    assert mine and all(e.get("aws_request_id") == e.get("rid") for e in mine), mine


# -- health, metrics, stop -----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_later_priority_group_starts_while_the_listener_waits(api: RuntimeAPI, backend: str) -> None:
    """Healthy once it asked for the first invocation: the next group does not wait for an invocation."""
    with launch(api, backend, QAS_LATER="1", QA_OPS_ADDR="127.0.0.1:0") as app:
        url = ops_url(app)
        app.wait_event("later started", BOOT, component="later")
        assert api.outcomes == []
        status, body = http_get(f"{url}/readyz")
        assert status == 200, body
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_count_invocations_errors_and_timeouts(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend, QA_OPS_ADDR="127.0.0.1:0", LAMBDA_DEADLINE_MARGIN="0.3") as app:
        url = ops_url(app)
        api.invoke({"op": "echo", "value": 1})
        api.invoke({"op": "echo", "value": 2})
        api.invoke({"op": "raise"})
        api.invoke({"op": "sleep", "seconds": 30}, timeout=0.8)
        api.wait_outcomes(4, ANSWER)
        status, text = http_get(f"{url}/metrics")
        assert status == 200
        lines = [line for line in text.splitlines() if "lambda" in line and not line.startswith("#")]
        values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in lines if 'component="orders"' in line}
        by_word = {word: [v for k, v in values.items() if word in k] for word in ("invocations", "errors", "timeouts")}
        assert by_word["invocations"] == [4.0], (by_word, lines)
        assert by_word["timeouts"] == [1.0], (by_word, lines)
        # errors: the raise, and perhaps the timeout too (docs do not say)
        assert by_word["errors"] in ([1.0], [2.0]), (by_word, lines)
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("handler", ["async", "sync", "fn-sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_during_an_invocation_answers_it_and_readyz_says_503(
    api: RuntimeAPI, backend: str, handler: str
) -> None:
    with launch(api, backend, QAS_HANDLER=handler, QA_OPS_ADDR="127.0.0.1:0") as app:
        url = ops_url(app)
        assert http_get(f"{url}/readyz")[0] == 200
        rid = api.invoke({"op": "sleep", "seconds": 2.0}, timeout=30.0)
        api.wait_handed_out(rid, ANSWER)
        queued = api.invoke({"op": "echo", "value": "never"})
        time.sleep(0.2)
        app.send(signal.SIGTERM)
        app.wait_event("shutdown requested", 10.0)
        try:
            status, _ = http_get(f"{url}/readyz")
        except (urllib.error.URLError, ConnectionError):
            status = -1  # the endpoint already closed: also not ready
        if api.outcomes == []:  # still finishing the invocation in hand
            assert status in (503, -1), status
        assert app.wait(EXIT) == 0, app.dump()
    body = answered(api, rid, "response", 1.0)
    assert body["rid"] == rid and body["slept"] == 2.0
    assert api.handed_out(queued) is None
    assert api.violations == []


# -- the platform misbehaving --------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_long_poll_outlives_the_api_timeout(api: RuntimeAPI, backend: str) -> None:
    """LAMBDA_API_TIMEOUT bounds each call, but the wait for the next invocation has no limit."""
    with launch(api, backend, LAMBDA_API_TIMEOUT="1") as app:
        time.sleep(3.0)
        assert app.proc.poll() is None, app.dump()
        rid = api.invoke({"op": "echo", "value": "late"})
        assert answered(api, rid, "response")["echo"] == "late"
        api.wait_polling(ANSWER, nexts=2)
        assert terminate(app) == 0, app.dump()
    assert api.nexts == 2, api.describe()  # the first poll waited the 3 s: no timeout, no re-poll


@pytest.mark.parametrize("status", [400, 413])
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_answer_refused_with_a_4xx_is_logged_and_serving_goes_on(api: RuntimeAPI, backend: str, status: int) -> None:
    with launch(api, backend) as app:
        api.refuse_answers(status)
        refused = api.invoke({"op": "echo", "value": "too large, say"})
        assert api.outcome(refused, ANSWER).kind == "refused response"
        after = api.invoke({"op": "echo", "value": "next"})
        assert answered(api, after, "response")["rid"] == after
        assert app.proc.poll() is None
        assert str(status) in app.stderr, app.dump()
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_500_to_an_error_post_ends_the_runtime(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend) as app:
        api.refuse_answers(500)
        rid = api.invoke({"op": "raise"})
        assert api.outcome(rid, ANSWER).kind == "refused error"
        assert app.wait(EXIT) == 1, app.dump()
    assert "500" in app.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_restart_policy_tries_again_after_a_container_error(api: RuntimeAPI, backend: str) -> None:
    """docs: 'Give the listener a restart policy if you want it to try again instead.'"""
    with launch(api, backend, QAS_RESTART="on_failure") as app:
        api.refuse_answers(500)
        refused = api.invoke({"op": "echo", "value": 1})
        assert api.outcome(refused, ANSWER).kind == "refused response"
        after = api.invoke({"op": "echo", "value": 2})
        assert answered(api, after, "response", 30.0)["rid"] == after
        assert app.proc.poll() is None
        assert terminate(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_api_going_away_mid_run_ends_the_app(backend: str) -> None:
    api = RuntimeAPI().start()
    try:
        app = launch(api, backend)
        rid = api.invoke({"op": "echo", "value": 1})
        answered(api, rid, "response")
        api.wait_polling(ANSWER, nexts=2)
    finally:
        api.close()  # the poll's connection ends unanswered; the port then refuses
    with app:
        assert app.wait(60.0) == 1, app.dump()


class _BadPlatform(ThreadingHTTPServer):
    """Answers ``next`` with a fixed status and headers (no request id, say); records the requests."""

    daemon_threads = True

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self.seen: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                outer.seen.append(("GET", self.path))
                self._reply(outer.status, outer.headers, b'{"op": "echo"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append(("POST", self.path))
                self._reply(202, {}, b"{}")

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_port}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        pytest.param(200, {"Lambda-Runtime-Deadline-Ms": "99999999999999"}, id="200-without-request-id"),
        pytest.param(500, {}, id="500"),
        pytest.param(404, {}, id="404"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_next_answer_that_is_not_an_invocation_ends_the_app(
    backend: str, status: int, headers: dict[str, str]
) -> None:
    platform = _BadPlatform(status, headers)
    try:
        app = run_to_exit(platform.address, backend, timeout=60.0)
    finally:
        platform.close()
    assert app.proc.returncode == 1, app.dump()
    assert str(status) in app.stderr or "request id" in app.stderr.lower(), app.dump()
    assert all(path != INIT_ERROR for _, path in platform.seen) or status != 200, platform.seen
    assert [p for m, p in platform.seen if m == "POST" and "/invocation/" in p] == [], platform.seen


# -- refusing to start ------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        "http://127.0.0.1:9001",
        "localhost",
        "127.0.0.1",
        "127.0.0.1:port",
        "127.0.0.1:99999",
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_runtime_api_that_is_not_host_port_is_refused_naming_the_variable(backend: str, value: str) -> None:
    """docs: 'Without it (or with something that is not host:port) the listener's init fails with a
    ConfigError naming the variable'. So: no run, no connection attempt, the variable named."""
    app = run_to_exit(value, backend)
    assert app.proc.returncode == 1, app.dump()
    failures = [e for e in app.events if e.get("level") == "error" and "failed" in str(e.get("event"))]
    assert failures, app.dump()
    assert "AWS_LAMBDA_RUNTIME_API" in str(failures[0]["event"]), failures[0]["event"]
    assert not any(e.get("event") == "run starting" for e in app.events), app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_prefixed_runtime_api_variable_is_not_read(api: RuntimeAPI, backend: str) -> None:
    app = run_to_exit(None, backend, QA_AWS_LAMBDA_RUNTIME_API=api.address)
    assert app.proc.returncode == 1, app.dump()
    assert "AWS_LAMBDA_RUNTIME_API" in app.stderr, app.dump()
    assert api.requests == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_help_lists_the_lambda_settings_without_a_runtime_api(backend: str) -> None:
    app = run_to_exit(None, backend, "--help")
    assert app.proc.returncode == 0, app.dump()
    text = app.stdout + app.stderr
    assert "LAMBDA_DEADLINE_MARGIN" in text and "LAMBDA_API_TIMEOUT" in text, app.dump()


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("LAMBDA_DEADLINE_MARGIN", "soon"),
        ("LAMBDA_DEADLINE_MARGIN", "-1"),
        ("LAMBDA_DEADLINE_MARGIN", "nan"),
        ("LAMBDA_DEADLINE_MARGIN", "inf"),
        ("QA_LAMBDA_DEADLINE_MARGIN", "-0.5"),
        ("LAMBDA_API_TIMEOUT", "0"),
        ("LAMBDA_API_TIMEOUT", "-3"),
        ("LAMBDA_API_TIMEOUT", "abc"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_lambda_setting_is_refused_naming_it_and_reported(
    api: RuntimeAPI, backend: str, setting: str, value: str
) -> None:
    app = run_to_exit(api.address, backend, **{setting: value})
    assert app.proc.returncode == 1, app.dump()
    name = setting.removeprefix("QA_")
    assert name in app.stderr, app.dump()
    errors = api.init_errors
    assert len(errors) == 1, (errors, app.dump())
    body = errors[0].json()
    assert body["errorType"] == "ConfigError" and name in body["errorMessage"], body
    assert api.nexts == 0


# -- a failed boot: init/error ---------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "error_type", "words"),
    [
        pytest.param({"QAS_FAIL": "init"}, "ConnectionError", ["db", "qa database unreachable"], id="init"),
        pytest.param(
            {"QAS_FAIL": "preflight"}, "PermissionError", ["preflighted", "qa preflight refused"], id="preflight"
        ),
        pytest.param(
            {"QAS_FAIL": "slow-init", "QA_INIT_TIMEOUT": "0.5"}, "ComponentTimeoutError", ["db"], id="init-timeout"
        ),
        pytest.param({"QAS_FAIL": "inject"}, "InjectionError", ["orders", "no_such_service_qa"], id="inject"),
        pytest.param({"LAMBDA_DEADLINE_MARGIN": "later"}, "ConfigError", ["LAMBDA_DEADLINE_MARGIN"], id="config"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_init_error_type_header_and_trace(
    api: RuntimeAPI, backend: str, extra: dict[str, str], error_type: str, words: list[str]
) -> None:
    app = run_to_exit(api.address, backend, **extra)
    assert app.proc.returncode == 1, app.dump()
    assert len(api.init_errors) == 1, (api.init_errors, app.dump())
    error = api.init_errors[0]
    body = error.json()
    assert body["errorType"] == error_type, body
    assert error.headers.get(ERROR_TYPE) == error_type, error.headers
    for word in words:
        assert word in body["errorMessage"], body
    assert isinstance(body["stackTrace"], list) and all(isinstance(line, str) for line in body["stackTrace"]), body
    assert api.nexts == 0
    assert [r for r in api.requests if r[0] == "POST"] == [("POST", INIT_ERROR)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_error_lists_every_error_of_the_boot(api: RuntimeAPI, backend: str) -> None:
    """An init fails, then an earlier initializer's finalize fails in the unwind: both in errorMessage."""
    app = run_to_exit(api.address, backend, QAS_FAIL="init-and-finalize")
    assert app.proc.returncode == 1, app.dump()
    assert len(api.init_errors) == 1, app.dump()
    body = api.init_errors[0].json()
    assert body["errorType"] == "ConnectionError", body
    message = body["errorMessage"]
    for word in ("qa database unreachable", "qa finalize broke too", "broken_finalize", "finalize"):
        assert word in message, body
    assert any("init" in line for line in body["stackTrace"]), body  # the first error's trace


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_container_error_fails_the_run_with_runtime_api_error(api: RuntimeAPI, backend: str) -> None:
    with launch(api, backend) as app:
        api.refuse_answers(500)
        api.invoke({"op": "echo", "value": 1})
        assert app.wait(EXIT) == 1, app.dump()
    failed = [e for e in app.events if e.get("event", "").startswith("orders: run failed")]
    assert failed, app.dump()
    assert "RuntimeAPIError" in failed[0]["event"] and "ExceptionGroup" not in failed[0]["event"], failed[0]["event"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_api_going_away_is_a_clear_error(backend: str) -> None:
    api = RuntimeAPI().start()
    address = api.address
    try:
        app = launch(api, backend)
    finally:
        api.close()
    with app:
        assert app.wait(60.0) == 1, app.dump()
    failed = [e for e in app.events if e.get("event", "").startswith("orders: run failed")]
    assert failed, app.dump()
    text = failed[0]["event"]
    assert "ExceptionGroup" not in text and (address in text or "AWS_LAMBDA_RUNTIME_API" in text), text


def test_runtime_api_error_is_importable() -> None:
    import nacelle_py
    import nacelle_py.base

    assert hasattr(nacelle_py.base, "RuntimeAPIError") or hasattr(nacelle_py, "RuntimeAPIError")


def test_the_lambda_metrics_are_documented_with_the_others() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for name in ("nacelle_lambda_invocations_total", "nacelle_lambda_errors_total", "nacelle_lambda_timeouts_total"):
        assert name in text, name
