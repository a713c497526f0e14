"""How a nested pytest run (pytester, or a subprocess) gets nacelle_py's plugin.

Installed, the plugin arrives through its ``pytest11`` entry point, and naming it
again with ``-p`` would register it twice (pytest refuses); from a checkout that is
not installed, only ``-p`` brings it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

__all__ = ["PLUGIN", "installed"]


def installed() -> bool:
    """Whether the ``pytest11`` entry point ``nacelle_py = nacelle_py.testing.plugin`` is installed."""
    return any(ep.value == "nacelle_py.testing.plugin" for ep in entry_points(group="pytest11", name="nacelle_py"))


PLUGIN: list[str] = [] if installed() else ["-p", "nacelle_py.testing.plugin"]
"""The arguments a nested pytest run needs to load the plugin."""
