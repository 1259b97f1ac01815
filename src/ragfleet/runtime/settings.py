"""Typed settings read from the environment, one prefix per service."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
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
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 turns it off"
    )
    service_credential: SecretStr | None = Field(
        default=None,
        description="the fleet's shared service credential: internal services accept only "
        "calls that carry it (metadata authorization: Bearer ...), and every client sends it; "
        "unset: internal services accept any caller (bind them to loopback)",
    )
    service_credential_file: Path | None = Field(
        default=None,
        description="a file holding the service credential (a mounted Secret); wins over "
        "service_credential",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, data: Any) -> Any:
        """A variable under the service's own prefix that names no setting is a typo (or a
        setting that no longer exists): refusing it beats silently running on the default."""
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        if prefix == "RAGFLEET_":
            return data
        known = {name.upper() for name in cls.model_fields}
        for variable in sorted(os.environ):
            name = variable.upper()
            if name.startswith(prefix) and name[len(prefix) :] not in known:
                close = difflib.get_close_matches(name[len(prefix) :], known, n=1)
                hint = f"; did you mean {prefix}{close[0]}?" if close else ""
                raise ValueError(f"{variable} is not a setting{hint}")
        return data

    def credential(self) -> str | None:
        """The service credential (the file's content, stripped, when a file is set); None
        when none is configured. Raises ``ValueError`` for an empty one."""
        if self.service_credential_file is not None:
            value = self.service_credential_file.read_text(encoding="utf-8").strip()
            where = str(self.service_credential_file)
        elif self.service_credential is not None:
            value = self.service_credential.get_secret_value().strip()
            where = "service_credential"
        else:
            return None
        if not value:
            raise ValueError(f"the service credential in {where} is empty")
        return value

    @property
    def telemetry_name(self) -> str:
        """The service's name in traces: ``ragfleet-embedder`` for ``RAGFLEET_EMBEDDER_``."""
        prefix = str(self.model_config.get("env_prefix", "RAGFLEET_"))
        return prefix.strip("_").lower().replace("_", "-")

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"
