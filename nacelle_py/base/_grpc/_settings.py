"""GRPCSettings: where the gRPC server listens and how long a graceful stop waits."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..._validate import positive_setting

__all__ = ["GRPCSettings"]


class GRPCSettings(BaseSettings):
    """GRPCServer: where it listens and how long a graceful stop waits for the RPCs in flight."""

    model_config = SettingsConfigDict(env_prefix="GRPC_")

    host: str = Field(
        default="127.0.0.1", description="Address to listen on (0.0.0.0 or :: for every interface, as in a container)."
    )
    port: int = Field(default=50051, description="TCP port to listen on; 0 picks a free one (logged).")
    grace_period: float = Field(
        default=5.0, description="Seconds the RPCs in flight get to finish once a stop began; then they are cancelled."
    )
    drain_delay: float = Field(
        default=0.5,
        ge=0,
        description="Seconds between the health service saying NOT_SERVING and the server "
        "refusing new RPCs (load balancers and probes notice meanwhile); 0: at once.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        host = value.strip()
        if not host:
            raise ValueError("must be a host name or an IP address, such as 127.0.0.1, 0.0.0.0 or ::")
        if host.startswith("[") and host.endswith("]"):  # "[::1]": the brackets belong to the address, not the host
            host = host[1:-1]
        return host

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be a TCP port from 0 to 65535 (0 picks a free port)")
        return value

    @field_validator("grace_period")
    @classmethod
    def _grace(cls, value: float) -> float:
        checked = positive_setting(value)
        assert checked is not None  # a float field is never None
        return checked
