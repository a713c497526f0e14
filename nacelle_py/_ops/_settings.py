"""The settings of the operational surface: the ops endpoint and systemd's notification protocol."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OpsSettings", "SystemdSettings", "parse_addr"]

OFF = ("", "none", "off", "false")


def parse_addr(value: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every interface) as ``(host, port)``; ``ValueError`` otherwise."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError("must be host:port (127.0.0.1:9090, [::1]:9090 or :9090)")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"the port must be 0..65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 host goes in brackets ([::1]:9090)")
    return host or "0.0.0.0", port


class OpsSettings(BaseSettings):
    """nacelle_py: the ops endpoint (probes, metrics, debug), started by the App when OPS_ADDR is set."""

    model_config = SettingsConfigDict(env_prefix="OPS_", env_parse_none_str="none")

    addr: str | None = Field(
        None,
        description="host:port of the ops endpoint (/livez, /readyz, /metrics, /debug/components); "
        "unset: the App's ops_addr if the code gives one, else off; off: off.",
    )
    metrics: bool = Field(True, description="Serve /metrics (needs nacelle-py[metrics]); false: probes only.")

    @field_validator("addr")
    @classmethod
    def _addr(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in OFF:
            return None
        parse_addr(value)
        return value.strip()


class SystemdSettings(BaseSettings):
    """systemd (set by systemd itself for Type=notify units; never prefixed)."""

    notify_socket: str | None = Field(
        None, validation_alias="NOTIFY_SOCKET", description="Datagram socket for READY=1, STATUS=, STOPPING=1."
    )
    watchdog_usec: int | None = Field(
        None, gt=0, validation_alias="WATCHDOG_USEC", description="Watchdog period in microseconds; pinged at half."
    )
    watchdog_pid: int | None = Field(
        None, validation_alias="WATCHDOG_PID", description="The process the watchdog is meant for (unset: this one)."
    )
