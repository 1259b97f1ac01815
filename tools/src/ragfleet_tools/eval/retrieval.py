"""Runs retrieval configurations over a BEIR dataset in-process, on the fleet's own components.

The corpus is chunked with ``ragfleet.chunking``, embedded with the embedder service's model and
query/passage handling (``EmbedderEncoder``), and indexed in the retriever service's
``EmbeddedBackend`` (SQLite + tantivy BM25 + usearch); hybrid rankings are fused with
``ragfleet.fusion``, exactly as the retriever fuses them. So a configuration scores here what it
scores in the fleet.

Built indexes are cached under
``cache_dir/<dataset>-<corpus fingerprint>/<model cache key>/<chunking>`` (a ``built.json``
marker is written last, so an interrupted build is redone), and each query's candidate lists are
kept in memory at the deepest depth asked for, so a sweep over fusion parameters searches each
query once per side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ragfleet.chunking import (
    ChunkingConfig,
    ChunkingStrategy,
    DocumentChunker,
    load_embedder_tokenizer,
)
from ragfleet.domain import Chunk, SearchMode
from ragfleet.fusion import fuse
from ragfleet_tools.eval.beir import BeirDataset
from ragfleet_tools.eval.config import NO_RERANKER, RetrievalConfig
from ragfleet_tools.eval.metrics import RetrievalMetrics, evaluate_run

if TYPE_CHECKING:
    from ragfleet.rerank import Reranker
    from ragfleet_embedder.settings import EmbedderSettings
    from ragfleet_retriever.embedded.backend import EmbeddedBackend

RUN_DEPTH = 100
"""Documents kept per query: enough for Recall@100."""
_INDEX_FORMAT = 1
_EMBED_BATCH = 4096
_UPSERT_BATCH = 4096

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    """The default progress sink: says nothing."""


class TextEncoder(Protocol):
    """Embeds queries and passages the way the embedder service does."""

    @property
    def name(self) -> str: ...

    @property
    def cache_key(self) -> str:
        """Names the model's weights in the index cache: two encoders with one key must embed
        alike."""
        ...

    @property
    def dimension(self) -> int: ...

    def encode_queries(self, texts: Sequence[str]) -> NDArray[np.float32]: ...

    def encode_passages(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


def model_cache_key(settings: EmbedderSettings) -> str:
    """The model's name, plus a digest of the folder's path and weight files when
    ``RAGFLEET_EMBEDDER_MODEL_PATH`` names one: a fine-tuned model keeps its base's name unless
    told otherwise, and retraining it in place must not reuse the old model's vectors. Settings
    that change passage vectors (the passage prefix, windows over long texts) are in it too."""
    handling = ""
    if settings.passage_prefix:
        handling += "-p" + hashlib.sha256(settings.passage_prefix.encode()).hexdigest()[:8]
    if settings.long_text_windows:
        handling += "-windows"
    path = settings.model_path
    if path is None:
        return settings.model_name + handling
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode())
    for weights in sorted(resolved.glob("*.safetensors")) + sorted(resolved.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{settings.model_name}-{digest.hexdigest()[:12]}{handling}"


class EmbedderEncoder:
    """The embedder service's model with its query and passage prefixes, in-process."""

    def __init__(self, settings: EmbedderSettings) -> None:
        from ragfleet_embedder.model import SentenceTransformerEmbedder

        self.settings = settings
        self._model = SentenceTransformerEmbedder.from_settings(settings)

    @classmethod
    def from_env(cls) -> EmbedderEncoder:
        """Reads ``RAGFLEET_EMBEDDER_*`` like the service does, then loads the model (seconds)."""
        from ragfleet_embedder.settings import EmbedderSettings

        return cls(EmbedderSettings())

    @property
    def name(self) -> str:
        return self._model.name

    @property
    def cache_key(self) -> str:
        return model_cache_key(self.settings)

    @property
    def dimension(self) -> int:
        return self._model.dimension

    def _encode(self, prefix: str, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._model.encode([prefix + t for t in texts] if prefix else texts)

    def encode_queries(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._encode(self.settings.query_prefix, texts)

    def encode_passages(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._encode(self.settings.passage_prefix, texts)

    def tokenizer(self) -> Any:
        return load_embedder_tokenizer(self.settings.model_path)


@dataclass(frozen=True)
class _Candidates:
    depth: int
    hits: list[tuple[str, float]]


class CorpusIndex:
    """A dataset's corpus, chunked one way, in an ``EmbeddedBackend``. Build or reopen it with
    ``open_or_build``; searches are memoised per query at the deepest depth asked for."""

    def __init__(self, backend: EmbeddedBackend, chunking: ChunkingConfig) -> None:
        self.backend = backend
        self.chunking = chunking
        self._lexical: dict[str, _Candidates] = {}
        self._dense: dict[str, _Candidates] = {}
        self._chunks: dict[str, Chunk] = {}

    @classmethod
    def open_or_build(
        cls,
        dataset: BeirDataset,
        chunking: ChunkingConfig,
        encoder: TextEncoder,
        cache_dir: Path,
        tokenizer: Callable[[], Any],
        progress: Progress = _quiet,
    ) -> CorpusIndex:
        """Opens the cached index for (dataset, encoder, chunking), building it first when
        absent or incomplete. ``tokenizer`` is called only to build a ``tokens`` chunking."""
        from ragfleet_retriever.embedded.backend import EmbeddedBackend

        folder = (
            cache_dir
            / f"{dataset.name}-{dataset.fingerprint}"
            / re.sub(r"[^\w.-]+", "_", encoder.cache_key)
            / chunking.label
        )
        marker = folder / "built.json"
        if _built(marker):
            return cls(
                EmbeddedBackend.open(folder / "index", dimension=encoder.dimension), chunking
            )
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        chunker = DocumentChunker(
            chunking,
            tokenizer=tokenizer() if chunking.strategy is ChunkingStrategy.TOKENS else None,
        )
        chunks = [c for document in dataset.corpus.values() for c in chunker.chunk(document)]
        progress(f"{chunking.label}: embedding {len(chunks)} chunks of {len(dataset.corpus)} docs")
        backend = EmbeddedBackend.open(folder / "index", dimension=encoder.dimension)
        for start in range(0, len(chunks), _EMBED_BATCH):
            batch = chunks[start : start + _EMBED_BATCH]
            vectors = encoder.encode_passages([c.search_text for c in batch])
            backend.upsert(
                [
                    dataclasses.replace(c, vector=tuple(float(x) for x in vector))
                    for c, vector in zip(batch, vectors, strict=True)
                ]
            )
            progress(f"{chunking.label}: indexed {min(start + _EMBED_BATCH, len(chunks))}")
        seconds = time.perf_counter() - started
        marker.write_text(
            json.dumps({"format": _INDEX_FORMAT, "chunks": len(chunks), "seconds": seconds})
        )
        progress(f"{chunking.label}: built in {seconds:.0f} s")
        return cls(backend, chunking)

    def lexical(self, query_id: str, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best chunks for ``query`` by BM25 (the retriever's tantivy index)."""
        return self._memo(self._lexical, query_id, k, lambda: self.backend.search_lexical(query, k))

    def dense(self, query_id: str, vector: Sequence[float], k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest chunks to ``vector`` (the retriever's usearch index)."""
        return self._memo(self._dense, query_id, k, lambda: self.backend.search_dense(vector, k))

    @staticmethod
    def _memo(
        memo: dict[str, _Candidates],
        query_id: str,
        k: int,
        search: Callable[[], Sequence[tuple[str, float]]],
    ) -> list[tuple[str, float]]:
        held = memo.get(query_id)
        if held is None or held.depth < k:
            held = _Candidates(k, [(hit[0], float(hit[1])) for hit in search()])
            memo[query_id] = held
        return held.hits[:k]

    def chunks(self, ids: Sequence[str]) -> list[Chunk]:
        """The stored chunks with ``ids``, in order."""
        missing = [i for i in ids if i not in self._chunks]
        for chunk_id, c in self.backend.fetch(missing).items():
            self._chunks[chunk_id] = dataclasses.replace(c, vector=())
        return [self._chunks[i] for i in ids]

    def close(self) -> None:
        self.backend.close()


def _built(marker: Path) -> bool:
    try:
        return int(json.loads(marker.read_text())["format"]) == _INDEX_FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


@dataclass(frozen=True)
class ConfigResult:
    """One configuration's metrics; ``seconds`` is the wall time of its queries (searches,
    fusion, reranking; index builds and query embedding excluded)."""

    config: RetrievalConfig
    metrics: RetrievalMetrics
    seconds: float


@dataclass(frozen=True)
class Evaluation:
    dataset: str
    split: str
    model: str
    results: list[ConfigResult]

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "model": self.model,
            "results": [
                {
                    "name": r.config.name,
                    "description": r.config.description,
                    "chunking": r.config.chunking.label,
                    "metrics": r.metrics.as_dict(),
                    "seconds": round(r.seconds, 3),
                }
                for r in self.results
            ],
        }


class RetrievalEvaluator:
    """Evaluates configurations on one dataset split. Indexes (one per chunking) and query
    vectors are built on first use and reused across configurations; close it when done."""

    def __init__(
        self,
        dataset: BeirDataset,
        encoder: TextEncoder,
        cache_dir: Path,
        *,
        tokenizer: Callable[[], Any] = load_embedder_tokenizer,
        reranker_loader: Callable[[str], Reranker] | None = None,
        progress: Progress = _quiet,
    ) -> None:
        self.dataset = dataset
        self._encoder = encoder
        self._cache_dir = cache_dir
        self._tokenizer = tokenizer
        self._load_reranker = reranker_loader or _load_reranker
        self._progress = progress
        self._indexes: dict[str, CorpusIndex] = {}
        self._rerankers: dict[str, Reranker] = {}
        self._query_vectors: dict[str, NDArray[np.float32]] | None = None

    def evaluate(self, configs: Sequence[RetrievalConfig]) -> Evaluation:
        results = []
        for config in configs:
            run, seconds = self.run(config)
            metrics = evaluate_run(self.dataset.qrels, run)
            self._progress(
                f"{config.name}: nDCG@10 {metrics.ndcg_at_10:.4f} "
                f"R@100 {metrics.recall_at_100:.4f} MRR@10 {metrics.mrr_at_10:.4f}"
            )
            results.append(ConfigResult(config, metrics, seconds))
        return Evaluation(self.dataset.name, self.dataset.split, self._encoder.name, results)

    def run(self, config: RetrievalConfig) -> tuple[dict[str, list[str]], float]:
        """Each judged query's ranked document ids (at most ``RUN_DEPTH``), and the seconds
        the queries took."""
        index = self._index(config.chunking)
        vectors = self._vectors() if config.mode is not SearchMode.LEXICAL else {}
        reranker = self._reranker(config.reranker)
        started = time.perf_counter()
        run: dict[str, list[str]] = {}
        for query_id, query in self.dataset.queries.items():
            chunk_ids = self._rank_chunks(index, config, query_id, query, vectors)
            best = _best_chunk_per_document(index, chunk_ids)
            documents = list(best)
            if reranker is not None and documents:
                documents = _rerank(reranker, query, documents, best, config.rerank_k)
            run[query_id] = documents[:RUN_DEPTH]
        return run, time.perf_counter() - started

    @staticmethod
    def _rank_chunks(
        index: CorpusIndex,
        config: RetrievalConfig,
        query_id: str,
        query: str,
        vectors: Mapping[str, NDArray[np.float32]],
    ) -> list[str]:
        k = config.candidate_k
        if config.mode is SearchMode.LEXICAL:
            return [i for i, _ in index.lexical(query_id, query, k)]
        dense = index.dense(query_id, vectors[query_id].tolist(), k)
        if config.mode is SearchMode.DENSE:
            return [i for i, _ in dense]
        lexical = index.lexical(query_id, query, k)
        fused = fuse(
            config.fusion,
            lexical,
            dense,
            rrf_k=config.rrf_k,
            dense_weight=config.dense_weight,
        )
        return [hit.id for hit in fused]

    def _index(self, chunking: ChunkingConfig) -> CorpusIndex:
        if chunking.label not in self._indexes:
            self._indexes[chunking.label] = CorpusIndex.open_or_build(
                self.dataset,
                chunking,
                self._encoder,
                self._cache_dir,
                self._tokenizer,
                self._progress,
            )
        return self._indexes[chunking.label]

    def _vectors(self) -> dict[str, NDArray[np.float32]]:
        if self._query_vectors is None:
            ids = list(self.dataset.queries)
            matrix = self._encoder.encode_queries([self.dataset.queries[i] for i in ids])
            self._query_vectors = dict(zip(ids, matrix, strict=True))
        return self._query_vectors

    def _reranker(self, spec: str) -> Reranker | None:
        if spec == NO_RERANKER:
            return None
        if spec not in self._rerankers:
            self._rerankers[spec] = self._load_reranker(spec)
        return self._rerankers[spec]

    def close(self) -> None:
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()


def _load_reranker(spec: str) -> Reranker:
    # Imported on demand: rerankers pull in their own models and clients.
    from ragfleet.rerank import load_reranker

    return load_reranker(spec)


def _best_chunk_per_document(index: CorpusIndex, chunk_ids: Sequence[str]) -> dict[str, Chunk]:
    """Document id -> its best chunk, in the order of each document's best chunk (so a document
    scores as its best chunk does)."""
    best: dict[str, Chunk] = {}
    for chunk in index.chunks(chunk_ids):
        best.setdefault(chunk.source, chunk)
    return best


def _rerank(
    reranker: Reranker,
    query: str,
    documents: list[str],
    best: Mapping[str, Chunk],
    depth: int,
) -> list[str]:
    """The first ``depth`` documents reordered by the reranker's score of their best chunk
    (a stable sort, so ties keep the first-stage order), then the rest unchanged."""
    head = documents[:depth]
    scores = reranker.score(query, [best[d].search_text for d in head])
    order = sorted(range(len(head)), key=lambda i: -scores[i])
    return [head[i] for i in order] + documents[depth:]
