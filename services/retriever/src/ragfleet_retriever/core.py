"""The retriever's core: validates requests against the documented limits, runs lexical, dense or
hybrid search on an ``IndexBackend`` and fuses with ``ragfleet.fusion``. No gRPC here.

Backend calls block (tantivy, usearch and SQLite, or HTTP to OpenSearch), so each request runs
them in one worker thread and the event loop stays free. A backend that implements
``ServerSideHybrid`` may fuse a hybrid search itself; the core fuses when it declines.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ragfleet.domain import (
    Chunk,
    Filter,
    Hit,
    SearchMode,
    SearchQuery,
    SearchResult,
    check_metadata,
)
from ragfleet.fusion import FusedHit, check_options, make_fuser
from ragfleet.runtime.errors import InvalidInput, Unavailable
from ragfleet_retriever.backend import IndexBackend, ServerSideHybrid
from ragfleet_retriever.domain import (
    MAX_ID_BYTES,
    IndexStats,
)
from ragfleet_retriever.settings import RetrieverSettings


def _check_vector(name: str, vector: Sequence[float], dimension: int) -> None:
    if len(vector) != dimension:
        raise InvalidInput(f"{name}: has {len(vector)} values; the index dimension is {dimension}")
    values = np.asarray(vector, dtype=np.float64)
    if not np.isfinite(values).all():
        raise InvalidInput(f"{name}: every value must be finite")
    if not values.any():
        raise InvalidInput(f"{name}: must not be all zeros (cosine similarity is undefined)")


def _check_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be between {low} and {high}, got {value}")
    return value


class Retriever:
    """Search, upsert, delete and stats over the backend that ``open_backend`` opens in
    ``load``; calls before ``load`` has finished raise ``Unavailable``."""

    def __init__(
        self, settings: RetrieverSettings, open_backend: Callable[[], IndexBackend]
    ) -> None:
        self._settings = settings
        self._open_backend = open_backend
        self._backend: IndexBackend | None = None
        self._sub_searches = ThreadPoolExecutor(thread_name_prefix="dense-search")

    async def load(self) -> None:
        """Opens the backend (this may rebuild a derived index from the source of truth)."""
        self._backend = await asyncio.to_thread(self._open_backend)

    async def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            await asyncio.to_thread(backend.close)
        self._sub_searches.shutdown(wait=False)

    @property
    def backend(self) -> IndexBackend:
        if self._backend is None:
            raise Unavailable("the retriever's index is not open yet")
        return self._backend

    async def search(self, request: SearchQuery) -> SearchResult:
        """Validates ``request`` (``InvalidInput`` naming the field and limit) and searches."""
        backend = self.backend
        settings = self._settings
        mode = request.mode or SearchMode.HYBRID
        top_k = _check_range(
            "top_k",
            settings.default_top_k if request.top_k is None else request.top_k,
            1,
            settings.max_top_k,
        )
        candidate_k = _check_range(
            "candidate_k",
            settings.default_candidate_k if request.candidate_k is None else request.candidate_k,
            1,
            settings.max_candidate_k,
        )
        dense_weight = (
            settings.default_dense_weight if request.dense_weight is None else request.dense_weight
        )
        fusion = request.fusion or settings.default_fusion
        rrf_k = settings.default_rrf_k if request.rrf_k is None else request.rrf_k
        try:
            check_options(rrf_k, dense_weight)
        except InvalidInput as exc:
            raise InvalidInput(f"fusion.{exc.message}") from None
        fuser = make_fuser(fusion, rrf_k=rrf_k, dense_weight=dense_weight)
        check_metadata("filter.equals", request.filter.equals)
        if mode in (SearchMode.LEXICAL, SearchMode.HYBRID):
            if not request.query.strip():
                raise InvalidInput(f"query: must not be empty in {mode} mode")
            if len(request.query) > settings.max_query_chars:
                raise InvalidInput(
                    f"query: at most {settings.max_query_chars} characters, "
                    f"got {len(request.query)}"
                )
        if mode in (SearchMode.DENSE, SearchMode.HYBRID):
            if not request.vector:
                raise InvalidInput(f"query_vector: required in {mode} mode")
            _check_vector("query_vector", request.vector, backend.dimension)
        sub_k = max(candidate_k, top_k)

        def run() -> SearchResult:
            filter = request.filter
            best_dense: float | None = None
            if mode is SearchMode.LEXICAL:
                found = backend.search_lexical(request.query, top_k, filter)
                fused = [FusedHit(h.id, h.score, i, 0) for i, h in enumerate(found, 1)]
            elif mode is SearchMode.DENSE:
                found = backend.search_dense(request.vector, top_k, filter)
                fused = [FusedHit(h.id, h.score, 0, i) for i, h in enumerate(found, 1)]
                best_dense = max((h.score for h in found), default=None)
            else:
                served = (
                    backend.search_hybrid(
                        request.query,
                        request.vector,
                        top_k,
                        sub_k,
                        fusion,
                        dense_weight=dense_weight,
                        rrf_k=rrf_k,
                        filter=filter,
                    )
                    if isinstance(backend, ServerSideHybrid)
                    else None
                )
                if served is not None:
                    fused = [FusedHit(h.id, h.score, 0, 0) for h in served]
                else:
                    # The two sub-searches run side by side (tantivy and usearch release the GIL).
                    pending = self._sub_searches.submit(
                        contextvars.copy_context().run,
                        backend.search_dense,
                        request.vector,
                        sub_k,
                        filter,
                    )
                    lexical = backend.search_lexical(request.query, sub_k, filter)
                    dense = pending.result()
                    best_dense = max((h.score for h in dense), default=None)
                    fused = fuser(lexical, dense, top_k)
            chunks = backend.fetch([hit.id for hit in fused])
            # A chunk deleted between the search and the fetch is left out, not reported empty.
            hits = [
                Hit(chunks[hit.id], hit.score, hit.lexical_rank, hit.dense_rank)
                for hit in fused
                if hit.id in chunks
            ]
            return SearchResult(hits, mode, best_dense)

        return await asyncio.to_thread(run)

    async def upsert(self, chunks: Sequence[Chunk]) -> int:
        """Validates and upserts ``chunks`` (at most ``max_upsert_chunks``); durable on return.
        Returns the number of distinct ids upserted."""
        backend = self.backend
        limit = self._settings.max_upsert_chunks
        if len(chunks) > limit:
            raise InvalidInput(f"chunks: at most {limit} per request, got {len(chunks)}")
        for index, chunk in enumerate(chunks):
            if not chunk.id:
                raise InvalidInput(f"chunks[{index}].id: must not be empty")
            if len(chunk.id.encode()) > MAX_ID_BYTES:
                raise InvalidInput(
                    f"chunks[{index}].id: at most {MAX_ID_BYTES} bytes (UTF-8), "
                    f"got {len(chunk.id.encode())}"
                )
            if not chunk.text.strip():
                raise InvalidInput(f"chunks[{index}].text: must not be empty")
            if chunk.vector:
                _check_vector(f"chunks[{index}].vector", chunk.vector, backend.dimension)
            check_metadata(f"chunks[{index}].metadata", chunk.metadata)
        if not chunks:
            return 0
        return await asyncio.to_thread(backend.upsert, chunks)

    async def delete(self, ids: Sequence[str], filter: Filter, keep_ids: Sequence[str] = ()) -> int:
        """Deletes by ``ids`` (at most ``max_delete_ids``), by ``filter``, or the chunks among
        ``ids`` that match ``filter`` when both are given; with a filter, chunks whose id is in
        ``keep_ids`` (at most ``max_keep_ids``) are kept. Returns the number deleted."""
        backend = self.backend
        settings = self._settings
        if not ids and filter.is_empty:
            raise InvalidInput("ids, filter: give chunk ids or a non-empty filter or source")
        if keep_ids and filter.is_empty:
            raise InvalidInput("keep_ids: only with a non-empty filter or source")
        for name, values, limit in (
            ("ids", ids, settings.max_delete_ids),
            ("keep_ids", keep_ids, settings.max_keep_ids),
        ):
            if len(values) > limit:
                raise InvalidInput(f"{name}: at most {limit} per request, got {len(values)}")
            for index, chunk_id in enumerate(values):
                if not chunk_id:
                    raise InvalidInput(f"{name}[{index}]: must not be empty")
        check_metadata("filter.equals", filter.equals)
        return await asyncio.to_thread(
            backend.delete, ids=list(ids) or None, filter=filter, keep_ids=list(keep_ids)
        )

    async def stats(self) -> IndexStats:
        return await asyncio.to_thread(self.backend.stats)
