"""The App's operational surface: the ops endpoint (probes, metrics, debug) and systemd notifications."""

from ._operations import Operations
from ._settings import OpsSettings, SystemdSettings, parse_addr

__all__ = ["Operations", "OpsSettings", "SystemdSettings", "parse_addr"]
