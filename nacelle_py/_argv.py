"""``boot()``'s command line: ``--help``, ``--backend``, and a usage error for anything else.

Settings come from the environment, so the command line has little to say;
what it does not know is a mistake to report (exit status 2), not to ignore:
``--bogus`` must not boot the whole app. An app that parses its own arguments
says so with ``App(..., parse_args=False)`` and ``boot()`` reads none.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "BACKENDS",
    "USAGE_STATUS",
    "Backend",
    "BootArgs",
    "UsageError",
    "parse_boot_args",
    "read_command_line",
    "usage",
]

Backend = Literal["asyncio", "trio"]
BACKENDS: tuple[str, ...] = get_args(Backend)
USAGE_STATUS = 2
"""The exit status of a command-line mistake (as argparse and most Unix tools)."""


class UsageError(ValueError):
    """A command-line argument ``boot()`` does not know, or a bad value for one it does."""


@dataclass(frozen=True)
class BootArgs:
    """What the command line asked ``boot()`` for."""

    help: bool = False
    backend: Backend | None = None


def parse_boot_args(args: Sequence[str]) -> BootArgs:
    """Parse ``args`` (``sys.argv[1:]``); ``UsageError`` names the first argument that is not ours."""
    wants_help = False
    backend: str | None = None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if not isinstance(arg, str):
            raise UsageError(f"arguments are strings, got {arg!r}")
        if arg in ("-h", "--help"):
            wants_help = True
        elif arg == "--backend" or arg.startswith("--backend="):
            if arg == "--backend":
                if not rest:
                    raise UsageError("--backend needs a value: asyncio or trio")
                value = rest.pop(0)
            else:
                value = arg.partition("=")[2]
            if value not in BACKENDS:
                raise UsageError(f"--backend: asyncio or trio, got {value!r}")
            backend = value
        else:
            what = "option" if arg.startswith("-") else "argument"
            raise UsageError(f"unknown {what} {arg!r}: settings come from the environment (--help lists them)")
    return BootArgs(help=wants_help, backend=backend)  # type: ignore[arg-type]


def usage(prog: str) -> str:
    """The one-line usage of ``boot()``'s command line."""
    return f"usage: {prog} [-h | --help] [--backend asyncio|trio]"


def read_command_line(prog: str, args: Sequence[str], describe: Callable[[], str]) -> BootArgs | int:
    """``boot()``'s reading of ``args``: what it asks for, or the status to return at once.

    ``--help`` writes ``describe()`` to stdout (status 0); a usage error goes
    to stderr with the usage line (status 2). Nothing is started either way.
    """
    try:
        asked = parse_boot_args(args)
    except UsageError as exc:
        sys.stderr.write(f"{prog}: {exc}\n{usage(prog)}\n")
        sys.stderr.flush()
        return USAGE_STATUS
    if asked.help:
        sys.stdout.write(describe())
        sys.stdout.flush()
        return 0
    return asked
