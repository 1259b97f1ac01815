"""Retrieval, the gateway's first use case: embed the query, one search on the retriever (which
owns lexical, dense and hybrid search and their fusion), then an optional rerank.

It knows its upstreams only through the protocols below (``ragfleet.clients`` implements them;
tests pass fakes from ``ragfleet_gateway.fakes``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar

from ragfleet.domain import Chunk, Filter, Hit, InputType, SearchMode, SearchQuery, SearchResult
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import DeadlineExceeded, RagfleetError, Unavailable
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway.domain import (
    RetrievalOptions,
    RetrievalRequest,
    RetrievalResult,
    StageTiming,
)
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.validation import check_question, resolve_retrieval

log = get_logger(__name__)

_T = TypeVar("_T")

# Failures that degrade a request instead of failing it: the upstream is down or too slow.
# Client mistakes (InvalidInput, NotFound) still fail the request.
DEGRADABLE = (Unavailable, DeadlineExceeded)


class Embedder(Protocol):
    async def embed(
        self, texts: Sequence[str], input_type: InputType, deadline: Deadline
    ) -> list[tuple[float, ...]]: ...


class Retriever(Protocol):
    async def search(self, search: SearchQuery, deadline: Deadline) -> SearchResult: ...

    async def upsert(self, chunks: Sequence[Chunk], deadline: Deadline) -> int: ...

    async def delete_source(
        self, tenant: str, source: str, deadline: Deadline, *, keep_ids: Sequence[str] = ()
    ) -> int: ...


class PassageReranker(Protocol):
    async def rerank(
        self, query: str, passages: Sequence[str], deadline: Deadline
    ) -> list[float]: ...


class Stopwatch:
    """Per-stage wall time in milliseconds, in the order the stages finished."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stages: dict[str, float] = {}

    async def time(self, stage: str, work: Awaitable[_T]) -> _T:
        start = time.perf_counter()
        try:
            return await work
        finally:
            self.stages[stage] = (time.perf_counter() - start) * 1000

    def timings(self, *, total: bool = True) -> list[StageTiming]:
        result = [StageTiming(stage, ms) for stage, ms in self.stages.items()]
        if total:
            result.append(StageTiming("total", (time.perf_counter() - self.started) * 1000))
        return result


class Retrieval:
    """The ``top_k`` best chunks for a query."""

    def __init__(
        self,
        settings: GatewaySettings,
        embedder: Embedder,
        retriever: Retriever,
        reranker: PassageReranker | None = None,
    ) -> None:
        """``reranker`` (the embedder's Rerank) rescores the best hits when a request asks for
        it; without one such requests are answered in the retriever's order, marked degraded."""
        self.settings = settings
        self._embedder = embedder
        self._retriever = retriever
        self._reranker = reranker

    async def retrieve(
        self, query: str, request: RetrievalRequest, deadline: Deadline
    ) -> RetrievalResult:
        """Validates ``query`` and ``request`` (``InvalidInput`` naming the field), then
        ``run``."""
        query = check_question(query, self.settings, field="query")
        options = resolve_retrieval(request, self.settings)
        return await self.run(query, options, deadline, Stopwatch())

    async def run(
        self, query: str, options: RetrievalOptions, deadline: Deadline, watch: Stopwatch
    ) -> RetrievalResult:
        """Dense and hybrid search embed the query first; when the embedder fails (down, or no
        answer within ``embed_timeout_s`` or half the time left) the search is lexical and the
        result marked degraded. Fusion options left unset
        are the retriever's defaults.

        With reranking on, the best ``rerank_depth`` hits are reordered by the reranker's
        scores (a stable sort: ties keep the retriever's order) before the cut to ``top_k``;
        hits keep their search ``score``. A reranker failure or timeout (``rerank_timeout_s``)
        never fails the request: the retriever's order is kept and the result marked degraded.
        """
        reasons: list[str] = []
        mode = options.mode
        vector: Sequence[float] = ()
        if mode is not SearchMode.LEXICAL:
            # At most half of what is left, so a hung embedder still leaves time to search.
            limit = min(self.settings.embed_timeout_s, deadline.remaining() / 2)
            embed_deadline = Deadline(min(deadline.expires_at, time.monotonic() + limit))
            try:
                vectors = await watch.time(
                    "embed", self._embedder.embed([query], InputType.QUERY, embed_deadline)
                )
                vector = vectors[0]
            except DEGRADABLE as exc:
                reasons.append(f"query embedding failed, lexical results only: {exc.message}")
                mode = SearchMode.LEXICAL
        search = SearchQuery(
            query=query,
            vector=vector,
            mode=mode,
            top_k=max(options.top_k, options.rerank_depth),
            fusion=options.fusion,
            rrf_k=options.rrf_k,
            dense_weight=options.dense_weight,
            filter=Filter(tenant=options.tenant, equals=options.equals),
        )
        found = await watch.time("search", self._retriever.search(search, deadline))
        hits = found.hits
        if options.rerank_depth:
            hits = await self._rerank(query, hits, options, deadline, watch, reasons)
        return RetrievalResult(
            hits=hits[: options.top_k],
            timings=watch.timings(),
            degraded_reasons=reasons,
            best_dense_score=found.best_dense_score,
        )

    async def _rerank(
        self,
        query: str,
        hits: list[Hit],
        options: RetrievalOptions,
        deadline: Deadline,
        watch: Stopwatch,
        reasons: list[str],
    ) -> list[Hit]:
        head, tail = hits[: options.rerank_depth], hits[options.rerank_depth :]
        if not head:
            return hits
        if self._reranker is None:
            reasons.append("reranking skipped, search order kept: no reranker is configured")
            return hits
        limit = self.settings.rerank_timeout_s
        stage_deadline = Deadline(min(deadline.expires_at, time.monotonic() + limit))
        passages = [h.chunk.search_text for h in head]
        work = self._reranker.rerank(query, passages, stage_deadline)
        try:
            scores = await watch.time("rerank", asyncio.wait_for(work, timeout=limit))
        except TimeoutError:
            reasons.append(f"reranking took over {limit:g} s, search order kept")
            return hits
        except RagfleetError as exc:
            log.warning("rerank_failed", error=exc.message)
            reasons.append(f"reranking failed, search order kept: {exc.message}")
            return hits
        order = sorted(range(len(head)), key=lambda i: -scores[i])
        return [head[i] for i in order] + tail
