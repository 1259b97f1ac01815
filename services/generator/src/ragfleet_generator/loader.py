"""Builds a model's engine from its resolved configuration: one loader per engine kind."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ragfleet.runtime.errors import ModelLoadError
from ragfleet.runtime.logging import get_logger
from ragfleet_generator.core import GenerationLimits, GeneratorCore, ServedModel
from ragfleet_generator.engine import EngineKind, LLMEngine
from ragfleet_generator.fake_engine import FakeEngine
from ragfleet_generator.models import assemble_model
from ragfleet_generator.settings import GeneratorSettings, ServedModelConfig

log = get_logger(__name__)


def _load_llama_cpp(model: ServedModelConfig, settings: GeneratorSettings) -> LLMEngine:
    # Imported here so that other engines never load the llama.cpp library.
    from ragfleet_generator.llama_cpp_engine import LlamaCppEngine

    spec = settings.catalog().get(model.source)
    path = assemble_model(spec, settings.model_cache_dir)
    return LlamaCppEngine.load(
        path, n_ctx=min(settings.n_ctx, spec.context_length), n_threads=settings.n_threads
    )


def _load_vllm(model: ServedModelConfig, settings: GeneratorSettings) -> LLMEngine:
    from ragfleet_generator.vllm_engine import VllmEngine

    return VllmEngine.load(
        model.source,
        chat_family=model.chat_family,
        max_model_len=model.context_length or settings.vllm_max_model_len,
        dtype=settings.vllm_dtype,
        tensor_parallel_size=settings.vllm_tensor_parallel_size,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        enforce_eager=settings.vllm_enforce_eager,
    )


def _load_openai(model: ServedModelConfig, settings: GeneratorSettings) -> LLMEngine:
    from ragfleet_generator.openai_engine import OpenAIEngine, read_api_key

    if model.base_url is None:
        raise ModelLoadError(f"model {model.name!r}: engine openai needs a base_url")
    return OpenAIEngine.connect(
        base_url=model.base_url,
        model=model.source,
        api_key=read_api_key(model.api_key_env, model.api_key_file, dict(os.environ)),
        context_window=model.context_length or settings.n_ctx,
        timeout_s=settings.openai_timeout_s,
        connect_timeout_s=settings.openai_connect_timeout_s,
    )


def _load_fake(model: ServedModelConfig, settings: GeneratorSettings) -> LLMEngine:
    return FakeEngine(context_window=model.context_length or settings.n_ctx)


ENGINE_LOADERS: dict[EngineKind, Callable[[ServedModelConfig, GeneratorSettings], LLMEngine]] = {
    EngineKind.LLAMA_CPP: _load_llama_cpp,
    EngineKind.VLLM: _load_vllm,
    EngineKind.OPENAI: _load_openai,
    EngineKind.FAKE: _load_fake,
}


def load_engine(model: ServedModelConfig, settings: GeneratorSettings) -> LLMEngine:
    """Loads ``model``'s engine; raises ModelLoadError saying what is missing when it cannot."""
    started = time.perf_counter()
    engine = ENGINE_LOADERS[model.engine](model, settings)
    log.info(
        "model_loaded",
        model=model.name,
        engine=str(model.engine),
        load_s=round(time.perf_counter() - started, 3),
    )
    return engine


def build_model_core(model: ServedModelConfig, settings: GeneratorSettings) -> GeneratorCore:
    """A core serving the one model ``model``: what each model's Serve replica runs."""
    served = ServedModel(name=model.name, kind=model.engine, engine=load_engine(model, settings))
    return GeneratorCore([served], model.name, GenerationLimits.from_settings(settings))
