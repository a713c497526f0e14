"""Optional extras: import a server-side dependency, or say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._errors import RegistrationError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(RegistrationError, ImportError):
    """A feature was used without the optional dependency it needs; the message names the extra."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise ``MissingExtraError`` naming ``nacelle-py[extra]``.

    Server-side dependencies (the ASGI server, grpcio, prometheus-client) are
    extras, so an app that serves nothing does not install them.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs the optional dependency {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'nacelle-py[{extra}]' (or 'nacelle-py[all]')"
        ) from exc
