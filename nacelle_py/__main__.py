"""``python -m nacelle_py``: the ``nacelle-py`` command line."""

from __future__ import annotations

from ._cli import main

raise SystemExit(main(prog="python -m nacelle_py"))
