"""Builds the generator core from settings: assembles and verifies each model, loads its engine."""

from __future__ import annotations

import time
from collections.abc import Callable

from ragfleet.runtime.logging import get_logger
from ragfleet_generator.core import GenerationLimits, GeneratorCore, ServedModel
from ragfleet_generator.engine import EngineKind, LLMEngine
from ragfleet_generator.fake_engine import FakeEngine
from ragfleet_generator.models import ModelSpec, assemble_model
from ragfleet_generator.settings import GeneratorSettings

log = get_logger(__name__)


def _load_llama_cpp(spec: ModelSpec, settings: GeneratorSettings) -> LLMEngine:
    # Imported here so that a fake deployment never loads the llama.cpp library.
    from ragfleet_generator.llama_cpp_engine import LlamaCppEngine

    started = time.perf_counter()
    path = assemble_model(spec, settings.model_cache_dir)
    assembled = time.perf_counter()
    engine = LlamaCppEngine.load(
        path, n_ctx=min(settings.n_ctx, spec.context_length), n_threads=settings.n_threads
    )
    log.info(
        "model_loaded",
        model=spec.name,
        assemble_s=round(assembled - started, 3),
        load_s=round(time.perf_counter() - assembled, 3),
    )
    return engine


def _load_fake(spec: ModelSpec, settings: GeneratorSettings) -> LLMEngine:
    return FakeEngine(context_window=min(settings.n_ctx, spec.context_length))


ENGINE_LOADERS: dict[EngineKind, Callable[[ModelSpec, GeneratorSettings], LLMEngine]] = {
    EngineKind.LLAMA_CPP: _load_llama_cpp,
    EngineKind.FAKE: _load_fake,
}


def build_core(settings: GeneratorSettings) -> GeneratorCore:
    """Loads every model in ``settings.models``; raises ModelLoadError if one cannot be loaded."""
    catalog = settings.catalog()
    loader = ENGINE_LOADERS[settings.engine]
    models = [
        ServedModel(name=name, kind=settings.engine, engine=loader(catalog.get(name), settings))
        for name in settings.models
    ]
    return GeneratorCore(models, settings.models[0], GenerationLimits.from_settings(settings))
