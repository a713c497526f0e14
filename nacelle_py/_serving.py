"""Serving an ASGI app on one listening socket, through Hypercorn, on the current anyio backend.

Shared by ``base.HTTPServer`` and the App's ops endpoint. Hypercorn is the
embedded server because it runs on asyncio and trio alike (uvicorn runs on
asyncio only). The socket is bound here, before serving, so that a taken
port is an error of ``init`` (boot fails naming the address) instead of a
surprise once the app says it is up; Hypercorn is handed the descriptor
(``fd://``) and closes it when it stops listening.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import sniffio

SETTLE = 0.05
"""Seconds without a request starting or running after which a closed listener's connections count as settled."""

__all__ = ["ASGIServing", "BindError", "TLSError", "check_tls", "format_address", "listen"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BindError(OSError):
    """The address could not be listened on; the message names it, the settings and what to do."""


class TLSError(ValueError):
    """The certificate and key could not be loaded as a pair; the message names the settings."""


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host: str, port: int, *, settings: str, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port); ``BindError`` otherwise."""
    where = format_address(host, port)
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise BindError(f"cannot listen on {where}: the host does not resolve ({exc}); fix {settings}") from None
    sock = socket.socket(family, kind, proto)
    try:
        # Restart at once on a port whose last connections linger in TIME_WAIT; this does
        # not let two servers share the port (that would be SO_REUSEPORT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            hint = "the port is taken by another process: stop it, or choose another port"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            hint = "ports below 1024 need privileges: choose a port >= 1024"
        else:
            hint = "choose an address of this machine"
        error = BindError(f"cannot listen on {where}: {exc.strerror}; {hint} ({settings})")
        error.errno = exc.errno
        raise error from None
    return sock


def check_tls(cert_file: str, key_file: str, settings: str) -> None:
    """Load the certificate and key as the server will; ``TLSError`` naming ``settings`` if they do not pair."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(
            f"cannot load the TLS certificate {cert_file!r} with the key {key_file!r}: {exc}; "
            f"{settings} must name a PEM certificate and its own private key"
        ) from None


class ASGIServing:
    """One ASGI app served on one socket until ``shutdown()``, then drained within ``graceful_timeout``.

    Counts the HTTP and WebSocket requests the app is handling (``active``),
    has handled (``served``) and those the drain cut off (``cut_off``).
    ``on_started`` is called once the app's lifespan startup is done and the
    server accepts connections.
    """

    def __init__(
        self,
        app: ASGIApp,
        sock: socket.socket,
        *,
        graceful_timeout: float,
        logger: Any,
        cert_file: str | None = None,
        key_file: str | None = None,
        access_log: bool = False,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.state = dict(state or {})  # put into the ASGI lifespan state: each request's scope["state"] has it
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.graceful_timeout = graceful_timeout
        self.active = 0
        self.served = 0
        self.cut_off = 0
        self._sock: socket.socket | None = sock
        self._log = logger
        self._tls = (cert_file, key_file)
        self._access_log = access_log
        self._shutdown = anyio.Event()
        self._started: Callable[[], None] | None = None
        self._closing = False  # the listener is closed: answers close their HTTP/1 connections
        self._draining = False  # Hypercorn was told to stop: what it cancels from here on is cut off

    @property
    def url(self) -> str:
        """Where the server listens, as a URL."""
        scheme = "https" if self._tls[0] else "http"
        return f"{scheme}://{format_address(*self.address)}"

    def shutdown(self) -> None:
        """Stop listening (new connections are refused), answer what the open connections still send, then stop.

        From here on every HTTP/1 answer carries ``Connection: close``, so
        each open connection ends after its next request.
        """
        self._shutdown.set()

    def close(self) -> None:
        """Close the socket if it was never served (boot failed after the bind)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def serve(self, on_started: Callable[[], None] | None = None) -> None:
        """Serve until ``shutdown()`` and the drain are done; bounded by ``graceful_timeout`` after it."""
        if self._sock is None:
            raise RuntimeError("ASGIServing.serve: the socket is closed (serve() runs once)")
        from hypercorn.config import Config as HypercornConfig

        config = HypercornConfig()
        fd = self._sock.detach()  # Hypercorn owns the descriptor once it makes its socket of it, and closes it
        self._sock = None
        config.bind = [f"fd://{fd}"]
        adopted = False
        create_sockets = config.create_sockets

        def adopt() -> Any:
            nonlocal adopted
            adopted = True
            return create_sockets()

        config.create_sockets = adopt  # type: ignore[method-assign]
        config.graceful_timeout = self.graceful_timeout
        config.certfile, config.keyfile = self._tls
        config.logger_class = _logger_class(self._log, self._access_log)  # type: ignore[assignment]
        self._started = on_started
        if sniffio.current_async_library() == "trio":
            from hypercorn.trio import serve as serve_trio

            serve = serve_trio
        else:
            from hypercorn.asyncio import serve as serve_asyncio

            serve = serve_asyncio  # type: ignore[assignment]
        scope = anyio.CancelScope()

        async def trigger() -> None:
            await self._shutdown.wait()
            left = await self._settle(fd)
            config.graceful_timeout = left  # Hypercorn reads it once the trigger returns
            self._draining = True
            # Hypercorn bounds its own drain; this outer bound (plus a second for the
            # lifespan shutdown) holds even where closing a server waits for its
            # connections (asyncio on Python 3.12+), or a lifespan shutdown hangs.
            scope.deadline = anyio.current_time() + left + 1.0

        overran = False
        try:
            with scope:
                try:
                    await serve(self._wrapped, config, shutdown_trigger=trigger, mode="asgi")  # type: ignore[arg-type]
                except BaseExceptionGroup as group:  # trio's nursery wraps a failed lifespan startup
                    raise _only(group) from None
                except Exception:
                    if anyio.current_effective_deadline() == -math.inf:
                        # Cancelled once it has had a connection (mid-drain, or while serving:
                        # a failure beside it, a forced stop), Hypercorn's asyncio server trips
                        # over its own unfinished gather (InvalidStateError): the cancellation
                        # is what happened, so that is what this raises.
                        raise anyio.get_cancelled_exc_class()() from None
                    raise
            overran = scope.cancelled_caught
        except anyio.get_cancelled_exc_class():
            # Hypercorn's asyncio TaskGroup leaves the task marked as cancelled, so anyio
            # cannot tell that this cancellation is our own bound's; it is when the bound
            # has passed and nothing outside is cancelled.
            if not (scope.cancel_called and anyio.current_effective_deadline() != -math.inf):
                raise
            overran = True
        finally:
            if not adopted:
                # Hypercorn ended before it took the descriptor (its asyncio server runs the
                # lifespan startup first: a failed startup, or a cancellation meanwhile). The
                # socket is still ours: closed, or the port would stay taken (a restart could
                # not bind it again).
                os.close(fd)
        if overran:
            self._log.warning(
                "server stop overran its bound; connections or the lifespan shutdown abandoned",
                seconds=self.graceful_timeout,
            )

    async def _settle(self, fd: int) -> float:
        """Close the listener, then let the connections it accepted last send their request and get the answer.

        Hypercorn closes idle connections the moment it is told to stop, and
        a request that arrives on one just then is lost (or, on trio, its
        answer is cut short). So the listener is closed first and Hypercorn
        told only once no request has started or been running for a moment:
        each answer meanwhile closes its connection. Returns the seconds left
        of ``graceful_timeout``.
        """
        started = anyio.current_time()
        _stop_listening(fd)
        self._closing = True
        with anyio.move_on_after(self.graceful_timeout):
            served = -1
            while self.active or self.served != served:
                served = self.served
                await anyio.sleep(SETTLE)
        return max(0.0, self.graceful_timeout - (anyio.current_time() - started))

    async def _wrapped(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if self._closing and kind == "http" and scope.get("http_version") in ("1.0", "1.1"):
            send = self._closing_send(send)  # only once the listener closed: the fast path stays bare
        self.active += 1
        try:
            await self.app(scope, receive, send)
        except anyio.get_cancelled_exc_class():
            if self._draining:
                self.cut_off += 1
            raise
        finally:
            self.active -= 1
            self.served += 1

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.state and isinstance(scope.get("state"), dict):
            # The server copies the lifespan state into every request's scope: Starlette's
            # request.state.services, whether or not the app takes part in the lifespan.
            scope["state"].update(self.state)
        received: list[str] = []
        sent: list[str] = []

        async def watch_receive() -> Any:
            message = await receive()
            received.append(message.get("type"))
            return message

        async def watch_send(message: Any) -> None:
            sent.append(message.get("type"))
            await send(message)
            if message.get("type") == "lifespan.startup.complete":
                self._announce()

        try:
            await self.app(scope, watch_receive, watch_send)
        except Exception as exc:
            if "lifespan.startup" not in received:
                # No lifespan support: it raised at once, and Hypercorn goes on without it.
                self._announce()
                raise
            if "lifespan.startup.complete" not in sent and "lifespan.startup.failed" not in sent:
                # The startup itself raised: a failed startup, not a missing feature.
                await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
            raise
        if "lifespan.startup.complete" in sent or "lifespan.startup.failed" in sent:
            return
        # The app returned without taking part in the lifespan (``if scope["type"] != "http":
        # return`` is common). Hypercorn's trio server cannot go on then, so answer for it.
        if "lifespan.startup" not in received:
            await receive()
        await send({"type": "lifespan.startup.complete"})
        self._announce()
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})

    def _closing_send(self, send: Send) -> Send:
        """``send`` that adds ``Connection: close`` to the answer of a request that came in after the listener closed.

        A request already in flight then keeps its connection; the client's
        next request on it comes within the settling time and is answered so.
        """

        async def closing_send(message: Any) -> None:
            if message.get("type") == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return closing_send

    def _announce(self) -> None:
        started, self._started = self._started, None
        if started is not None:
            started()


def _stop_listening(fd: int) -> None:
    """Close the listening socket under Hypercorn's feet, so that new connections are refused at once.

    The descriptor is pointed at a stand-in: the listener's last reference
    goes (the kernel refuses connections from here on), while the number
    stays valid for the server, whose accept loop waits on it until it is
    stopped and closes it. The stand-in is a non-blocking listening Unix
    socket on an unnamed abstract address: nothing connects to it, and an
    accept that was already under way gets ``EAGAIN``, which both loops
    take in their stride.
    """
    try:
        stand_in = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stand_in.bind("")  # Linux: an abstract address of the kernel's choosing
        stand_in.listen(1)
    except OSError:  # no abstract namespace here: a socket that is never readable
        stand_in = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stand_in.setblocking(False)
    try:
        os.dup2(stand_in.fileno(), fd)
    finally:
        stand_in.close()


def _only(group: BaseExceptionGroup) -> BaseException:
    """The one error inside nested single-error groups, or the group itself."""
    while len(group.exceptions) == 1 and isinstance(group.exceptions[0], BaseExceptionGroup):
        group = group.exceptions[0]
    return group.exceptions[0] if len(group.exceptions) == 1 else group


def _logger_class(log: Any, access: bool) -> type:
    """A Hypercorn logger class that writes through our structlog logger (one class per server)."""

    def emit(level: str) -> Callable[..., Awaitable[None]]:
        async def write(self: Any, message: str, *args: Any, **kwargs: Any) -> None:
            getattr(log, level)(message % args if args else message, exc_info=kwargs.get("exc_info"))

        return write

    async def quiet(self: Any, message: str, *args: Any, **kwargs: Any) -> None:
        """Hypercorn's own "Running on ..." lines: ours say where we listen."""

    class _Log:
        def __init__(self, config: Any) -> None:
            pass

        async def access(self, request: Any, response: Any, request_time: float) -> None:
            if access:
                log.info(
                    "http request",
                    method=request.get("method"),
                    path=request.get("path"),
                    status=None if response is None else response.get("status"),
                    ms=round(request_time * 1000, 3),
                )

        critical = emit("critical")
        error = emit("error")
        warning = emit("warning")
        info = debug = quiet

        async def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
            log.error(message % args if args else message, exc_info=True)

        async def log(self, level: int, message: str, *args: Any, **kwargs: Any) -> None:
            if level >= 30:
                log.warning(message % args if args else message)

    return _Log
