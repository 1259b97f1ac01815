"""The ingestion pipeline: discover → (Ray Data) read, parse, chunk → embed → (driver) bulk
upsert → manifest.

The driver lists the source, diffs it against the manifest, and streams the Ray Data dataset's
output (``iter_batches``): it is the only writer to the retriever and to the manifest. Pulling
batches only as fast as the retriever confirms upserts is the backpressure: Ray Data's streaming
executor stops scheduling upstream work when its bounded output queue is full.

Exactly-once, per document: its chunk ids are noted as pending before they are upserted; once
the retriever confirmed every chunk of the document, its stale chunks (the manifest's old ids
and any pending orphans not in the new set) are deleted and the manifest records the new hash
and ids. A crash at any point leaves either the old record (the document is redone on the next
run; upserts by id are idempotent) or the new one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from ragfleet.chunking import ChunkingConfig
from ragfleet.clients import Blocking, RetrieverClient
from ragfleet.domain import Chunk, default_embedding_model_path
from ragfleet.ingest.domain import IngestSummary, Outcome, SourceItem
from ragfleet.ingest.manifest import Manifest, ManifestEntry
from ragfleet.ingest.sources import Discovery, ReadLimits, SourceKind, discover
from ragfleet.ingest.stages import (
    Batch,
    EmbedderSpec,
    PassageEmbedder,
    RowStatus,
    item_row,
    read_and_chunk,
)
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import InvalidInput

_DELETE_BATCH = 5000
_RETRY_ATTEMPTS = 4


class EmbeddingBackend(StrEnum):
    """Where vectors come from. ``service``: Embed calls to the embedder, which already holds
    a warm model (measured faster end to end on 2 cores, see docs/benchmarks.md); ``local``: an
    actor pool, each actor loading the model once (scales out on a Ray cluster)."""

    LOCAL = "local"
    SERVICE = "service"


def _worker_cpus(config: IngestConfig) -> float:
    if config.worker_cpus:
        return config.worker_cpus
    import ray

    free = float(ray.available_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
    return max(0.1, (free - config.read_cpus) / config.workers)


def _local_spec(config: IngestConfig) -> EmbedderSpec:
    path = config.model_path or str(default_embedding_model_path())
    return EmbedderSpec(
        dimension=config.dimension,
        model_path=path,
        batch_size=config.embed_batch_size,
        threads=max(1, round(_worker_cpus(config))),
    )


def _service_spec(config: IngestConfig) -> EmbedderSpec:
    return EmbedderSpec(
        dimension=config.dimension,
        address=config.embedder_address,
        credential=config.service_credential,
        batch_size=config.embed_batch_size,
    )


_EMBEDDER_SPECS: dict[EmbeddingBackend, Callable[[IngestConfig], EmbedderSpec]] = {
    EmbeddingBackend.LOCAL: _local_spec,
    EmbeddingBackend.SERVICE: _service_spec,
}


@dataclass(frozen=True)
class IngestConfig:
    """One run's settings. ``workers`` embedding actors with ``worker_cpus`` CPUs each (Ray
    resources; fractions allowed); ``embed_batch_size`` texts per model call; at most
    ``upsert_batch_size`` chunks per Upsert (the retriever allows 1024)."""

    tenant: str = ""
    sync: bool = False
    kind: SourceKind = SourceKind.AUTO
    retriever_address: str = "127.0.0.1:50052"
    embedder_address: str = "127.0.0.1:50051"
    service_credential: str | None = field(default=None, repr=False)
    """The fleet's service credential, sent to the embedder and the retriever."""
    embedding: EmbeddingBackend = EmbeddingBackend.SERVICE
    model_path: str = ""
    dimension: int = 384
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    limits: ReadLimits = field(default_factory=ReadLimits)
    workers: int = 1
    worker_cpus: float = 0.0
    read_cpus: float = 0.25
    embed_batch_size: int = 64
    upsert_batch_size: int = 256
    rpc_timeout_s: float = 120.0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InvalidInput(f"workers: must be at least 1, got {self.workers}")
        if self.worker_cpus < 0 or self.read_cpus <= 0:
            raise InvalidInput("worker_cpus, read_cpus: must be positive")
        if not 1 <= self.upsert_batch_size <= 1024:
            raise InvalidInput(
                f"upsert_batch_size: must be in [1, 1024], got {self.upsert_batch_size}"
            )
        if self.embed_batch_size < 1:
            raise InvalidInput(f"embed_batch_size: must be positive, got {self.embed_batch_size}")


class RetrieverWriter:
    """Blocking Upsert/Delete/GetStats through ``ragfleet.clients.RetrieverClient`` (retried on
    UNAVAILABLE, errors mapped), each call bounded by ``timeout_s``."""

    def __init__(self, address: str, timeout_s: float, credential: str | None = None) -> None:
        self.address = address
        self._runner = Blocking()
        self._client: RetrieverClient = self._runner.connect(
            lambda: RetrieverClient.connect(address, _RETRY_ATTEMPTS, credential)
        )
        self._timeout_s = timeout_s

    def close(self) -> None:
        self._runner.run(self._client.close())
        self._runner.close()

    def upsert(self, chunks: Sequence[Chunk]) -> int:
        return self._runner.run(self._client.upsert(chunks, Deadline.after(self._timeout_s)))

    def delete(self, ids: Sequence[str]) -> int:
        deleted = 0
        ordered = sorted(ids)
        for start in range(0, len(ordered), _DELETE_BATCH):
            batch = ordered[start : start + _DELETE_BATCH]
            deleted += self._runner.run(
                self._client.delete_ids(batch, Deadline.after(self._timeout_s))
            )
        return deleted

    def chunk_count(self) -> int:
        return self._runner.run(self._client.stats(Deadline.after(self._timeout_s))).chunks


@dataclass
class _Pending:
    """A document whose chunks are on their way to the retriever."""

    content_hash: str
    n_chunks: int
    ids: list[str] = field(default_factory=list)
    confirmed: int = 0


class _Committer:
    """The driver's bookkeeping: buffers chunks into Upserts and finalizes documents."""

    def __init__(
        self,
        config: IngestConfig,
        collection: str,
        manifest: Manifest,
        writer: RetrieverWriter,
        known: dict[str, ManifestEntry],
        summary: IngestSummary,
        on_document: Callable[[], None],
    ) -> None:
        self._config = config
        self._collection = collection
        self._manifest = manifest
        self._writer = writer
        self._known = known
        self._summary = summary
        self._on_document = on_document
        self._buffer: list[tuple[str, Chunk]] = []
        self._documents: dict[str, _Pending] = {}

    def take(self, batch: Batch) -> None:
        for i in range(len(batch["source"])):
            source = str(batch["source"][i])
            status = RowStatus(str(batch["status"][i]))
            if status is not RowStatus.CHUNK:
                self._finish(source, Outcome(status.value), str(batch["reason"][i]))
                continue
            pending = self._documents.setdefault(
                source, _Pending(str(batch["content_hash"][i]), int(batch["n_chunks"][i]))
            )
            chunk_id = str(batch["chunk_id"][i])
            pending.ids.append(chunk_id)
            chunk = Chunk(
                id=chunk_id,
                text=str(batch["text"][i]),
                source=source,
                title=str(batch["title"][i]),
                section=str(batch["section"][i]),
                tenant=self._config.tenant,
                metadata=json.loads(str(batch["metadata"][i])),
                vector=tuple(np.asarray(batch["vector"][i], dtype=np.float32).tolist()),
            )
            self._buffer.append((source, chunk))
            if len(self._buffer) >= self._config.upsert_batch_size:
                self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        buffer, self._buffer = self._buffer, []
        self._manifest.add_pending(self._config.tenant, [(s, c.id) for s, c in buffer])
        self._writer.upsert([c for _, c in buffer])
        for source, _ in buffer:
            pending = self._documents[source]
            pending.confirmed += 1
            if pending.confirmed == pending.n_chunks:
                self._commit(source, pending)

    def _commit(self, source: str, pending: _Pending) -> None:
        tenant = self._config.tenant
        old = self._known.get(source)
        new_ids = set(pending.ids)
        previous = set(old.chunk_ids) if old else set()
        stale = (previous | self._manifest.pending(tenant, source)) - new_ids
        deleted = self._writer.delete(list(stale)) if stale else 0
        self._manifest.record(tenant, source, self._collection, pending.content_hash, pending.ids)
        del self._documents[source]
        self._summary.chunks_added += len(new_ids - previous)
        self._summary.chunks_deleted += deleted
        self._finish(source, Outcome.REPLACED if old else Outcome.ADDED)

    def _finish(self, source: str, outcome: Outcome, reason: str = "") -> None:
        self._summary.count(outcome, source, reason)
        self._on_document()

    def delete_vanished(self, listed: set[str]) -> None:
        """``--sync``: documents of this collection that the source no longer lists."""
        tenant = self._config.tenant
        for source, entry in sorted(self._known.items()):
            if entry.collection != self._collection or source in listed:
                continue
            ids = set(entry.chunk_ids) | self._manifest.pending(tenant, source)
            self._summary.chunks_deleted += self._writer.delete(list(ids))
            self._manifest.forget(tenant, source)
            self._summary.count(Outcome.DELETED, source)


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _build_dataset(items: list[SourceItem], known: dict[str, ManifestEntry], config: IngestConfig):  # type: ignore[no-untyped-def]
    import ray.data

    rows = [
        item_row(item, known[item.source].content_hash if item.source in known else "")
        for item in items
    ]
    blocks = max(1, min(len(rows) // 16, 256))
    chunked = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        read_and_chunk,  # type: ignore[arg-type]
        batch_size=16,
        batch_format="numpy",
        num_cpus=config.read_cpus,
        fn_kwargs={
            "tenant": config.tenant,
            "chunking": config.chunking,
            "limits": config.limits,
        },
    )
    return chunked.map_batches(
        PassageEmbedder,
        batch_size=config.embed_batch_size,
        batch_format="numpy",
        fn_constructor_args=(_EMBEDDER_SPECS[config.embedding](config),),
        compute=ray.data.ActorPoolStrategy(size=config.workers),
        num_cpus=_worker_cpus(config),
    )


def _progress_bar(config: IngestConfig, total: int):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="doc",
        file=sys.stderr,
        disable=not (config.progress and sys.stderr.isatty()),
        dynamic_ncols=True,
    )


def run_ingest(
    spec: str,
    config: IngestConfig,
    manifest_path: Path,
    summary: IngestSummary | None = None,
) -> IngestSummary:
    """Ingests ``spec`` (a directory, file, JSONL/BEIR corpus, URL list or sitemap) into the
    retriever at ``config.retriever_address``. Ray must be initialized (``ray_session``).

    Per-item problems (unreadable, binary, non-UTF-8, too big, HTTP errors and timeouts, empty)
    end up in the summary's failures or skipped items; only a source that cannot be listed at
    all (``InvalidInput``) or an unreachable retriever (``Unavailable``) raise. ``summary`` may
    be passed in to watch the counts while the run goes on.
    """
    summary = summary or IngestSummary()
    started = time.perf_counter()
    found: Discovery = discover(spec, config.kind, config.limits)
    summary.source = spec
    summary.documents = len(found.items) + len(found.errors)
    for where, reason in found.errors:
        summary.count(Outcome.FAILED, where, reason)
    writer = RetrieverWriter(
        config.retriever_address, config.rpc_timeout_s, config.service_credential
    )
    try:
        with Manifest(manifest_path) as manifest:
            if writer.chunk_count() == 0:
                # The index was wiped (or never filled): whatever the manifest says is gone.
                manifest.clear(config.tenant)
            known = manifest.entries(config.tenant)
            bar = _progress_bar(config, summary.documents)
            bar.update(len(found.errors))

            def on_document() -> None:
                bar.update(1)
                bar.set_postfix(chunks=summary.chunks_added, failed=summary.failed, refresh=False)

            committer = _Committer(
                config, found.collection, manifest, writer, known, summary, on_document
            )
            try:
                if found.items:
                    _quiet_ray_data()
                    dataset = _build_dataset(found.items, known, config)
                    for batch in _iter_batches(dataset, config):
                        committer.take(batch)
                    committer.flush()
                if config.sync:
                    committer.delete_vanished({item.source for item in found.items})
            finally:
                bar.close()
    finally:
        writer.close()
        summary.elapsed_s = time.perf_counter() - started
    return summary


def _iter_batches(dataset: Any, config: IngestConfig) -> Iterator[Batch]:
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
