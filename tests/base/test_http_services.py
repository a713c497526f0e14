"""Handlers of an ASGI app reach the app's services: the lifespan state, and FastAPI's Depends(service(...))."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from _support import serving
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nacelle_py import Initializer, Inject, RegistrationError, ServiceContainer
from nacelle_py.base import HTTPServer, service, services_of
from nacelle_py.testing import test_app

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("port0")]


@pytest.fixture
def port0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PORT", "0")
    monkeypatch.setenv("HTTP_DRAIN_DELAY", "0")


class Counter:
    def __init__(self) -> None:
        self.hits = 0


class Sets(Initializer):
    provides = ("counter",)
    services: ServiceContainer = Inject("services")

    def init(self) -> None:
        self.services.set("counter", Counter())


def fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.get("/hit")
    async def hit(counter: Counter = Depends(service("counter"))) -> dict[str, int]:
        counter.hits += 1
        return {"hits": counter.hits}

    @api.get("/name")
    def name(app_name: str = Depends(service("app_name"))) -> dict[str, str]:  # a plain def handler too
        return {"app": app_name}

    @api.get("/missing")
    async def missing(nope: Any = Depends(service("nope"))) -> dict[str, str]:
        return {"never": "reached"}

    return api


async def test_fastapi_handlers_get_services_through_depends() -> None:
    app = test_app("t")
    app.register(Sets(), name="sets")
    server = app.register(HTTPServer(fastapi_app()), name="web", priority=1)
    async with serving(app):
        counter = app.services.get("counter")
        async with httpx.AsyncClient(base_url=str(server.url)) as client:
            assert (await client.get("/hit")).json() == {"hits": 1}
            assert (await client.get("/hit")).json() == {"hits": 2}
            assert counter.hits == 2  # the very object the initializer set
            assert (await client.get("/name")).json() == {"app": "t"}
            assert (await client.get("/missing")).status_code == 500  # the ServiceError is the server's
    assert app.errors == ()


async def test_starlette_request_state_has_the_container() -> None:
    async def handler(request: Request) -> JSONResponse:
        services = request.state.services
        return JSONResponse({"same": services is services_of(request), "keys": sorted(services.keys())})

    app = test_app("t")
    server = app.register(HTTPServer(Starlette(routes=[Route("/", handler)])), name="web")
    async with serving(app):
        async with httpx.AsyncClient() as client:
            got = (await client.get(f"{server.url}/")).json()
    assert got["same"] is True and {"services", "config", "health"} <= set(got["keys"])


async def test_a_plain_asgi_app_finds_the_container_in_its_scope() -> None:
    seen: list[Any] = []

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan: the server's state reaches the requests all the same
        seen.append(services_of(scope))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = test_app("t")
    server = app.register(HTTPServer(asgi), name="web")
    async with serving(app):
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.url}/")).status_code == 204
    assert seen == [app.services]


def test_outside_an_app_the_lookup_says_what_to_do() -> None:
    with pytest.raises(LookupError, match="serve the ASGI app with nacelle_py's HTTPServer"):
        services_of({"type": "http", "state": {}})
    with pytest.raises(RegistrationError, match="a non-empty service key is required"):
        service("")
