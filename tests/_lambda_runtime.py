"""A Lambda Runtime API server for tests, written from the protocol's documentation.

The real platform cannot run here, so this plays its part: a plain
``http.server.ThreadingHTTPServer`` on a free 127.0.0.1 port, in a thread of
the test's process, that an app subprocess reaches through
``AWS_LAMBDA_RUNTIME_API=<RuntimeAPI.address>``. It knows nothing of the code
under test: only the documented endpoints of version 2018-06-01.

- ``GET /2018-06-01/runtime/invocation/next`` is a long poll: it blocks until
  an invocation is queued (``invoke()``), then answers 200 with the event as
  the body and the ``Lambda-Runtime-*`` headers. The wait is bounded
  (``poll_limit``) and ``close()`` ends it at once, so nothing hangs at teardown.
- ``POST .../invocation/{id}/response`` and ``POST .../invocation/{id}/error``
  answer 202 and are recorded, in arrival order, as ``Outcome`` values. A
  second answer to the same invocation, or one to an id never handed out,
  answers 400 and is recorded in ``violations``.
- ``POST /2018-06-01/runtime/init/error`` answers 202 and is recorded in
  ``init_errors``.

Every wait the tests make (``outcome()``, ``wait_polling()``,
``wait_init_error()``) has a timeout and fails with what the server saw.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol, TypeVar

API = "/2018-06-01/runtime"
NEXT = f"{API}/invocation/next"
INIT_ERROR = f"{API}/init/error"
DEFAULT_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:nacelle-test"


@dataclass
class Invocation:
    """One queued invocation: what ``next`` hands out, headers included."""

    request_id: str
    body: bytes
    timeout: float  # seconds from the moment ``next`` hands it out to its deadline
    function_arn: str = DEFAULT_ARN
    trace_id: str | None = None
    client_context: str | None = None
    identity: str | None = None
    deadline_ms: int | None = None  # set when handed out
    handed_out_at: float | None = None  # time.time() when handed out


@dataclass
class Outcome:
    """A response or an error the runtime posted for one invocation."""

    kind: str  # "response" or "error" ("refused response" when ``refuse_answers`` refused it)
    request_id: str
    body: bytes
    headers: dict[str, str]
    received_at: float  # time.time()
    deadline_ms: int | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class InitError:
    """A body posted to ``/runtime/init/error``, with its headers."""

    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _State:
    cond: threading.Condition = field(default_factory=threading.Condition)
    queue: deque[Invocation] = field(default_factory=deque)
    handed_out: dict[str, Invocation] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    init_errors: list[InitError] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    refuse: list[int] = field(default_factory=list)  # statuses for the next answers posted, instead of 202
    polling: int = 0  # ``next`` requests waiting right now
    nexts: int = 0  # ``next`` requests received in all
    closed: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the platform's endpoint does
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body are two writes: with Nagle's algorithm and the client's delayed
        # ACK the second waited ~40 ms (awslambdaric ran at 11 invocations/s).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        state = self.server.state
        with state.cond:
            state.requests.append(("GET", self.path))
        if self.path != NEXT:
            self._reply(404, b'{"errorType":"NotFound"}')
            return
        invocation = self._wait_for_invocation()
        if invocation is None:
            # Closing, or the poll limit passed: end the connection instead of answering,
            # which a runtime must treat as the platform going away.
            self.close_connection = True
            return
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
        }
        if invocation.trace_id is not None:
            headers["Lambda-Runtime-Trace-Id"] = invocation.trace_id
        if invocation.client_context is not None:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        if invocation.identity is not None:
            headers["Lambda-Runtime-Cognito-Identity"] = invocation.identity
        self._reply(200, invocation.body, headers)

    def _wait_for_invocation(self) -> Invocation | None:
        state = self.server.state
        limit = time.monotonic() + self.server.poll_limit
        with state.cond:
            state.nexts += 1
            state.polling += 1
            state.cond.notify_all()
            try:
                while not state.queue and not state.closed:
                    left = limit - time.monotonic()
                    if left <= 0:
                        return None
                    state.cond.wait(min(left, 0.5))
                if state.closed:
                    return None
                invocation = state.queue.popleft()
                now = time.time()
                invocation.handed_out_at = now
                invocation.deadline_ms = int((now + invocation.timeout) * 1000)
                state.handed_out[invocation.request_id] = invocation
                return invocation
            finally:
                state.polling -= 1
                state.cond.notify_all()

    def do_POST(self) -> None:
        state = self.server.state
        body = self._body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        with state.cond:
            state.requests.append(("POST", self.path))
            if self.path == INIT_ERROR:
                state.init_errors.append(InitError(body, headers))
                state.cond.notify_all()
                status, reply = 202, b'{"status":"OK"}'
            else:
                status, reply = self._record_outcome(state, body, headers)
        self._reply(status, reply)

    def _record_outcome(self, state: _State, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        prefix = f"{API}/invocation/"
        rest = self.path[len(prefix) :] if self.path.startswith(prefix) else ""
        request_id, _, kind = rest.rpartition("/")
        if kind not in ("response", "error") or not request_id:
            state.violations.append(f"POST to an unknown path {self.path}")
            return 404, b'{"errorType":"NotFound"}'
        invocation = state.handed_out.get(request_id)
        if invocation is None:
            state.violations.append(f"{kind} for an invocation never handed out: {request_id}")
            return 400, b'{"errorType":"InvalidRequestID"}'
        if state.refuse:
            status = state.refuse.pop(0)
            state.outcomes.append(
                Outcome(f"refused {kind}", request_id, body, headers, time.time(), invocation.deadline_ms)
            )
            state.cond.notify_all()
            return status, b'{"errorType":"Runtime.Refused","errorMessage":"refused by the test"}'
        if request_id in state.answered:
            state.violations.append(f"second answer ({kind}) for {request_id}")
            return 400, b'{"errorType":"InvalidStateTransition"}'
        state.answered.add(request_id)
        state.outcomes.append(Outcome(kind, request_id, body, headers, time.time(), invocation.deadline_ms))
        state.cond.notify_all()
        return 202, b'{"status":"OK"}'


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a connection thread blocked in a poll never holds up close()
    allow_reuse_address = True

    def __init__(self, poll_limit: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = _State()
        self.poll_limit = poll_limit

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A runtime killed mid-poll resets its connection: that is its exit, not the server's error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def runtime_env(base: dict[str, str], address: str | None, *drop: str, **extra: str) -> dict[str, str]:
    """``base`` without the machine's own Lambda variables (nor those starting with ``drop``),
    pointed at the Runtime API at ``address``, with ``extra`` on top: a runtime subprocess's environment."""
    prefixes = ("AWS_", "LAMBDA_", "_X_AMZN", "_HANDLER", *drop)
    env = {k: v for k, v in base.items() if not k.startswith(prefixes)}
    if address is not None:
        env["AWS_LAMBDA_RUNTIME_API"] = address
    env.update(extra)
    return env


class _Closable(Protocol):
    def dump(self) -> str: ...
    def close(self) -> object: ...


_Runtime = TypeVar("_Runtime", bound=_Closable)


class RuntimeAPI:
    """The fake platform: queue invocations, read back what the runtime answered.

    A context manager: ``with RuntimeAPI() as api:`` serves on a free port
    (``api.address`` is the value for ``AWS_LAMBDA_RUNTIME_API``) and shuts
    down on exit, ending any poll in progress.
    """

    def __init__(self, poll_limit: float = 60.0) -> None:
        self._server = _Server(poll_limit)
        self._state = self._server.state
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._ids = itertools.count(1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_port}"

    # -- driving -------------------------------------------------------------------

    def invoke(
        self,
        event: Any,
        *,
        timeout: float = 30.0,
        request_id: str | None = None,
        function_arn: str = DEFAULT_ARN,
        trace_id: str | None = None,
        client_context: Any = None,
        identity: Any = None,
        raw: bytes | None = None,
    ) -> str:
        """Queue one invocation (``event`` as JSON, or ``raw`` bytes); returns its request id.

        ``timeout`` is the seconds between ``next`` handing it out and its
        deadline (``Lambda-Runtime-Deadline-Ms``); ``client_context`` and
        ``identity`` are sent as JSON in their headers when given.
        """
        rid = request_id or f"{next(self._ids):04d}-{uuid.uuid4()}"
        invocation = Invocation(
            request_id=rid,
            body=raw if raw is not None else json.dumps(event).encode(),
            timeout=timeout,
            function_arn=function_arn,
            trace_id=trace_id,
            client_context=None if client_context is None else json.dumps(client_context),
            identity=None if identity is None else json.dumps(identity),
        )
        with self._state.cond:
            self._state.queue.append(invocation)
            self._state.cond.notify_all()
        return rid

    def invoke_many(self, body: bytes, count: int, timeout: float = 300.0) -> None:
        """Queue ``count`` invocations with the same body at once (the benchmark's load)."""
        with self._state.cond:
            for _ in range(count):
                self._state.queue.append(Invocation(f"{next(self._ids):08d}", body, timeout))
            self._state.cond.notify_all()

    def refuse_answers(self, *statuses: int) -> None:
        """Answer the next posted responses or errors with these statuses (a 500 is the platform's "container error")."""
        with self._state.cond:
            self._state.refuse.extend(statuses)

    # -- reading -------------------------------------------------------------------

    @property
    def outcomes(self) -> list[Outcome]:
        with self._state.cond:
            return list(self._state.outcomes)

    @property
    def init_errors(self) -> list[InitError]:
        with self._state.cond:
            return list(self._state.init_errors)

    @property
    def violations(self) -> list[str]:
        with self._state.cond:
            return list(self._state.violations)

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._state.cond:
            return list(self._state.requests)

    @property
    def nexts(self) -> int:
        with self._state.cond:
            return self._state.nexts

    def handed_out(self, request_id: str) -> Invocation | None:
        with self._state.cond:
            return self._state.handed_out.get(request_id)

    def describe(self) -> str:
        with self._state.cond:
            return (
                f"requests={self._state.requests[-6:]} outcomes={len(self._state.outcomes)}"
                f" last={[(o.kind, o.request_id) for o in self._state.outcomes[-6:]]}"
                f" init_errors={len(self._state.init_errors)} violations={self._state.violations}"
                f" queued={len(self._state.queue)} polling={self._state.polling}"
            )

    def _wait(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._state.cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"Runtime API: no {what} within {timeout}s; {self.describe()}")
                self._state.cond.wait(min(left, 0.1))

    def outcome(self, request_id: str, timeout: float = 10.0) -> Outcome:
        """The answer to ``request_id``, waiting at most ``timeout`` seconds."""
        found: list[Outcome] = []

        def ready() -> bool:
            found[:] = [o for o in self._state.outcomes if o.request_id == request_id]
            return bool(found)

        self._wait(ready, timeout, f"answer to {request_id}")
        return found[0]

    def wait_outcomes(self, count: int, timeout: float = 10.0) -> list[Outcome]:
        """The first ``count`` answers in arrival order, waiting at most ``timeout`` seconds."""
        self._wait(lambda: len(self._state.outcomes) >= count, timeout, f"{count} answers")
        return self.outcomes[:count]

    def wait_polling(self, timeout: float = 10.0, nexts: int = 1) -> None:
        """Wait until ``nexts`` polls have arrived and one is waiting now (the runtime is idle)."""
        self._wait(
            lambda: self._state.nexts >= nexts and self._state.polling > 0 and not self._state.queue,
            timeout,
            f"waiting poll (after {nexts} polls)",
        )

    def wait_runtime(self, runtime: _Runtime, timeout: float) -> _Runtime:
        """``runtime`` (an app subprocess) once it waits in its first poll; if it never does, its
        output is printed and it is closed before the error goes on."""
        try:
            self.wait_polling(timeout)
        except BaseException:
            print(runtime.dump())
            runtime.close()
            raise
        return runtime

    def wait_handed_out(self, request_id: str, timeout: float = 10.0) -> Invocation:
        """The invocation ``request_id`` once ``next`` has handed it out, waiting at most ``timeout`` seconds."""
        self._wait(lambda: request_id in self._state.handed_out, timeout, f"hand-out of {request_id}")
        invocation = self.handed_out(request_id)
        assert invocation is not None
        return invocation

    def wait_init_error(self, timeout: float = 10.0) -> InitError:
        """The first init error posted, waiting at most ``timeout`` seconds."""
        self._wait(lambda: bool(self._state.init_errors), timeout, "init error")
        return self.init_errors[0]

    # -- lifetime ------------------------------------------------------------------

    def start(self) -> RuntimeAPI:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._state.cond:
            self._state.closed = True
            self._state.cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RuntimeAPI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
