"""Typed settings read from the environment, one prefix per service."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service is configured with. Subclasses set ``env_prefix``, e.g.
    ``RAGFLEET_EMBEDDER_`` so that ``RAGFLEET_EMBEDDER_PORT=50051`` sets ``port``."""

    model_config = SettingsConfigDict(env_prefix="RAGFLEET_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    grace_period_s: float = Field(
        default=5.0, ge=0, description="how long in-flight calls may finish after SIGTERM"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"
