"""LambdaListener's own parts: the context, the settings, the missing variable, the init-error report, the edges.

The protocol itself, with the app as a real subprocess, is tests/base/test_lambda.py's. Here a small
Runtime API (an ASGI app served by Hypercorn on 127.0.0.1) answers the listener in the test's process.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple

import anyio
import pytest
import structlog
from _support import Boom, serving, wait_until
from structlog.testing import capture_logs

from nacelle_py import App, ConfigError, Initializer, MissingExtraError, RegistrationError
from nacelle_py._serving import ASGIServing, listen
from nacelle_py.base import LambdaContext, LambdaListener, LambdaSettings
from nacelle_py.base._lambda._context import FunctionEnvironment, parse_json_header
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio

RUNTIME = "/2018-06-01/runtime"
LAMBDA_SETTINGS = ("LAMBDA_DEADLINE_MARGIN", "LAMBDA_API_TIMEOUT")


class Post(NamedTuple):
    """One POST the listener made: the path under /2018-06-01/runtime, its headers and its JSON body."""

    path: str
    headers: dict[str, str]
    body: Any


class FakeRuntimeAPI:
    """The Runtime API's four calls: ``invoke()`` queues an event for ``invocation/next``; POSTs are recorded."""

    def __init__(self) -> None:
        self._send, self._events = anyio.create_memory_object_stream[tuple[bytes, list[tuple[bytes, bytes]]]](64)
        self.posts: list[Post] = []
        self.polls = 0

    def invoke(
        self, request_id: str, event: Any = None, *, raw: bytes | None = None, deadline_in: float = 5.0, **headers: str
    ) -> None:
        deadline = int((time.time() + deadline_in) * 1000)
        sent = {
            "lambda-runtime-aws-request-id": request_id,
            "lambda-runtime-deadline-ms": str(deadline),
            "lambda-runtime-invoked-function-arn": "arn:aws:lambda:eu-west-1:123456789012:function:orders",
            **{name.replace("_", "-"): value for name, value in headers.items()},
        }
        body = raw if raw is not None else json.dumps(event).encode()
        self._send.send_nowait((body, [(k.encode(), v.encode()) for k, v in sent.items()]))

    def answers(self) -> dict[str, Post]:
        """The invocation answers by request id (response or error)."""
        found = {}
        for post in self.posts:
            parts = post.path.split("/")
            if len(parts) == 4 and parts[1] == "invocation":
                found[parts[2]] = post
        return found

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"].removeprefix(RUNTIME)
        if scope["method"] == "GET" and path == "/invocation/next":
            self.polls += 1
            event, headers = await self._events.receive()
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": event})
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.posts.append(Post(path, headers, json.loads(body)))
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status":"OK"}'})


@asynccontextmanager
async def runtime_api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeRuntimeAPI]:
    """A FakeRuntimeAPI on a free port of 127.0.0.1, named by AWS_LAMBDA_RUNTIME_API for the test."""
    api = FakeRuntimeAPI()
    server = ASGIServing(
        api, listen("127.0.0.1", 0, settings="test"), graceful_timeout=0.5, logger=structlog.get_logger()
    )
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", f"127.0.0.1:{server.address[1]}")
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            try:
                yield api
            finally:
                server.shutdown()


class Recorder(LambdaListener):
    """Answers {"echo": event}; raises for "boom"; returns a set (not JSON) for "set"; records its contexts."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[LambdaContext] = []
        self.traces: list[str | None] = []

    async def handle(self, event: Any, context: LambdaContext) -> object:
        self.contexts.append(context)
        self.traces.append(os.environ.get("_X_AMZN_TRACE_ID"))
        self.logger.info("handling", payload=event)
        if event == "boom":
            raise Boom("refused")
        if event == "set":
            return {1, 2}
        return {"echo": event}


@pytest.fixture(autouse=True)
def no_lambda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The platform's variables and the listener's settings (prefixed or not) are the test's alone."""
    for key in list(os.environ):
        if key.startswith("AWS_LAMBDA_") or key == "_X_AMZN_TRACE_ID" or key.endswith(LAMBDA_SETTINGS):
            monkeypatch.delenv(key)


# -- the context ------------------------------------------------------------------------


def test_the_context_reads_the_function_from_the_environment() -> None:
    environment = FunctionEnvironment.read(
        {
            "AWS_LAMBDA_FUNCTION_NAME": "orders",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/orders",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2024/01/01/[$LATEST]abc",
        }
    )
    deadline_ms = int(time.time() * 1000) + 60_000
    context = LambdaContext(
        aws_request_id="r1",
        deadline_ms=deadline_ms,
        invoked_function_arn="arn:x",
        trace_id="Root=1",
        client_context={"custom": {"k": "v"}},
        identity={"cognito_identity_id": "id"},
        environment=environment,
    )
    assert (context.function_name, context.function_version, context.memory_limit_in_mb) == ("orders", "$LATEST", 512)
    assert (context.log_group_name, context.log_stream_name) == ("/aws/lambda/orders", "2024/01/01/[$LATEST]abc")
    assert context.deadline == datetime.fromtimestamp(deadline_ms / 1000, tz=UTC)
    assert context.deadline.tzinfo is UTC
    assert 50_000 < context.get_remaining_time_in_millis() <= 60_000
    assert "r1" in repr(context)
    past = LambdaContext(aws_request_id="r2", deadline_ms=deadline_ms - 120_000, environment=environment)
    assert past.get_remaining_time_in_millis() == 0


def test_an_unset_environment_gives_none() -> None:
    environment = FunctionEnvironment.read({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "lots"})
    assert environment == FunctionEnvironment(None, None, None, None, None)


def test_json_headers_parse_or_give_none() -> None:
    assert parse_json_header('{"a": [1]}') == {"a": [1]}
    assert parse_json_header("{not json") is None
    assert parse_json_header("") is None and parse_json_header(None) is None


# -- settings, registration, the missing variable -------------------------------------------


@pytest.mark.parametrize(("variable", "value"), [("LAMBDA_DEADLINE_MARGIN", "-0.1"), ("LAMBDA_API_TIMEOUT", "0")])
def test_settings_are_checked(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    from nacelle_py import Config

    monkeypatch.setenv(f"LAM_{variable}", value)
    with pytest.raises(ConfigError, match=f"LAM_{variable}"):
        Config("LAM_").load(LambdaSettings)


def test_the_defaults_and_a_zero_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    from nacelle_py import Config

    assert Config("LAM_").load(LambdaSettings) == LambdaSettings(deadline_margin=0.1, api_timeout=10.0)
    monkeypatch.setenv("LAM_LAMBDA_DEADLINE_MARGIN", "0")
    assert Config("LAM_").load(LambdaSettings).deadline_margin == 0


def test_a_handler_is_required() -> None:
    with pytest.raises(RegistrationError, match="override handle"):
        LambdaListener()
    with pytest.raises(RegistrationError, match="handler must be a function"):
        LambdaListener(handler=42)  # type: ignore[arg-type]


def test_without_httpx_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # import httpx now raises ImportError
    with pytest.raises(MissingExtraError, match=r"nacelle-py\[lambda\]"):
        Recorder()


@pytest.mark.parametrize("value", [None, "", "http://127.0.0.1:9001/", "127.0.0.1:"])
async def test_without_the_runtime_api_the_listener_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", value)
    monkeypatch.setenv("LAM_AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")  # prefixed: not the platform's, not read
    app = test_app("lam")
    app.register(Recorder(), name="orders")
    with capture_logs(), anyio.fail_after(5):
        assert await app.serve() == 1
    [error] = app.errors
    assert (error.component, error.operation) == ("orders", "init")
    assert isinstance(error.cause, ConfigError) and "AWS_LAMBDA_RUNTIME_API" in str(error)
    assert ("not set" in str(error)) == (not value)


# -- the init-error report --------------------------------------------------------------


async def test_a_config_error_is_posted_to_init_error_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMBDA_DEADLINE_MARGIN", "-1")
    async with runtime_api(monkeypatch) as api:
        app = test_app("lam")
        app.register(Recorder(), name="orders")
        with capture_logs():
            assert await app.serve() == 1
    [post] = api.posts
    assert post.path == "/init/error" and api.polls == 0
    assert post.body["errorType"] == "ConfigError" == post.headers["lambda-runtime-function-error-type"]
    assert "LAMBDA_DEADLINE_MARGIN" in post.body["errorMessage"] and isinstance(post.body["stackTrace"], list)


async def test_another_components_init_failure_is_posted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    class Database(Initializer):
        async def init(self) -> None:
            raise Boom("database unreachable")

    async with runtime_api(monkeypatch) as api:
        app = test_app("lam")
        app.register(Database(), name="db")
        app.register(Recorder(), name="orders", priority=1)
        with capture_logs():
            assert await app.serve() == 1
    [post] = api.posts
    assert post.path == "/init/error" and api.polls == 0
    assert post.body["errorType"] == "Boom"
    assert post.body["errorMessage"] == "db: init failed: Boom: database unreachable"
    assert any("raise Boom" in frame for frame in post.body["stackTrace"])


async def test_a_failed_boot_without_the_runtime_api_is_only_logged() -> None:
    app = test_app("lam")
    app.register(Recorder(), name="orders")
    with capture_logs() as logs, anyio.fail_after(5):
        assert await app.serve() == 1
    assert any(line["event"].startswith("cannot report the failed start") for line in logs)


# -- invocations ------------------------------------------------------------------------


async def test_every_line_of_an_invocation_carries_its_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAM_LOG_ENCODING", "json")
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "outer")
    stream = io.StringIO()
    listener = Recorder()
    async with runtime_api(monkeypatch) as api:
        app = App("lam", log_stream=stream, handle_signals=False)
        app.register(listener, name="orders")
        async with serving(app):
            api.invoke("r1", {"n": 1}, lambda_runtime_trace_id="Root=1-a")
            api.invoke("r2", "boom")
            await wait_until(lambda: len(api.posts) == 2)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    handling = [line for line in lines if line["event"] in ("handling", "invocation failed")]
    assert [(line["event"], line["aws_request_id"]) for line in handling] == [
        ("handling", "r1"),
        ("handling", "r2"),
        ("invocation failed", "r2"),
    ]
    assert not [line for line in lines if line not in handling and "aws_request_id" in line]
    assert listener.traces == ["Root=1-a", None] and os.environ["_X_AMZN_TRACE_ID"] == "outer"
    assert listener.stats() == (2, 1, 0)


async def test_what_cannot_be_decoded_or_encoded_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = Recorder()
    async with runtime_api(monkeypatch) as api:
        app = test_app("lam")
        app.register(listener, name="orders")
        with capture_logs() as logs:
            async with serving(app):
                api.invoke("bad-event", raw=b"{not json")
                api.invoke("set", "set")
                api.invoke(
                    "ctx",
                    {"n": 1},
                    lambda_runtime_client_context="{oops",
                    lambda_runtime_cognito_identity='{"cognitoIdentityId": "id"}',
                )
                await wait_until(lambda: len(api.posts) == 3)
    answers = api.answers()
    assert answers["bad-event"].body["errorType"] == "Runtime.UnmarshalError"
    assert answers["set"].body["errorType"] == "Runtime.MarshalError"
    assert "orders: handle() returned a value JSON cannot encode (set)" in answers["set"].body["errorMessage"]
    assert answers["ctx"].path.endswith("/response") and answers["ctx"].body == {"echo": {"n": 1}}
    context = listener.contexts[-1]
    assert context.client_context is None and context.identity == {"cognitoIdentityId": "id"}
    assert context.invoked_function_arn == "arn:aws:lambda:eu-west-1:123456789012:function:orders"
    assert any(line.get("header") == "Lambda-Runtime-Client-Context" for line in logs)


async def test_a_plain_handler_past_its_deadline_is_abandoned_and_the_next_gets_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    threads: list[str] = []

    def handle(event: Any, context: LambdaContext) -> object:
        threads.append(threading.current_thread().name)
        if event == "block":
            release.wait(10)
        return {"thread": len(threads)}

    listener = LambdaListener(handler=handle)
    try:
        async with runtime_api(monkeypatch) as api:
            app = test_app("lam")
            app.register(listener, name="orders")
            with capture_logs():
                async with serving(app):
                    api.invoke("slow", "block", deadline_in=0.5)
                    await wait_until(lambda: len(api.posts) == 1)
                    api.invoke("next", "quick")
                    await wait_until(lambda: len(api.posts) == 2)
    finally:
        release.set()
    answers = api.answers()
    assert answers["slow"].body["errorType"] == "TimeoutError"
    assert "LAMBDA_DEADLINE_MARGIN" in answers["slow"].body["errorMessage"]
    assert "abandoned" in answers["slow"].body["errorMessage"]
    assert answers["next"].body == {"thread": 2}
    assert len(set(threads)) == 1  # named alike; two threads: the first was still blocked
    assert listener.stats() == (2, 1, 1)


async def test_boot_failed_hears_of_it_once_even_with_a_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[Sequence[Any]] = []

    class Listener(Recorder):
        async def boot_failed(self, errors: Sequence[Any]) -> None:
            heard.append(errors)
            await super().boot_failed(errors)

    monkeypatch.setenv("LAMBDA_API_TIMEOUT", "nope")
    async with runtime_api(monkeypatch) as api:
        app = test_app("lam")
        app.register(Listener(), name="orders")
        with capture_logs():
            assert await app.serve() == 1
    assert len(heard) == 1 and [p.path for p in api.posts] == ["/init/error"]
