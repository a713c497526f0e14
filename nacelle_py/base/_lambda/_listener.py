"""LambdaListener: the app as an AWS Lambda function, serving invocations through the Runtime API."""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Annotated, Any, ClassVar, NamedTuple

import anyio
import structlog
from structlog.contextvars import bind_contextvars, reset_contextvars

from ..._calls import is_async
from ..._components import Process
from ..._config import Config
from ..._errors import ComponentError, ConfigError, RegistrationError
from ..._extras import require
from ..._health import Health, HealthComponent
from ..._inject import Inject
from ..._lane import Lane
from ..._metric import Metric
from ..._waker import Waker
from ._context import FunctionEnvironment, LambdaContext, parse_json_header
from ._errors import ErrorBody, error_body, init_error_body
from ._runtime import RUNTIME_API_ENV, Invocation, RuntimeAPIError, RuntimeClient, runtime_address
from ._settings import LambdaSettings

__all__ = ["LambdaListener", "LambdaStats"]

Handler = Callable[[Any, LambdaContext], Awaitable[object] | object]
TRACE_ENV = "_X_AMZN_TRACE_ID"


class LambdaStats(NamedTuple):
    """A listener's counters: invocations answered, answered with an error, and cancelled at the deadline."""

    invocations: Annotated[int, Metric.counter("Lambda invocations the listener answered (results and errors).")]
    errors: Annotated[int, Metric.counter("Lambda invocations answered with an error (timeouts included).")]
    timeouts: Annotated[
        int, Metric.counter("Lambda invocations cancelled near their deadline (LAMBDA_DEADLINE_MARGIN).")
    ]


class _Timeout(Exception):
    """The handler was cancelled ``LAMBDA_DEADLINE_MARGIN`` before the deadline."""


class LambdaListener(Process):
    """Serves AWS Lambda invocations with ``handle(event, context)``, as a custom runtime (needs ``nacelle-py[lambda]``).

    Subclass and override ``handle`` (``async def`` is awaited; a plain
    ``def`` runs on the listener's thread), or pass ``handler=``. ``run``
    asks the Runtime API at ``AWS_LAMBDA_RUNTIME_API`` (the platform's
    variable, read as is, never with the app's prefix) for one invocation
    after another, calls ``handle`` with the parsed JSON event and a
    ``LambdaContext``, and posts the JSON result, or an error body
    (``errorType``, ``errorMessage``, ``stackTrace``) when ``handle`` raises
    or returns what JSON cannot encode (``Runtime.MarshalError``). A handler
    still running ``LAMBDA_DEADLINE_MARGIN`` seconds before the deadline is
    cancelled (a plain one abandoned on its thread) and answered with
    ``TimeoutError``. Every log line of an invocation carries
    ``aws_request_id`` (structlog's contextvars). The health key (the
    component's name) turns healthy as it asks for the first invocation;
    ``stop()`` lets the invocation in hand finish and asks for no more. A
    failed boot of the app is posted once to ``init/error``
    (``boot_failed``). One listener per app: the process is one runtime.
    """

    health_keys: ClassVar[tuple[str, ...] | None] = ("{name}",)

    health: Health | None = Inject("health", optional=True)
    logger: Any = Inject("logger", optional=True)
    settings: LambdaSettings = Inject()

    def __init__(self, handler: Handler | None = None) -> None:
        require("httpx", "lambda", "LambdaListener")
        if handler is not None and (not callable(handler) or isinstance(handler, type)):
            raise RegistrationError(f"LambdaListener: handler must be a function (event, context), got {handler!r}")
        if handler is None and type(self).handle is LambdaListener.handle:
            raise RegistrationError(
                "LambdaListener: pass handler=..., or subclass LambdaListener and override handle(event, context)"
            )
        self._handler: Handler = handler if handler is not None else self.handle
        self._name = type(self).__name__
        self._address: str | None = None
        self._health: HealthComponent | None = None
        self._stopping: anyio.Event | None = None
        self._poll: anyio.CancelScope | None = None
        self._lane: Lane | None = None
        self._invocations = 0
        self._errors = 0
        self._timeouts = 0

    # A plain ``def`` returning Any here, so that a subclass may override it with an ``async def``
    # or a plain ``def`` and type-check either way (an async override returns a coroutine).
    def handle(self, event: Any, context: LambdaContext) -> Any:
        """One invocation: return a JSON-serialisable result or raise; override it (or pass ``handler=``)."""
        raise NotImplementedError("LambdaListener.handle: override it in a subclass")

    def stats(self) -> LambdaStats:
        """Invocations answered, errors answered (timeouts included), timeouts."""
        return LambdaStats(self._invocations, self._errors, self._timeouts)

    # -- lifecycle ----------------------------------------------------------------------

    async def init(self) -> None:
        """Check ``AWS_LAMBDA_RUNTIME_API`` (a ``ConfigError`` naming it when unset) and register the health key."""
        health = vars(self).get("health")
        if health is not None:
            self._name = health.owner or self._name
        self._address = runtime_address(os.environ, self._name)
        if health is not None:
            self._health = health.register(health.owner or "lambda")

    async def run(self) -> None:
        """Serve invocations until ``stop()``; a Runtime API that fails (or answers 5xx) ends it with the error."""
        if self._stopping is not None:
            raise RuntimeError("LambdaListener.run: the listener is already running")
        address = self._address or runtime_address(os.environ, self._name)  # standalone: no init ran
        settings = self._settings()
        stopping = self._stopping = anyio.Event()
        client = RuntimeClient(address, settings.api_timeout)
        plain = not is_async(self._handler)
        waker = Waker() if plain else None
        try:
            if waker is None:
                await self._serve(client, settings, stopping, waker)
            else:
                failure: Exception | None = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waker.pump)
                    try:
                        await self._serve(client, settings, stopping, waker)
                    except Exception as exc:  # raised below as itself, not in the task group's ExceptionGroup
                        failure = exc
                    tg.cancel_scope.cancel()
                if failure is not None:
                    raise failure
        finally:
            self._stopping = None
            self._poll = None
            if self._lane is not None:
                self._lane.close()
                self._lane = None
            if waker is not None:
                waker.close()
            if self._health is not None:
                self._health.update(False, "stopped")
            with anyio.CancelScope(shield=True), anyio.move_on_after(settings.api_timeout):
                await client.aclose()

    async def stop(self) -> None:
        """Ask for no more invocations: the long poll is cancelled, the invocation in hand finishes."""
        if self._stopping is not None:
            self._stopping.set()
            if self._poll is not None:
                self._poll.cancel()

    async def boot_failed(self, errors: Sequence[ComponentError]) -> None:
        """Post the failed boot to the Runtime API's ``init/error`` (once: the app calls this once)."""
        log = self._log()
        try:
            address = runtime_address(os.environ, self._name)
        except ConfigError:
            log.warning("cannot report the failed start to Lambda: no Runtime API", variable=RUNTIME_API_ENV)
            return
        body = init_error_body(errors)
        client = RuntimeClient(address, self._settings(fallback=True).api_timeout)
        try:
            response = await client.init_error(body)
            if response.status_code != 202:
                log.warning("the Runtime API refused the init error", status=response.status_code)
            else:
                log.info("failed start reported to the Runtime API", error_type=body["errorType"])
        except RuntimeAPIError as exc:  # refused with a 5xx, or not reached
            log.error("cannot report the failed start to the Runtime API", error=f"{type(exc).__name__}: {exc}")
        finally:
            await client.aclose()

    # -- serving ------------------------------------------------------------------------

    async def _serve(
        self, client: RuntimeClient, settings: LambdaSettings, stopping: anyio.Event, waker: Waker | None
    ) -> None:
        environment = FunctionEnvironment.read()
        margin = settings.deadline_margin
        log = self._log()
        first = True
        while not stopping.is_set():
            with anyio.CancelScope() as poll:
                self._poll = poll
                if first and self._health is not None:
                    self._health.update(True)  # asking for the first invocation: ready
                first = False
                invocation = await client.next()
            self._poll = None
            if poll.cancelled_caught:
                return
            await self._invoke(client, invocation, environment, margin, log, waker)

    async def _invoke(
        self,
        client: RuntimeClient,
        invocation: Invocation,
        environment: FunctionEnvironment,
        margin: float,
        log: Any,
        waker: Waker | None,
    ) -> None:
        request_id = invocation.request_id
        headers = invocation.headers
        tokens = bind_contextvars(aws_request_id=request_id)
        trace_id = headers.get("lambda-runtime-trace-id")
        previous_trace = os.environ.get(TRACE_ENV)
        if trace_id:
            os.environ[TRACE_ENV] = trace_id
        else:
            os.environ.pop(TRACE_ENV, None)
        try:
            context = self._context(request_id, headers, environment, log)
            outcome = await self._outcome(invocation.body, context, margin, waker)
            if isinstance(outcome, bytes):
                response = await client.respond(request_id, outcome)
            else:
                self._errors += 1
                log.error("invocation failed", error_type=outcome["errorType"], error=outcome["errorMessage"])
                response = await client.fail(request_id, outcome)
            self._invocations += 1
            if response.status_code != 202:
                log.error(
                    "the Runtime API refused the invocation's answer",
                    status=response.status_code,
                    body=response.text[:200],
                )
        finally:
            if previous_trace is None:
                os.environ.pop(TRACE_ENV, None)
            else:
                os.environ[TRACE_ENV] = previous_trace
            reset_contextvars(**tokens)

    def _context(self, request_id: str, headers: Any, environment: FunctionEnvironment, log: Any) -> LambdaContext:
        deadline = headers.get("lambda-runtime-deadline-ms")
        try:
            deadline_ms = int(deadline)
        except (TypeError, ValueError):  # no deadline from the API: the platform's longest (15 minutes) from now
            log.warning("invocation without a valid Lambda-Runtime-Deadline-Ms", header=deadline)
            deadline_ms = int(time.time() * 1000) + 900_000
        client_context = headers.get("lambda-runtime-client-context")
        identity = headers.get("lambda-runtime-cognito-identity")
        context = LambdaContext(
            aws_request_id=request_id,
            deadline_ms=deadline_ms,
            invoked_function_arn=headers.get("lambda-runtime-invoked-function-arn"),
            trace_id=headers.get("lambda-runtime-trace-id"),
            client_context=parse_json_header(client_context),
            identity=parse_json_header(identity),
            environment=environment,
        )
        for header, raw, parsed in (
            ("Lambda-Runtime-Client-Context", client_context, context.client_context),
            ("Lambda-Runtime-Cognito-Identity", identity, context.identity),
        ):
            if raw and parsed is None:
                log.warning("invocation header is not JSON; the context has None", header=header)
        return context

    async def _outcome(
        self, body: bytes, context: LambdaContext, margin: float, waker: Waker | None
    ) -> bytes | ErrorBody:
        """The JSON result to post, or the error body."""
        try:
            event = json.loads(body)  # an empty body is not JSON either (as AWS's own runtime says)
        except ValueError as exc:
            return error_body("Runtime.UnmarshalError", f"the invocation's event is not JSON: {exc}", exc)
        seconds = context.deadline_ms / 1000 - time.time() - margin
        try:
            with anyio.move_on_after(seconds) as scope:
                result = await self._call(event, context, waker)
            if scope.cancelled_caught:
                raise _Timeout
        except _Timeout:
            self._timeouts += 1
            how = "abandoned on its thread" if waker is not None else "cancelled"
            return error_body(
                "TimeoutError",
                f"{self._name}: handle() still running {margin:g}s before the invocation's deadline "
                f"(LAMBDA_DEADLINE_MARGIN); {how}",
            )
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # the handler's failure is the invocation's
            return error_body(type(exc).__name__, str(exc) or type(exc).__name__, exc)
        try:
            return json.dumps(result).encode()
        except (TypeError, ValueError) as exc:
            return error_body(
                "Runtime.MarshalError",
                f"{self._name}: handle() returned a value JSON cannot encode ({type(result).__name__}): {exc}",
            )

    async def _call(self, event: Any, context: LambdaContext, waker: Waker | None) -> Any:
        if waker is None:
            return await self._handler(event, context)  # type: ignore[misc]  # async: checked by is_async
        lane = self._lane
        if lane is None:
            lane = self._lane = Lane(waker, f"nacelle lambda {self._name}")
        try:
            result = await lane.run(partial(self._handler, event, context))
        except anyio.get_cancelled_exc_class():
            lane.close()  # the thread is busy with the abandoned call: the next one gets a new thread
            self._lane = None
            raise
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("a plain def handle() returned an awaitable; declare it async def")
        return result

    # -- helpers ------------------------------------------------------------------------

    def _settings(self, *, fallback: bool = False) -> LambdaSettings:
        """The injected settings; standalone, loaded from the environment (or the defaults when ``fallback``)."""
        settings = vars(self).get("settings")
        if settings is not None:
            return settings  # type: ignore[no-any-return]
        try:
            return Config().load(LambdaSettings)
        except ConfigError:
            if not fallback:
                raise
            return LambdaSettings.model_construct()

    def _log(self) -> Any:
        return vars(self).get("logger") or structlog.get_logger().bind(component=self._name)
