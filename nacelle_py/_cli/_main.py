"""The ``nacelle-py`` command: ``run``, ``check`` and ``config`` of an app named as ``module:attribute``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .._argv import BACKENDS
from ._check import CheckReport, check_app
from ._settings_table import SettingRow, settings_rows
from ._target import TargetError, load_app

__all__ = ["main"]

TARGET_HELP = "the app, as module:attribute: an App, or a function without arguments returning one"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run an app built on nacelle_py, check it without starting it, or list its settings.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,check,config}")
    run = commands.add_parser(
        "run",
        help="boot the app (like app.boot()); the exit status is the app's",
        description="Boot the app like app.boot(): until SIGINT/SIGTERM, or until it ends; "
        "exit status 0 clean, 1 on any failure. Arguments after the target go to the app.",
    )
    run.add_argument("--backend", choices=BACKENDS, help="the event loop (default: the BACKEND setting, else asyncio)")
    run.add_argument("target", help=TARGET_HELP)
    run.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the app (its --help lists its settings)")
    check = commands.add_parser(
        "check",
        help="validate settings, injections and registrations without initialising anything",
        description="Load and validate every setting, resolve every injection statically (Inject keys against "
        "provides and the services set before serving) and print the component table; exit 1 listing every "
        "problem at once, 0 when the app would boot.",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("target", help=TARGET_HELP)
    config = commands.add_parser(
        "config",
        help="list every setting: env variable, type, default, and the current value (secrets masked)",
        description="List every setting the app reads: env variable, type, default, whether it is required and "
        "its current value (secrets masked). Exit 1 if a current value is invalid.",
    )
    config.add_argument("--json", action="store_true", help="print the settings as JSON")
    config.add_argument("target", help=TARGET_HELP)
    return parser


def _timeout(value: float | None) -> str:
    return "none" if value is None else f"{value:g}s"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return lines


def _print_check(report: CheckReport, out: TextIO) -> None:
    rows = [
        [
            c.name,
            c.kind,
            str(c.priority),
            _timeout(c.init_timeout),
            _timeout(c.start_timeout),
            _timeout(c.shutdown_timeout),
            _timeout(c.finalize_timeout),
            c.restart,
            ", ".join(c.provides) or "-",
            ", ".join(c.injects) or "-",
            "?" if c.health_keys is None else (", ".join(c.health_keys) or "-"),
        ]
        for c in report.components
    ]
    headers = [
        "NAME",
        "KIND",
        "PRIORITY",
        "INIT",
        "START",
        "SHUTDOWN",
        "FINALIZE",
        "RESTART",
        "PROVIDES",
        "INJECTS",
        "HEALTH KEYS",
    ]
    out.write(f"{report.app}: {len(report.components)} components\n")
    out.write("\n".join(_table(headers, rows)) + "\n\n")
    if report.ok:
        out.write(f"ok: {report.settings_checked} settings valid, every injection resolved\n")
        return
    count = len(report.problems)
    out.write(f"{count} problem{'s' if count != 1 else ''}:\n")
    for problem in report.problems:
        out.write(f"  - [{problem.kind}] {problem}\n")


def _print_config(app_name: str, rows: list[SettingRow], out: TextIO) -> None:
    out.write(f"{app_name}: {len(rows)} settings\n")
    by_model: dict[str, list[SettingRow]] = {}
    for row in rows:
        by_model.setdefault(row.model, []).append(row)
    for model, group in by_model.items():
        out.write(f"\n{model} (used by {', '.join(group[0].used_by)})\n")
        table = []
        for row in group:
            value = "(invalid: " + row.error + ")" if row.error else repr(row.value) if row.value is not None else "-"
            if row.error and row.value is not None:
                value = f"{row.value!r} (invalid: {row.error})"
            names = " | ".join((row.env, *row.also))
            default = "required" if row.required else row.default
            source = row.set_by or "default"
            table.append([names, row.type + (", secret" if row.secret else ""), default, value, source])
        lines = _table(["ENV", "TYPE", "DEFAULT", "VALUE", "FROM"], table)
        out.write("\n".join("  " + line for line in lines) + "\n")


def _json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2) + "\n")


def main(argv: Sequence[str] | None = None, prog: str = "nacelle-py") -> int:
    """Run the command line; returns the exit status (2 for a usage error, as argparse)."""
    try:
        return _command(argv, prog)
    except BrokenPipeError:  # `nacelle-py config app:build | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _command(argv: Sequence[str] | None, prog: str) -> int:
    args = _parser(prog).parse_args(sys.argv[1:] if argv is None else list(argv))  # usage errors exit 2
    try:
        app = load_app(args.target)
    except TargetError as exc:
        sys.stderr.write(f"{prog} {args.command}: {exc}\n")
        return exc.status
    if args.command == "run":
        return app.boot(args.args, backend=args.backend)
    if args.command == "check":
        report = check_app(app)
        _json(report.as_json(), sys.stdout) if args.json else _print_check(report, sys.stdout)
        return 0 if report.ok else 1
    rows = settings_rows(app)
    if args.json:
        _json({"app": app.name, "settings": [row.as_json() for row in rows]}, sys.stdout)
    else:
        _print_config(app.name, rows, sys.stdout)
    return 1 if any(row.error for row in rows) else 0
