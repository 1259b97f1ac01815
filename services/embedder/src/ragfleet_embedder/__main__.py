"""``ragfleet-embedder`` / ``python -m ragfleet_embedder``: serve embeddings until SIGTERM."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from ragfleet.rerank import CrossEncoderReranker, Reranker
from ragfleet.runtime.errors import ModelLoadError
from ragfleet.runtime.logging import configure_logging, get_logger
from ragfleet.runtime.server import run_service
from ragfleet_embedder.core import Embedder
from ragfleet_embedder.model import EmbeddingModel, SentenceTransformerEmbedder
from ragfleet_embedder.server import build_server
from ragfleet_embedder.settings import EmbedderSettings


def main() -> None:
    settings = EmbedderSettings()
    configure_logging(settings.log_level, settings.log_format)

    def load_model() -> EmbeddingModel:
        return SentenceTransformerEmbedder.from_settings(settings)

    reranker_path = settings.reranker_path
    load_reranker: Callable[[], Reranker] | None = None
    if reranker_path is not None:
        load_reranker = functools.partial(
            CrossEncoderReranker.load,
            reranker_path,
            device=settings.device,
            batch_size=settings.reranker_batch_size,
            max_length=settings.reranker_max_length,
            allow_download=settings.reranker_allow_download,
        )
    embedder = Embedder(
        settings,
        load_model,
        load_reranker,
        reranker_name=reranker_path.name if reranker_path is not None else "",
    )

    async def serve() -> None:
        # grpc.aio binds a server to the loop it is created in, so build it inside asyncio.run.
        try:
            await run_service(build_server(settings, embedder), embedder.load)
        finally:
            await embedder.close()

    try:
        asyncio.run(serve())
    except ModelLoadError as exc:
        get_logger(__name__).error("model_load_failed", error=exc.message)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
