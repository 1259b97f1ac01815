"""Ingestion of inline documents, the gateway's third use case: chunk, embed and replace each
document's source in the index. (Sources to read, from a folder or a URL, are ingest jobs:
``ragfleet_gateway.ingest_jobs`` runs the Ray Data pipeline of ``ragfleet.ingest``.)"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from ragfleet.chunking import ChunkingStrategy, DocumentChunker, load_embedder_tokenizer
from ragfleet.domain import InputType
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway.domain import Document, IngestResult
from ragfleet_gateway.retrieval import Embedder, Retriever
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.validation import check_documents, check_text

log = get_logger(__name__)

# A few batches in flight keep the embedder's dynamic batching fed without flooding it.
_EMBED_CONCURRENCY = 4


def _chunker_for(settings: GatewaySettings) -> DocumentChunker:
    config = settings.chunking()
    tokenizer = load_embedder_tokenizer() if config.strategy is ChunkingStrategy.TOKENS else None
    return DocumentChunker(config, tokenizer=tokenizer)


class DocumentIngest:
    def __init__(
        self,
        settings: GatewaySettings,
        embedder: Embedder,
        retriever: Retriever,
        chunker: DocumentChunker | None = None,
    ) -> None:
        self.settings = settings
        self._embedder = embedder
        self._retriever = retriever
        self._chunker = chunker or _chunker_for(settings)

    async def ingest(
        self, documents: Sequence[Document], tenant: str, deadline: Deadline
    ) -> IngestResult:
        """Chunks, embeds (passages, in batches of ``embed_batch_size``) and indexes
        ``documents``. Each document replaces whatever its source had before: its new chunks
        are upserted, then the source's other chunks are deleted (the new ids kept), so a
        failure in between leaves old and new chunks both present and a retry converges; the
        source is never empty. The whole request is validated and embedded before anything is
        written, so a rejected request or an embedder failure leaves the index as it was.
        ``replaced`` counts the documents whose source lost old chunks."""
        check_text(tenant, "tenant")
        check_documents(documents, self.settings)
        chunked = await asyncio.to_thread(
            lambda: [self._chunker.chunk(doc, tenant) for doc in documents]
        )
        flat = [c for chunks in chunked for c in chunks]
        vectors = await self._embed_passages([c.search_text for c in flat], deadline)
        embedded = iter(
            dataclasses.replace(c, vector=v) for c, v in zip(flat, vectors, strict=True)
        )
        replaced = removed = 0
        size = self.settings.upsert_batch_size
        for doc, chunks in zip(documents, chunked, strict=True):
            with_vectors = [next(embedded) for _ in chunks]
            for i in range(0, len(with_vectors), size):
                await self._retriever.upsert(with_vectors[i : i + size], deadline)
            deleted = await self._retriever.delete_source(
                tenant, doc.source, deadline, keep_ids=[c.id for c in with_vectors]
            )
            removed += deleted
            replaced += deleted > 0
        log.info("ingested", documents=len(documents), chunks=len(flat), replaced=replaced)
        return IngestResult(
            documents=len(documents), chunks=len(flat), replaced=replaced, removed_chunks=removed
        )

    async def _embed_passages(
        self, texts: Sequence[str], deadline: Deadline
    ) -> list[tuple[float, ...]]:
        size = self.settings.embed_batch_size
        gate = asyncio.Semaphore(_EMBED_CONCURRENCY)

        async def batch(start: int) -> list[tuple[float, ...]]:
            async with gate:
                return await self._embedder.embed(
                    texts[start : start + size], InputType.PASSAGE, deadline
                )

        batches = await asyncio.gather(*(batch(i) for i in range(0, len(texts), size)))
        return [v for vectors in batches for v in vectors]
