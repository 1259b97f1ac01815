"""The fleet in one process, for evaluating answers: the gateway's ``RagPipeline`` over the
embedder's, the retriever's and the generator's own cores, configured exactly as the services
are (their ``RAGFLEET_<SERVICE>_*`` settings), without gRPC or Ray in between. The index is an
embedded index in a folder of its own, so an evaluation corpus never mixes with a fleet's data.

The adapters below speak the protocols ``RagPipeline`` takes (``ragfleet_gateway.retrieval``
and ``ragfleet_gateway.fallback``); they translate types, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ragfleet.domain import (
    Chunk,
    Filter,
    GenerationDone,
    GenerationEvent,
    GenerationParams,
    InputType,
    SearchQuery,
    SearchResult,
    TokenEvent,
)
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import FailedPrecondition
from ragfleet_embedder.core import Embedder
from ragfleet_embedder.model import SentenceTransformerEmbedder
from ragfleet_embedder.settings import EmbedderSettings
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_generator.core import GenerationRequest, GeneratorCore, MessageInput
from ragfleet_generator.engine import TokenDelta
from ragfleet_generator.loader import build_model_core
from ragfleet_generator.settings import GeneratorSettings
from ragfleet_retriever.core import Retriever
from ragfleet_retriever.server import open_embedded
from ragfleet_retriever.settings import RetrieverSettings


class _Embedder:
    def __init__(self, core: Embedder) -> None:
        self._core = core

    async def embed(
        self, texts: Sequence[str], input_type: InputType, deadline: Deadline
    ) -> list[tuple[float, ...]]:
        result = await self._core.embed(texts, input_type)
        return [tuple(float(x) for x in row) for row in result.vectors]


class _Retriever:
    def __init__(self, core: Retriever) -> None:
        self._core = core

    async def search(self, search: SearchQuery, deadline: Deadline) -> SearchResult:
        return await self._core.search(search)

    async def upsert(self, chunks: Sequence[Chunk], deadline: Deadline) -> int:
        return await self._core.upsert(chunks)

    async def delete_source(
        self, tenant: str, source: str, deadline: Deadline, *, keep_ids: Sequence[str] = ()
    ) -> int:
        return await self._core.delete(
            [], Filter(tenant=tenant, source=source, exact_tenant=True), keep_ids
        )


class _Generator:
    def __init__(self, core: GeneratorCore | None) -> None:
        self._core = core

    async def generate(
        self, params: GenerationParams, deadline: Deadline, reserve_s: float = 0.0
    ) -> AsyncGenerator[GenerationEvent, None]:
        if self._core is None:
            raise FailedPrecondition("this local fleet was opened without a generator")
        request = GenerationRequest(
            messages=[MessageInput(m.role, m.content) for m in params.messages],
            model=params.model,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            stop=params.stop,
        )
        model = params.model or self._core.default_model
        async for event in self._core.generate(request):
            if isinstance(event, TokenDelta):
                yield TokenEvent(event.text)
            else:
                yield GenerationDone(model, str(event.finish_reason), event.usage)


async def _none() -> None:
    return None


@dataclass
class LocalFleet:
    """``pipeline`` is the gateway as configured; ``pipeline_for`` makes one with other gateway
    settings over the same loaded components (configurations compared without reloading)."""

    pipeline: RagPipeline
    retriever: Retriever
    embedder: Embedder
    _upstreams: tuple[_Embedder, _Retriever, _Generator]

    def pipeline_for(self, settings: GatewaySettings) -> RagPipeline:
        return RagPipeline(settings, *self._upstreams)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, index_dir: Path, gateway: GatewaySettings | None = None, *, generate: bool = True
    ) -> AsyncIterator[LocalFleet]:
        """Loads the embedding model, the index in ``index_dir`` and (unless ``generate`` is
        false: retrieval and ingestion only) the default generator model; blocking work runs
        in worker threads. Closes them on exit."""
        embedder_settings = EmbedderSettings()
        embedder = Embedder(
            embedder_settings,
            lambda: SentenceTransformerEmbedder.from_settings(embedder_settings),
        )
        retriever_settings = RetrieverSettings(data_dir=index_dir)
        retriever = Retriever(retriever_settings, lambda: open_embedded(retriever_settings))
        generator_settings = GeneratorSettings()
        model = generator_settings.served_models()[0]
        generator, *_ = await asyncio.gather(
            asyncio.to_thread(build_model_core, model, generator_settings) if generate else _none(),
            embedder.load(),
            retriever.load(),
        )
        try:
            upstreams = (_Embedder(embedder), _Retriever(retriever), _Generator(generator))
            pipeline = RagPipeline(gateway or GatewaySettings(), *upstreams)
            yield cls(pipeline, retriever, embedder, upstreams)
        finally:
            await asyncio.gather(retriever.close(), embedder.close())
