"""LambdaListener end to end: the app as a real subprocess against a Runtime API server.

tests/_lambda_runtime.py is the platform, written from the Runtime API's
documentation (the real one cannot run here); tests/scripts/lambda_app.py is
the app, booted on asyncio or trio with ``AWS_LAMBDA_RUNTIME_API`` pointing at
it. The tests queue invocations and read back, in order, what the runtime
posted. They drive subprocesses only, so they are plain functions,
parametrised over the subprocess's backend. The only timings asserted are the
contract's bounds: a timed-out invocation is answered before its deadline and
not before its deadline minus the margin.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _lambda_runtime import RuntimeAPI, runtime_env  # noqa: E402
from harness import SCRIPTS, AppProcess, clean_env  # noqa: E402

BACKENDS = ["asyncio", "trio"]
BOOT_TIMEOUT = 30.0  # cold interpreter + imports on a busy machine
EXIT_TIMEOUT = 15.0
ANSWER_TIMEOUT = 15.0
APP = str(SCRIPTS / "lambda_app.py")

FUNCTION_ENV = {
    "AWS_LAMBDA_FUNCTION_NAME": "orders-fn",
    "AWS_LAMBDA_FUNCTION_VERSION": "7",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
    "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/orders-fn",
    "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/03/[7]0123456789abcdef",
}


def lambda_env(api: RuntimeAPI | None, **extra: str) -> dict[str, str]:
    """``clean_env`` without the machine's own Lambda variables, pointed at ``api``."""
    return runtime_env(clean_env(), api.address if api is not None else None, "SCRIPT_", **extra)


@pytest.fixture
def api() -> Iterator[RuntimeAPI]:
    with RuntimeAPI() as server:
        yield server


def start(api: RuntimeAPI, backend: str, **extra: str) -> AppProcess:
    """The app, booted and waiting in its first ``next`` poll."""
    return api.wait_runtime(AppProcess([APP, backend], lambda_env(api, **extra)), BOOT_TIMEOUT)


def stop(app: AppProcess) -> int:
    app.send(signal.SIGTERM)
    return app.wait(EXIT_TIMEOUT)


def error_body(api: RuntimeAPI, rid: str) -> dict[str, Any]:
    outcome = api.outcome(rid, ANSWER_TIMEOUT)
    assert outcome.kind == "error", (outcome, outcome.body)
    body = outcome.json()
    assert isinstance(body, dict)
    return body


# -- invocations ------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_invocations_are_answered_in_order(api: RuntimeAPI, backend: str, handler: str) -> None:
    with start(api, backend, SCRIPT_HANDLER=handler) as app:
        app.wait_event("app healthy; supervising", BOOT_TIMEOUT)
        values: list[Any] = [1, "two", {"three": [3]}, None, [True, False], "é ünïcode ✓"]
        ids = [api.invoke({"op": "echo", "value": value}) for value in values]
        outcomes = api.wait_outcomes(len(ids), ANSWER_TIMEOUT)
        assert [o.request_id for o in outcomes] == ids
        assert [o.kind for o in outcomes] == ["response"] * len(ids), [o.body for o in outcomes]
        assert [o.json() for o in outcomes] == [{"echo": v} for v in values]
        api.wait_polling(ANSWER_TIMEOUT, nexts=len(ids) + 1)  # asks for more, one poll at a time
        assert stop(app) == 0, app.dump()
    assert api.violations == []
    assert api.init_errors == []
    # One poll per invocation plus the one waiting when SIGTERM came: never two at once.
    assert api.nexts == len(ids) + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_invocation_waits_for_the_previous_answer(api: RuntimeAPI, backend: str) -> None:
    """The runtime asks for the next invocation only after it answered the one in hand."""
    with start(api, backend) as app:
        slow = api.invoke({"op": "sleep", "seconds": 0.5})
        fast = api.invoke({"op": "echo", "value": "after"})
        outcomes = api.wait_outcomes(2, ANSWER_TIMEOUT)
        assert [o.request_id for o in outcomes] == [slow, fast]
        assert outcomes[0].json()["slept"] == 0.5
        # The second was handed out only after the first was answered.
        second = api.handed_out(fast)
        assert second is not None and second.handed_out_at is not None
        assert second.handed_out_at >= outcomes[0].received_at
        assert stop(app) == 0, app.dump()
    assert api.violations == []


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_raising_handler_is_answered_with_an_error_and_serving_goes_on(
    api: RuntimeAPI, backend: str, handler: str
) -> None:
    with start(api, backend, SCRIPT_HANDLER=handler) as app:
        failing = api.invoke({"op": "raise", "message": "order 42 is not valid"})
        body = error_body(api, failing)
        assert body["errorType"] == "ValueError"
        assert body["errorMessage"] == "order 42 is not valid"
        trace = body["stackTrace"]
        assert isinstance(trace, list) and trace and all(isinstance(line, str) for line in trace), body
        assert any("lambda_app.py" in line for line in trace), trace  # the handler's own frame is there
        assert set(body) >= {"errorType", "errorMessage", "stackTrace"}
        # Still serving: the app did not exit and answers the next one.
        after = api.invoke({"op": "echo", "value": "still here"})
        assert api.outcome(after, ANSWER_TIMEOUT).json() == {"echo": "still here"}
        assert app.proc.poll() is None
        assert stop(app) == 0, app.dump()
    assert api.violations == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_answer_json_cannot_encode_is_an_error_not_a_crash(api: RuntimeAPI, backend: str) -> None:
    with start(api, backend) as app:
        bad = api.invoke({"op": "unserialisable"})
        body = error_body(api, bad)
        assert body.get("errorType") and body.get("errorMessage"), body
        after = api.invoke({"op": "echo", "value": 1})
        assert api.outcome(after, ANSWER_TIMEOUT).json() == {"echo": 1}
        assert stop(app) == 0, app.dump()
    assert api.violations == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_event_that_is_not_a_json_object_still_reaches_handle(api: RuntimeAPI, backend: str) -> None:
    """Events are any JSON (a list, a string): the handler decides; here it fails on them, as an error answer."""
    with start(api, backend) as app:
        rid = api.invoke(["not", "an", "object"])
        body = error_body(api, rid)
        assert body.get("errorType"), body
        after = api.invoke({"op": "echo", "value": 2})
        assert api.outcome(after, ANSWER_TIMEOUT).json() == {"echo": 2}
        assert stop(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_event_that_is_not_json_is_answered_with_an_error(api: RuntimeAPI, backend: str) -> None:
    with start(api, backend) as app:
        rid = api.invoke(None, raw=b"{not json")
        body = error_body(api, rid)
        assert body.get("errorType") and body.get("errorMessage"), body
        after = api.invoke({"op": "echo", "value": 3})
        assert api.outcome(after, ANSWER_TIMEOUT).json() == {"echo": 3}
        assert stop(app) == 0, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_container_error_from_the_platform_ends_the_runtime(api: RuntimeAPI, backend: str) -> None:
    """The protocol: a 500 to a posted answer means the runtime must exit; the app exits 1 and says why."""
    with start(api, backend) as app:
        api.refuse_answers(500)
        rid = api.invoke({"op": "echo", "value": 4})
        assert api.outcome(rid, ANSWER_TIMEOUT).kind == "refused response"
        assert app.wait(EXIT_TIMEOUT) == 1, app.dump()
    assert "500" in app.stderr, app.dump()


# -- deadline ---------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_handler_near_its_deadline_is_answered_with_a_timeout_error(
    api: RuntimeAPI, backend: str, handler: str
) -> None:
    margin = 0.5
    timeout = 2.0
    with start(api, backend, SCRIPT_HANDLER=handler, LAMBDA_DEADLINE_MARGIN=str(margin)) as app:
        rid = api.invoke({"op": "sleep", "seconds": 30}, timeout=timeout)
        outcome = api.outcome(rid, timeout + ANSWER_TIMEOUT)
        assert outcome.kind == "error", outcome.body
        body = outcome.json()
        assert body["errorType"] == "TimeoutError", body
        assert body.get("errorMessage"), body
        invocation = api.handed_out(rid)
        assert invocation is not None and invocation.handed_out_at is not None and outcome.deadline_ms is not None
        # Before the deadline (the contract), and not before the deadline minus the margin.
        assert outcome.received_at * 1000 < outcome.deadline_ms, (outcome.received_at, outcome.deadline_ms)
        assert outcome.received_at >= invocation.handed_out_at + timeout - margin - 0.05
        # The runtime goes on: the next invocation is answered (a plain handler's thread is abandoned).
        after = api.invoke({"op": "echo", "value": "next"})
        assert api.outcome(after, ANSWER_TIMEOUT).json() == {"echo": "next"}
        assert stop(app) == 0, app.dump()
    assert api.violations == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_handler_that_finishes_inside_the_margin_window_is_answered(api: RuntimeAPI, backend: str) -> None:
    """A handler that ends well before deadline minus margin gets its own answer, not a timeout."""
    with start(api, backend, LAMBDA_DEADLINE_MARGIN="0.5") as app:
        rid = api.invoke({"op": "sleep", "seconds": 0.2}, timeout=5.0)
        outcome = api.outcome(rid, ANSWER_TIMEOUT)
        assert outcome.kind == "response", outcome.body
        assert outcome.json()["slept"] == 0.2
        assert stop(app) == 0, app.dump()


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_invocation_already_past_its_deadline_is_answered_at_once(
    api: RuntimeAPI, backend: str, handler: str
) -> None:
    """A deadline inside the margin when it arrives: a TimeoutError answer, not a 30 s sleep first."""
    with start(api, backend, SCRIPT_HANDLER=handler, LAMBDA_DEADLINE_MARGIN="0.5") as app:
        rid = api.invoke({"op": "sleep", "seconds": 30}, timeout=0.2)
        body = error_body(api, rid)  # ANSWER_TIMEOUT (15 s) < the handler's 30 s
        assert body["errorType"] == "TimeoutError", body
        assert stop(app) == 0, app.dump()


# -- context ----------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_context_carries_the_invocation_and_the_function(api: RuntimeAPI, backend: str, handler: str) -> None:
    trace = "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1"
    client_context = {
        "client": {"installation_id": "install-1", "app_title": "Orders", "app_package_name": "com.example"},
        "custom": {"tenant": "t-9"},
        "env": {"platform": "Android"},
    }
    identity = {"cognitoIdentityId": "id-1", "cognitoIdentityPoolId": "pool-1"}
    arn = "arn:aws:lambda:eu-west-1:123456789012:function:orders-fn:live"
    with start(api, backend, SCRIPT_HANDLER=handler, **FUNCTION_ENV) as app:
        rid = api.invoke(
            {"op": "context"},
            timeout=20.0,
            function_arn=arn,
            trace_id=trace,
            client_context=client_context,
            identity=identity,
        )
        outcome = api.outcome(rid, ANSWER_TIMEOUT)
        assert outcome.kind == "response", outcome.body
        seen = outcome.json()
        assert seen["aws_request_id"] == rid
        assert seen["invoked_function_arn"] == arn
        assert seen["trace_id"] == trace
        assert seen["env_trace_id"] == trace  # _X_AMZN_TRACE_ID during the call
        assert 0 < seen["remaining_ms"] <= 20_000
        deadline = seen["deadline"]
        assert isinstance(deadline, int | float), deadline
        # Lambda-Runtime-Deadline-Ms as milliseconds, or the same instant in seconds.
        assert outcome.deadline_ms is not None
        assert abs(deadline - outcome.deadline_ms) <= 1 or abs(deadline * 1000 - outcome.deadline_ms) <= 1, (
            deadline,
            outcome.deadline_ms,
        )
        context_text = json.dumps(seen["client_context"])
        for value in ("install-1", "Orders", "t-9", "Android"):
            assert value in context_text, seen["client_context"]
        identity_text = json.dumps(seen["identity"])
        assert "id-1" in identity_text and "pool-1" in identity_text, seen["identity"]
        assert seen["function_name"] == "orders-fn"
        assert seen["function_version"] == "7"
        assert int(seen["memory_limit_in_mb"]) == 256
        assert seen["log_group_name"] == "/aws/lambda/orders-fn"
        assert seen["log_stream_name"] == FUNCTION_ENV["AWS_LAMBDA_LOG_STREAM_NAME"]

        # A later invocation without a trace id, without client context or identity, sees none of the first's.
        bare = api.invoke({"op": "context"})
        later = api.outcome(bare, ANSWER_TIMEOUT).json()
        assert later["aws_request_id"] == bare
        assert later["trace_id"] in (None, "")
        assert later["env_trace_id"] in (None, "")
        assert later["client_context"] is None
        assert later["identity"] is None
        assert stop(app) == 0, app.dump()


# -- logs -------------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_log_line_of_an_invocation_carries_its_request_id(api: RuntimeAPI, backend: str, handler: str) -> None:
    with start(api, backend, SCRIPT_HANDLER=handler) as app:
        first = api.invoke({"op": "log", "lines": 3})
        second = api.invoke({"op": "log", "lines": 2})
        failing = api.invoke({"op": "raise", "message": "logged failure 17"})
        api.wait_outcomes(3, ANSWER_TIMEOUT)
        app.wait_for(lambda e: e.get("event") == "handler step" and e.get("aws_request_id") == second, 10.0)
        steps = [e for e in app.events if e.get("event") == "handler step"]
        assert [(e.get("aws_request_id"), e.get("line")) for e in steps] == [
            (first, 0),
            (first, 1),
            (first, 2),
            (second, 0),
            (second, 1),
        ], app.dump()
        assert all(e.get("component") == "orders" for e in steps), steps
        assert stop(app) == 0, app.dump()
    # Whatever the listener logs about the failed invocation carries that invocation's id.
    about_failure = [e for e in app.events if "logged failure 17" in json.dumps(e)]
    assert all(e.get("aws_request_id") == failing for e in about_failure), about_failure
    # Lines outside an invocation (boot, stop) carry none.
    assert all("aws_request_id" not in e for e in app.events if e.get("event") == "app healthy; supervising")


# -- health and stop ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_healthy_once_it_asked_for_the_first_invocation(api: RuntimeAPI, backend: str) -> None:
    with start(api, backend) as app:
        app.wait_event("app healthy; supervising", BOOT_TIMEOUT)
        assert api.nexts >= 1
        assert stop(app) == 0, app.dump()


@pytest.mark.parametrize("handler", ["async", "sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_between_invocations_exits_0(api: RuntimeAPI, backend: str, handler: str) -> None:
    with start(api, backend, SCRIPT_HANDLER=handler) as app:
        rid = api.invoke({"op": "echo", "value": 1})
        assert api.outcome(rid, ANSWER_TIMEOUT).kind == "response"
        api.wait_polling(ANSWER_TIMEOUT, nexts=2)  # idle in the long poll (the server holds it up to 60 s)
        assert stop(app) == 0, app.dump()
        app.assert_order((None, "app healthy; supervising"), ("database", "database closed"))
    assert api.violations == []
    assert api.init_errors == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_during_an_invocation_finishes_it_and_asks_for_no_more(api: RuntimeAPI, backend: str) -> None:
    with start(api, backend) as app:
        rid = api.invoke({"op": "sleep", "seconds": 1.5}, timeout=30.0)
        api.wait_handed_out(rid, ANSWER_TIMEOUT)
        queued = api.invoke({"op": "echo", "value": "never"})
        app.send(signal.SIGTERM)
        assert app.wait(EXIT_TIMEOUT) == 0, app.dump()
    outcome = api.outcome(rid, 1.0)
    assert outcome.kind == "response", outcome.body
    assert outcome.json()["slept"] == 1.5
    assert api.handed_out(queued) is None  # stopped: asked for no more
    assert api.nexts == 1
    assert api.violations == []


# -- boot failures ------------------------------------------------------------------


def run_to_exit(api: RuntimeAPI | None, backend: str, **extra: str) -> AppProcess:
    app = AppProcess([APP, backend], lambda_env(api, **extra))
    try:
        status = app.wait(BOOT_TIMEOUT)
    except BaseException:
        app.close()
        raise
    assert status == 1, app.dump()
    app.close()
    return app


@pytest.mark.parametrize(
    ("fail", "names"),
    [
        pytest.param({"SCRIPT_FAIL": "init"}, ["database unreachable at cold start"], id="init"),
        pytest.param({"LAMBDA_DEADLINE_MARGIN": "soon"}, ["LAMBDA_DEADLINE_MARGIN"], id="config"),
        pytest.param({"SCRIPT_FAIL": "inject"}, ["no_such_service"], id="inject"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_boot_is_reported_once_as_an_init_error(
    api: RuntimeAPI, backend: str, fail: dict[str, str], names: list[str]
) -> None:
    app = run_to_exit(api, backend, **fail)
    errors = api.init_errors
    assert len(errors) == 1, (errors, app.dump())
    body = errors[0].json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("errorType"), str) and body["errorType"], body
    assert isinstance(body.get("errorMessage"), str), body
    for name in names:
        assert name in body["errorMessage"], body
    if "stackTrace" in body:
        assert isinstance(body["stackTrace"], list), body
    # It never asked for an invocation, and said nothing else to the platform.
    assert api.nexts == 0, api.describe()
    assert [r for r in api.requests if r[0] == "POST"] == [("POST", "/2018-06-01/runtime/init/error")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_the_runtime_api_variable_it_refuses_to_start(backend: str) -> None:
    app = run_to_exit(None, backend)
    assert "AWS_LAMBDA_RUNTIME_API" in app.stderr, app.dump()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreachable_runtime_api_ends_the_app_instead_of_idling(backend: str) -> None:
    """A mistaken address must not idle forever either: the app exits 1 (bounded), naming the address."""
    with RuntimeAPI() as gone:
        address = gone.address
    app = AppProcess([APP, backend], lambda_env(None, AWS_LAMBDA_RUNTIME_API=address))
    with app:
        status = app.wait(60.0)
    assert status == 1, app.dump()
    assert address in app.stderr or "AWS_LAMBDA_RUNTIME_API" in app.stderr, app.dump()
