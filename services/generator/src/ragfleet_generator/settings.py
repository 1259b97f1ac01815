"""Generator settings, read from ``RAGFLEET_GENERATOR_*`` environment variables.

List and object settings take JSON, e.g.
``RAGFLEET_GENERATOR_MODELS='["qwen2.5-coder-0.5b-instruct","qwen2.5-coder-1.5b-instruct"]'``.
A model not built in is declared with ``RAGFLEET_GENERATOR_EXTRA_MODELS`` as a JSON list of
``ModelSpec`` objects (name, package_prefix, num_parts, package_version, sha256, context_length,
chat_family, optionally part_file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ragfleet.runtime.errors import NotFound
from ragfleet.runtime.settings import ServiceSettings
from ragfleet_generator.engine import EngineKind
from ragfleet_generator.models import BUILTIN_MODELS, ModelCatalog, ModelSpec


class GeneratorSettings(ServiceSettings):
    """Deployment, model and limit settings of the generator.

    ``port`` is the Ray Serve gRPC proxy port (default 50053). Note that the proxy listens on
    all interfaces (Ray Serve binds ``[::]``); ``host`` only applies to the HTTP proxy.
    """

    model_config = SettingsConfigDict(env_prefix="RAGFLEET_GENERATOR_", extra="ignore", frozen=True)

    port: int = Field(default=50053, ge=1, le=65535)

    # Ray and Serve.
    ray_address: str = Field(default="auto", description="Ray cluster to deploy into")
    http_port: int = Field(
        default=8001, ge=1, le=65535, description="Serve's HTTP proxy; not 8000 to avoid clashes"
    )
    app_name: str = Field(default="generator", min_length=1)
    num_cpus: float = Field(default=1.0, gt=0, description="CPUs reserved per replica")
    num_replicas: int = Field(default=1, ge=1, description="used when autoscaling is off")
    autoscaling_max_replicas: int = Field(
        default=0, ge=0, description="> 0 turns autoscaling on between 1 and this many replicas"
    )
    max_ongoing_requests: int = Field(
        default=8, ge=1, description="requests queued per replica; one generates at a time"
    )
    request_timeout_s: float | None = Field(
        default=None, gt=0, description="end-to-end gRPC timeout at the proxy; None: no limit"
    )

    # Models and engine.
    engine: EngineKind = EngineKind.LLAMA_CPP
    models: tuple[str, ...] = Field(
        default=("qwen2.5-coder-0.5b-instruct",),
        min_length=1,
        description="models to serve; the first is the default",
    )
    extra_models: tuple[ModelSpec, ...] = ()
    model_cache_dir: Path = Field(
        default=Path("var/models"), description="where assembled GGUF files are kept"
    )
    n_ctx: int = Field(default=4096, ge=256, description="context window: prompt plus output")
    n_threads: int = Field(default=2, ge=1, description="llama.cpp threads per replica")

    # Request limits (violations are INVALID_ARGUMENT naming the field and the limit).
    max_output_tokens: int = Field(default=1024, ge=1, description="largest max_tokens accepted")
    default_max_tokens: int = Field(default=512, ge=1, description="used when max_tokens is 0")
    max_messages: int = Field(default=64, ge=1)
    max_message_chars: int = Field(default=32_000, ge=1)
    max_stop_sequences: int = Field(default=4, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.default_max_tokens > self.max_output_tokens:
            raise ValueError("default_max_tokens must not exceed max_output_tokens")
        catalog = self.catalog()
        for name in self.models:
            try:
                catalog.get(name)
            except NotFound as exc:
                raise ValueError(f"models: {exc.message}") from exc
        return self

    def catalog(self) -> ModelCatalog:
        """Built-in models, then ``extra_models`` (which replace built-ins of the same name)."""
        return ModelCatalog([*BUILTIN_MODELS, *self.extra_models])
