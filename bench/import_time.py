"""``import nacelle_py`` against importing its four dependencies, each in a fresh interpreter.

Each figure is the median wall time of ``python -c "import ..."`` over many
fresh interpreters, run alternately so that machine noise falls on both; an
empty interpreter's start-up is subtracted from both. Goal: ratio <= 1.2x.

The package is byte-compiled first, as ``pip install`` does for the
dependencies: an editable install under ``PYTHONDONTWRITEBYTECODE`` would
otherwise compile our sources on every import and measure the compiler.

    python bench/import_time.py [--repeat 25]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import time

DEPENDENCIES = (
    "import anyio, dependency_injector.containers, dependency_injector.providers, pydantic_settings, structlog"
)
PACKAGE = "import nacelle_py"
EMPTY = "pass"


def once(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main(repeat: int) -> None:
    import nacelle_py

    compileall.compile_dir(nacelle_py.__path__[0], quiet=1)
    runs: dict[str, list[float]] = {EMPTY: [], DEPENDENCIES: [], PACKAGE: []}
    for code in runs:  # warm the file cache
        once(code)
    for _ in range(repeat):
        for code in runs:
            runs[code].append(once(code))
    empty, deps, package = (statistics.median(runs[c]) for c in (EMPTY, DEPENDENCIES, PACKAGE))
    print(f"interpreter start-up (subtracted):    {empty * 1000:7.1f} ms")
    print(f"import anyio, dependency_injector, pydantic_settings, structlog: {(deps - empty) * 1000:7.1f} ms")
    print(f"import nacelle_py:                    {(package - empty) * 1000:7.1f} ms")
    print(f"ratio nacelle_py/dependencies: {(package - empty) / (deps - empty):.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25)
    main(parser.parse_args().repeat)
