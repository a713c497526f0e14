"""``service(key)``: one of the app's services as a FastAPI/Starlette dependency.

``HTTPServer`` puts the app's service container into the ASGI lifespan state,
which the server copies into every request (``request.state.services``).
``Depends(service("db"))`` hands a handler the service under ``"db"``
without subclassing anything.
"""

from collections.abc import Callable
from typing import Any

from .._errors import RegistrationError

__all__ = ["service", "services_of"]


def services_of(connection: Any) -> Any:
    """The app's service container from a Starlette ``Request``/``WebSocket`` (or an ASGI scope)."""
    scope = connection if isinstance(connection, dict) else getattr(connection, "scope", {})
    state = scope.get("state") or {}
    found = state.get("services") if isinstance(state, dict) else None
    if found is None:
        raise LookupError(
            "no service container in the ASGI state: serve the ASGI app with nacelle_py's HTTPServer "
            "registered in an App (its lifespan state carries the app's services)"
        )
    return found


def service(key: str) -> Callable[..., Any]:
    """A dependency that returns the service under ``key``: ``db = Depends(service("db"))``.

    For FastAPI's handlers (the dependency takes Starlette's ``HTTPConnection``,
    which FastAPI passes to it). ``LookupError`` if the app has no
    such service, or if the app is not served by an ``HTTPServer`` of an App.
    """
    if not isinstance(key, str) or not key:
        raise RegistrationError(f"service(key): a non-empty service key is required, got {key!r}")
    try:
        from starlette.requests import HTTPConnection
    except ImportError:
        raise RegistrationError(
            "service(key) is a Starlette/FastAPI dependency: install starlette (or fastapi) to use it"
        ) from None

    def dependency(connection: HTTPConnection) -> Any:
        return services_of(connection).get(key)

    dependency.__annotations__ = {"connection": HTTPConnection, "return": Any}  # read by FastAPI at run time
    dependency.__name__ = f"service_{key}"
    dependency.__qualname__ = f"service({key!r})"
    return dependency
