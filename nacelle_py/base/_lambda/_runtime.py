"""The Lambda Runtime API (version 2018-06-01) over httpx: the four calls a custom runtime makes.

``GET /runtime/invocation/next`` is a long poll: the platform answers when
an invocation arrives (or freezes the whole environment meanwhile), so it
has no read timeout; every other part of every call is bounded by the
listener's ``LAMBDA_API_TIMEOUT``. One ``httpx.AsyncClient`` (anyio-native:
asyncio and trio) keeps one connection alive for the life of the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ..._errors import ConfigError, NacelleError, SettingError
from ..._extras import require

if TYPE_CHECKING:
    import httpx

__all__ = ["API_VERSION", "RUNTIME_API_ENV", "Invocation", "RuntimeAPIError", "RuntimeClient", "runtime_address"]

API_VERSION = "2018-06-01"
RUNTIME_API_ENV = "AWS_LAMBDA_RUNTIME_API"
"""The platform's variable: ``host:port`` of the Runtime API (read without the app's prefix)."""

_JSON = "application/json"


class RuntimeAPIError(NacelleError):
    """The Runtime API answered a call with a status the protocol does not expect, or could not be reached.

    Either way the runtime must exit: the message names the call, and for an
    unreachable API its address and ``AWS_LAMBDA_RUNTIME_API``.
    """


class Invocation(NamedTuple):
    """One event from ``invocation/next``: its request id, raw JSON body and headers."""

    request_id: str
    body: bytes
    headers: Mapping[str, str]


def runtime_address(environ: Mapping[str, str], owner: str) -> str:
    """``AWS_LAMBDA_RUNTIME_API`` from ``environ``, checked; ``ConfigError`` naming it when unset or malformed."""
    value = environ.get(RUNTIME_API_ENV, "").strip()
    if not value:
        problem = (
            "not set: the Lambda platform sets it to the Runtime API's host:port; outside Lambda, run the app "
            "under the Runtime Interface Emulator (see docs/lambda.md) or do not register a LambdaListener"
        )
    elif not _host_port(value):
        problem = f"must be host:port with a port from 1 to 65535 (e.g. 127.0.0.1:9001), got {value!r}"
    else:
        return value
    raise ConfigError([SettingError(RUNTIME_API_ENV, problem, owner, "runtime_api")])


def _host_port(value: str) -> bool:
    """Whether ``value`` is ``host:port`` (an IPv6 host in brackets), nothing more."""
    host, colon, port = value.rpartition(":")
    if not colon or not host or any(c.isspace() or c in "/?#@" for c in value):
        return False
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return False
    return port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


class RuntimeClient:
    """The Runtime API at ``address`` (``host:port``): ``next``, ``respond``, ``fail``, ``init_error``.

    Needs ``nacelle-py[lambda]`` (httpx). ``timeout`` bounds every call but
    the long poll's wait for an event. Close it with ``aclose()``.
    """

    def __init__(self, address: str, timeout: float) -> None:
        self._httpx: Any = require("httpx", "lambda", "LambdaListener")
        hx = self._httpx
        self._address = address
        base = f"http://{address}/{API_VERSION}/runtime"
        self._next_url = f"{base}/invocation/next"
        self._invocation = f"{base}/invocation/"
        self._init_error_url = f"{base}/init/error"
        self._poll_timeout = hx.Timeout(timeout, read=None)  # the long poll waits as long as the platform wants
        # What httpx raises when the API cannot be reached or the exchange breaks: a RuntimeAPIError here.
        self._transport_errors: tuple[type[Exception], ...] = (hx.HTTPError, hx.InvalidURL, OSError)
        self._client: httpx.AsyncClient = hx.AsyncClient(
            timeout=timeout, limits=hx.Limits(max_connections=2, max_keepalive_connections=2), trust_env=False
        )

    async def next(self) -> Invocation:
        """Wait for the next invocation; ``RuntimeAPIError`` if the API answers anything but 200 with a request id."""
        try:
            response = await self._client.get(self._next_url, timeout=self._poll_timeout)
        except self._transport_errors as exc:
            raise self._unreachable("GET invocation/next", exc) from exc
        request_id = response.headers.get("lambda-runtime-aws-request-id")
        if response.status_code != 200 or not request_id:
            raise RuntimeAPIError(
                f"the Runtime API answered GET invocation/next with {response.status_code}"
                + ("" if request_id else " and no Lambda-Runtime-Aws-Request-Id")
                + f": {_excerpt(response.content)}"
            )
        return Invocation(request_id, response.content, response.headers)

    async def respond(self, request_id: str, body: bytes) -> httpx.Response:
        """Post the invocation's result (JSON bytes); returns the API's answer (202 when accepted)."""
        return await self._post(f"{self._invocation}{request_id}/response", body, None)

    async def fail(self, request_id: str, error: Mapping[str, Any]) -> httpx.Response:
        """Post the invocation's error (``errorMessage``, ``errorType``, ``stackTrace``); returns the answer."""
        return await self._post(f"{self._invocation}{request_id}/error", _dump(error), str(error["errorType"]))

    async def init_error(self, error: Mapping[str, Any]) -> httpx.Response:
        """Post a start-up failure to ``init/error``; returns the answer (202 when accepted)."""
        return await self._post(self._init_error_url, _dump(error), str(error["errorType"]))

    async def _post(self, url: str, body: bytes, error_type: str | None) -> httpx.Response:
        headers = {"Content-Type": _JSON}
        if error_type is not None:
            headers["Lambda-Runtime-Function-Error-Type"] = error_type
        call = f"POST {url.rsplit('/runtime/', 1)[-1]}"
        try:
            response: httpx.Response = await self._client.post(url, content=body, headers=headers)
        except self._transport_errors as exc:
            raise self._unreachable(call, exc) from exc
        if response.status_code >= 500:  # "container error": the protocol says the runtime must exit
            raise RuntimeAPIError(
                f"the Runtime API answered {call} with {response.status_code}: {_excerpt(response.content)}"
            )
        return response

    def _unreachable(self, call: str, error: Exception) -> RuntimeAPIError:
        return RuntimeAPIError(
            f"{call}: the Runtime API at {self._address} ({RUNTIME_API_ENV}) could not be reached: "
            f"{type(error).__name__}: {error}"
        )

    async def aclose(self) -> None:
        """Close the connection."""
        await self._client.aclose()


def _dump(error: Mapping[str, Any]) -> bytes:
    return json.dumps(error).encode()


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace").strip()
    return (text[:limit] + "...") if len(text) > limit else (text or "(empty body)")
