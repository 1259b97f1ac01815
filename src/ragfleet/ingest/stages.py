"""The pipeline's per-batch work, run inside Ray Data workers: read + parse + chunk, and embed.

Batches are ``dict[str, numpy.ndarray]`` with one row per chunk. A document that yields no chunk
to index (unchanged since the manifest, skipped, failed) travels as one *marker* row whose
``status`` says what happened, so the driver learns every document's outcome from one stream.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ragfleet.chunking import (
    ChunkingConfig,
    ChunkingStrategy,
    Document,
    DocumentChunker,
    load_embedder_tokenizer,
)
from ragfleet.clients import Blocking, EmbedderClient
from ragfleet.domain import InputType
from ragfleet.ingest.domain import ItemKind, SourceItem
from ragfleet.ingest.sources import ItemError, ReadLimits, load_text
from ragfleet.runtime.channels import Deadline

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Batch = dict[str, NDArray[Any]]


class RowStatus(StrEnum):
    CHUNK = "chunk"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    FAILED = "failed"


CHUNK_COLUMNS = (
    "source",
    "status",
    "reason",
    "content_hash",
    "n_chunks",
    "chunk_id",
    "text",
    "passage",
    "title",
    "section",
    "metadata",
)
ITEM_COLUMNS = ("source", "kind", "locator", "content_type", "title", "text", "metadata", "known")


def item_row(item: SourceItem, known_hash: str) -> dict[str, str]:
    """A ``SourceItem`` as a pipeline input row; ``known`` is the manifest's content hash."""
    return {
        "source": item.source,
        "kind": item.kind.value,
        "locator": item.locator,
        "content_type": item.content_type,
        "title": item.title,
        "text": item.text,
        "metadata": json.dumps(item.metadata, sort_keys=True),
        "known": known_hash,
    }


def content_hash(document: Document, chunking: ChunkingConfig) -> str:
    """Changes whenever the chunks would: content, title, type, metadata or chunking."""
    digest = hashlib.sha256()
    for part in (
        chunking.label,
        document.content_type,
        document.title,
        json.dumps(dict(document.metadata), sort_keys=True),
        document.text,
    ):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _chunker(chunking: ChunkingConfig) -> DocumentChunker:
    # Cached per worker process: Ray reuses workers, so the tokenizer loads once per process.
    tokenizer = load_embedder_tokenizer() if chunking.strategy is ChunkingStrategy.TOKENS else None
    return DocumentChunker(chunking, tokenizer=tokenizer)


def _marker(source: str, status: RowStatus, reason: str = "", digest: str = "") -> dict[str, Any]:
    return {
        "source": source,
        "status": status.value,
        "reason": reason,
        "content_hash": digest,
        "n_chunks": 0,
        "chunk_id": "",
        "text": "",
        "passage": "",
        "title": "",
        "section": "",
        "metadata": "{}",
    }


def _document_rows(
    row: dict[str, str], tenant: str, chunking: ChunkingConfig, limits: ReadLimits
) -> list[dict[str, Any]]:
    item = SourceItem(
        source=row["source"],
        kind=ItemKind(row["kind"]),
        locator=row["locator"],
        content_type=row["content_type"],
        title=row["title"],
        text=row["text"],
        metadata=json.loads(row["metadata"]),
    )
    try:
        text, content_type = load_text(item, limits)
    except ItemError as exc:
        return [_marker(item.source, RowStatus.FAILED, str(exc))]
    document = Document(
        source=item.source,
        text=text,
        title=item.title,
        content_type=content_type,
        metadata=item.metadata,
    )
    digest = content_hash(document, chunking)
    if digest == row["known"]:
        return [_marker(item.source, RowStatus.UNCHANGED, digest=digest)]
    if not text.strip():
        return [_marker(item.source, RowStatus.SKIPPED, "empty document", digest)]
    try:
        chunks = _chunker(chunking).chunk(document, tenant)
    except (ValueError, RecursionError) as exc:
        return [_marker(item.source, RowStatus.FAILED, f"cannot chunk: {exc}")]
    if not chunks:
        return [_marker(item.source, RowStatus.SKIPPED, "no text to index", digest)]
    return [
        {
            "source": item.source,
            "status": RowStatus.CHUNK.value,
            "reason": "",
            "content_hash": digest,
            "n_chunks": len(chunks),
            "chunk_id": chunk.id,
            "text": chunk.text,
            "passage": chunk.search_text,
            "title": chunk.title,
            "section": chunk.section,
            "metadata": json.dumps(dict(chunk.metadata), sort_keys=True),
        }
        for chunk in chunks
    ]


def _columns(rows: Sequence[dict[str, Any]]) -> Batch:
    batch: Batch = {}
    for name in CHUNK_COLUMNS:
        values = [r[name] for r in rows]
        batch[name] = np.array(values, dtype=np.int64 if name == "n_chunks" else object)
    return batch


def read_and_chunk(
    batch: Batch, *, tenant: str, chunking: ChunkingConfig, limits: ReadLimits
) -> Batch:
    """Item rows in, chunk and marker rows out. Never raises for one bad item: whatever goes
    wrong with it becomes a FAILED marker with the reason."""
    rows: list[dict[str, Any]] = []
    for i in range(len(batch["source"])):
        row = {name: str(batch[name][i]) for name in ITEM_COLUMNS}
        try:
            rows += _document_rows(row, tenant, chunking, limits)
        except Exception as exc:  # a parser bug must cost one document, not the run
            rows.append(_marker(row["source"], RowStatus.FAILED, f"{type(exc).__name__}: {exc}"))
    return _columns(rows)


# --- embedding ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedderSpec:
    """How the embedding actors get vectors: ``model_path`` set means a local
    sentence-transformers model loaded once per actor; otherwise ``address`` is the embedder
    service. ``threads`` is the torch intra-op thread count of a local model."""

    dimension: int = 384
    model_path: str = ""
    address: str = ""
    credential: str | None = field(default=None, repr=False)
    batch_size: int = 64
    threads: int = 1
    timeout_s: float = 120.0


class PassageEmbedder:
    """A Ray Data callable class: adds a ``vector`` column (float32, ``dimension`` wide) to
    each batch; marker rows get zeros. The model or channel is set up once per actor."""

    def __init__(self, spec: EmbedderSpec) -> None:
        self._spec = spec
        self._model: SentenceTransformer | None = None
        self._encode = self._encode_local if spec.model_path else self._encode_remote
        if spec.model_path:
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(max(1, spec.threads))
            self._model = SentenceTransformer(spec.model_path, device="cpu", local_files_only=True)
        else:
            self._runner = Blocking()
            self._client = self._runner.connect(
                lambda: EmbedderClient.connect(spec.address, credential=spec.credential)
            )

    def _encode_local(self, texts: list[str]) -> NDArray[np.float32]:
        assert self._model is not None
        vectors = self._model.encode(
            texts,
            batch_size=self._spec.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _encode_remote(self, texts: list[str]) -> NDArray[np.float32]:
        out: list[tuple[float, ...]] = []
        for start in range(0, len(texts), self._spec.batch_size):
            batch = texts[start : start + self._spec.batch_size]
            deadline = Deadline.after(self._spec.timeout_s)
            out += self._runner.run(self._client.embed(batch, InputType.PASSAGE, deadline))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self._spec.dimension)

    def __call__(self, batch: Batch) -> Batch:
        is_chunk = batch["status"] == RowStatus.CHUNK.value
        vectors = np.zeros((len(is_chunk), self._spec.dimension), dtype=np.float32)
        texts = [str(t) for t in batch["passage"][is_chunk]]
        if texts:
            vectors[is_chunk] = self._encode(texts)
        return {**batch, "vector": vectors}
