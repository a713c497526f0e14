"""``module:attribute``: the app a command runs, checks or lists the settings of."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback

from .._app import App
from .._errors import RegistrationError

__all__ = ["TargetError", "load_app"]


class TargetError(Exception):
    """The target cannot be loaded. ``status`` is 2 for a wrong argument, 1 for the user's code failing."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _import(module: str, spec: str) -> object:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(f"{exc.name}.")):
            raise TargetError(
                f"{spec}: no module named {exc.name!r} (run from the folder that holds it, or install it)", 2
            ) from None
        raise TargetError(f"{spec}: importing {module!r} failed:\n{traceback.format_exc()}", 1) from None
    except RegistrationError as exc:
        raise TargetError(f"{spec}: {exc}", 1) from None
    except SystemExit as exc:  # a module that boots on import (a __main__, say)
        raise TargetError(
            f"{spec}: importing {module!r} exited ({exc.code}); name a module that builds the app", 2
        ) from None
    except Exception:
        raise TargetError(f"{spec}: importing {module!r} failed:\n{traceback.format_exc()}", 1) from None


def load_app(spec: str) -> App:
    """The ``App`` that ``spec`` (``package.module:attribute``) names, or built by calling it with no arguments."""
    module, sep, attribute = spec.partition(":")
    if not sep or not module or not attribute:
        raise TargetError(
            f"{spec!r}: give the app as module:attribute, e.g. example_app:build_app "
            "(an App, or a function without arguments that returns one)",
            2,
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the current folder's modules are found
    target: object = _import(module, spec)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise TargetError(f"{spec}: {module!r} has no attribute {attribute!r}", 2) from None
    if isinstance(target, App):
        return target
    if not callable(target):
        raise TargetError(f"{spec}: {attribute} is {type(target).__name__}, not an App or a function returning one", 2)
    try:
        inspect.signature(target).bind()
    except TypeError:
        raise TargetError(
            f"{spec}: {attribute} takes arguments; name an App or a function without arguments", 2
        ) from None
    except ValueError:
        pass  # no signature to read (a builtin): calling it tells
    try:
        built = target()
    except RegistrationError as exc:  # a bad registration: its message says what to fix
        raise TargetError(f"{spec}: {exc}", 1) from None
    except Exception:
        raise TargetError(f"{spec}: {attribute}() failed:\n{traceback.format_exc()}", 1) from None
    if not isinstance(built, App):
        raise TargetError(f"{spec}: {attribute}() returned {type(built).__name__}, not an App", 2)
    return built
