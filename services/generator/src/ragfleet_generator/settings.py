"""Generator settings, read from ``RAGFLEET_GENERATOR_*`` environment variables.

List and object settings take JSON. ``RAGFLEET_GENERATOR_MODELS`` lists the served models, the
first being the default; each entry is a name (served by ``RAGFLEET_GENERATOR_ENGINE``, with the
deployment settings below) or a ``ModelConfig`` object that sets its own engine, endpoint and
Serve resources, e.g.
``'["qwen2.5-coder-0.5b-instruct", {"name": "gpt-4o-mini", "engine": "openai",
"base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY", "num_cpus": 0.1}]'``.
``RAGFLEET_GENERATOR_MODELS_FILE`` names a JSON or YAML file holding that list instead.
A GGUF model not built in is declared with ``RAGFLEET_GENERATOR_EXTRA_MODELS`` as a JSON list of
``ModelSpec`` objects (name, package_prefix, num_parts, package_version, sha256, context_length,
chat_family, optionally part_file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic_settings import SettingsConfigDict

from ragfleet.runtime.errors import NotFound
from ragfleet.runtime.settings import ServiceSettings
from ragfleet_generator.chat_templates import ChatFamily
from ragfleet_generator.engine import EngineKind
from ragfleet_generator.models import BUILTIN_MODELS, ModelCatalog, ModelSpec


class ModelConfig(BaseModel):
    """One served model as configured; fields left unset take the service-wide setting.

    - ``llama_cpp``: ``gguf`` names the catalog entry (default: ``name``).
    - ``vllm``: ``model`` is a Hugging Face id or local folder (default:
      ``vllm_models[name]``, else ``name``); ``chat_family`` formats prompts when the tokenizer
      has no chat template; ``context_length`` defaults to ``vllm_max_model_len``.
    - ``openai``: ``base_url`` (required) and ``model`` (the remote name, default ``name``);
      the API key comes from the environment variable ``api_key_env`` or the file
      ``api_key_file`` (neither: the placeholder key that keyless servers accept);
      ``context_length`` defaults to ``n_ctx``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="the name clients put in GenerateRequest.model")
    engine: EngineKind | None = None
    gguf: str | None = None
    model: str | None = None
    chat_family: ChatFamily | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    context_length: int | None = Field(default=None, ge=256)
    num_cpus: float | None = Field(default=None, gt=0)
    num_gpus: float | None = Field(default=None, ge=0)
    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling_max_replicas: int | None = Field(default=None, ge=0)
    max_ongoing_requests: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class ServedModelConfig:
    """A model with every setting resolved: what its Serve deployment and engine are built from.

    ``source`` is the catalog name (llama_cpp), the weights (vllm) or the remote model name
    (openai). ``autoscaling_max_replicas`` > 0 turns autoscaling on between 1 and that many.
    """

    name: str
    engine: EngineKind
    source: str
    context_length: int | None
    chat_family: ChatFamily | None
    base_url: str | None
    api_key_env: str | None
    api_key_file: Path | None
    num_cpus: float
    num_gpus: float
    num_replicas: int
    autoscaling_max_replicas: int
    max_ongoing_requests: int


_MODEL_ENTRIES = TypeAdapter(list[str | ModelConfig])


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
    # Per-model deployment defaults (a ModelConfig may override each).
    num_cpus: float = Field(default=1.0, gt=0, description="CPUs reserved per model replica")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs (or a fraction) per replica")
    num_replicas: int = Field(default=1, ge=1, description="used when autoscaling is off")
    autoscaling_max_replicas: int = Field(
        default=0, ge=0, description="> 0 turns autoscaling on between 1 and this many replicas"
    )
    max_ongoing_requests: int = Field(
        default=8, ge=1, description="requests queued per replica; one generates at a time"
    )
    ingress_num_cpus: float = Field(
        default=0.1, gt=0, description="CPUs of the gRPC ingress replica that routes by model"
    )
    health_timeout_s: float = Field(
        default=2.0, gt=0, description="how long Check waits for each model deployment"
    )
    request_timeout_s: float | None = Field(
        default=None, gt=0, description="end-to-end gRPC timeout at the proxy; None: no limit"
    )

    # Models and engine.
    engine: EngineKind = Field(
        default=EngineKind.LLAMA_CPP, description="engine of models listed by name"
    )
    models: tuple[str | ModelConfig, ...] = Field(
        default=("qwen2.5-coder-0.5b-instruct",),
        min_length=1,
        description="models to serve (names or ModelConfig objects); the first is the default",
    )
    models_file: Path | None = Field(
        default=None, description="JSON or YAML list of models; replaces `models` when set"
    )
    extra_models: tuple[ModelSpec, ...] = ()
    model_cache_dir: Path = Field(
        default=Path("var/models"), description="where assembled GGUF files are kept"
    )
    n_ctx: int = Field(default=4096, ge=256, description="context window: prompt plus output")
    n_threads: int = Field(default=2, ge=1, description="llama.cpp threads per replica")

    # vLLM engine arguments (models with engine vllm).
    vllm_models: dict[str, str] = Field(
        default_factory=dict, description="served name -> Hugging Face id or local folder"
    )
    vllm_tensor_parallel_size: int = Field(default=1, ge=1)
    vllm_gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    vllm_max_model_len: int = Field(default=4096, ge=256, description="context window")
    vllm_dtype: str = Field(default="auto", min_length=1)
    vllm_enforce_eager: bool = Field(
        default=False, description="skip CUDA graph capture: faster start, slower decoding"
    )

    # OpenAI-compatible endpoints (models with engine openai).
    openai_timeout_s: float = Field(
        default=60.0, gt=0, description="longest wait for the next bytes of a response"
    )
    openai_connect_timeout_s: float = Field(default=5.0, gt=0)

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
        served = self.served_models()
        names = [m.name for m in served]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        catalog = self.catalog()
        for model in served:
            if model.engine is EngineKind.LLAMA_CPP:
                try:
                    catalog.get(model.source)
                except NotFound as exc:
                    raise ValueError(f"models: {exc.message}") from exc
            if model.engine is EngineKind.OPENAI and not model.base_url:
                raise ValueError(f"models: {model.name!r} uses engine openai but has no base_url")
        return self

    def model_entries(self) -> list[str | ModelConfig]:
        """``models``, or the list in ``models_file`` when that is set."""
        if self.models_file is None:
            return list(self.models)
        text = self.models_file.read_text()
        raw: Any = json.loads(text) if self.models_file.suffix == ".json" else yaml.safe_load(text)
        entries = _MODEL_ENTRIES.validate_python(raw)
        if not entries:
            raise ValueError(f"models_file: {self.models_file} lists no models")
        return entries

    def served_models(self) -> list[ServedModelConfig]:
        """Every served model with its settings resolved; the first is the default."""
        return [
            self._resolve(e if isinstance(e, ModelConfig) else ModelConfig(name=e))
            for e in self.model_entries()
        ]

    @property
    def default_model(self) -> str:
        return self.served_models()[0].name

    def _resolve(self, config: ModelConfig) -> ServedModelConfig:
        engine = config.engine or self.engine
        sources = {
            EngineKind.LLAMA_CPP: config.gguf or config.name,
            EngineKind.VLLM: config.model or self.vllm_models.get(config.name, config.name),
            EngineKind.OPENAI: config.model or config.name,
            EngineKind.FAKE: config.name,
        }
        context_lengths = {EngineKind.VLLM: self.vllm_max_model_len, EngineKind.OPENAI: self.n_ctx}
        return ServedModelConfig(
            name=config.name,
            engine=engine,
            source=sources[engine],
            context_length=config.context_length or context_lengths.get(engine),
            chat_family=config.chat_family,
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            api_key_file=config.api_key_file,
            num_cpus=config.num_cpus if config.num_cpus is not None else self.num_cpus,
            num_gpus=config.num_gpus if config.num_gpus is not None else self.num_gpus,
            num_replicas=config.num_replicas or self.num_replicas,
            autoscaling_max_replicas=(
                config.autoscaling_max_replicas
                if config.autoscaling_max_replicas is not None
                else self.autoscaling_max_replicas
            ),
            max_ongoing_requests=config.max_ongoing_requests or self.max_ongoing_requests,
        )

    def catalog(self) -> ModelCatalog:
        """Built-in models, then ``extra_models`` (which replace built-ins of the same name)."""
        return ModelCatalog([*BUILTIN_MODELS, *self.extra_models])
