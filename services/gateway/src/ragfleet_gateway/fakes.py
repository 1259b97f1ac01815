"""Deterministic in-memory upstreams with the clients' interfaces, for tests and demos.

``FakeEmbedder`` hashes words into a small vector space, ``FakeRetriever`` keeps chunks in a dict
(lexical: word overlap; dense: dot product; hybrid: both fused), ``FakeGenerator`` streams a
scripted answer. Each can be told to fail or to be slow, and records what it was asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from ragfleet.domain import (
    Chunk,
    GenerationDone,
    GenerationEvent,
    GenerationParams,
    Hit,
    InputType,
    SearchMode,
    SearchQuery,
    SearchResult,
    TokenEvent,
    Usage,
)
from ragfleet.fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_RRF_K, FusedHit, FusionMethod, fuse
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import DeadlineExceeded, RagfleetError

DIMENSION = 16
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def fake_vector(text: str) -> tuple[float, ...]:
    """A unit vector: each word adds 1 to a hash-chosen dimension."""
    values = [0.0] * DIMENSION
    for word in words(text):
        values[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIMENSION] += 1.0
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)


@dataclass
class FakeEmbedder:
    delay_s: float = 0.0
    error: RagfleetError | None = None
    calls: list[tuple[list[str], InputType]] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)

    async def embed(
        self, texts: Sequence[str], input_type: InputType, deadline: Deadline
    ) -> list[tuple[float, ...]]:
        self.calls.append((list(texts), input_type))
        if self.delay_s:
            # Like a gRPC call, it gives up when the deadline passes.
            if self.delay_s >= deadline.remaining():
                await asyncio.sleep(max(deadline.remaining(), 0))
                raise DeadlineExceeded("embedder did not answer within the deadline")
            await asyncio.sleep(self.delay_s)
        self.finished_at.append(time.perf_counter())
        if self.error is not None:
            raise self.error
        return [fake_vector(t) for t in texts]


@dataclass
class FakeRetriever:
    """Lexical: words shared with the query; dense: dot product; hybrid: the two fused by
    ``ragfleet.fusion`` with the retriever's defaults, as the real retriever does."""

    chunks: dict[str, Chunk] = field(default_factory=dict)
    error: RagfleetError | None = None
    searches: list[tuple[SearchQuery, float]] = field(default_factory=list)

    async def search(self, search: SearchQuery, deadline: Deadline) -> SearchResult:
        self.searches.append((search, time.perf_counter()))
        if self.error is not None:
            raise self.error
        mode = search.mode or SearchMode.HYBRID
        top_k = search.top_k or 10
        depth = max(search.candidate_k or 50, top_k)
        candidates = [
            c for c in self.chunks.values() if search.filter.matches(c.tenant, c.source, c.metadata)
        ]
        lexical = self._lexical(search.query, candidates)[:depth]
        dense = self._dense(search.vector, candidates)[:depth]
        if mode is SearchMode.LEXICAL:
            fused = [FusedHit(c.id, s, i, 0) for i, (s, c) in enumerate(lexical, 1)]
        elif mode is SearchMode.DENSE:
            fused = [FusedHit(c.id, s, 0, i) for i, (s, c) in enumerate(dense, 1)]
        else:
            fused = fuse(
                search.fusion or FusionMethod.WEIGHTED,
                [(c.id, s) for s, c in lexical],
                [(c.id, s) for s, c in dense],
                rrf_k=search.rrf_k or DEFAULT_RRF_K,
                dense_weight=(
                    DEFAULT_DENSE_WEIGHT if search.dense_weight is None else search.dense_weight
                ),
            )
        hits = [
            Hit(self.chunks[f.id], f.score, f.lexical_rank, f.dense_rank) for f in fused[:top_k]
        ]
        best = dense[0][0] if dense and mode is not SearchMode.LEXICAL else None
        return SearchResult(hits, mode, best)

    @staticmethod
    def _lexical(query: str, candidates: list[Chunk]) -> list[tuple[float, Chunk]]:
        terms = set(words(query))
        scored = [(float(len(terms & set(words(c.text)))), c) for c in candidates]
        return sorted(((s, c) for s, c in scored if s > 0), key=lambda sc: (-sc[0], sc[1].id))

    @staticmethod
    def _dense(vector: Sequence[float], candidates: list[Chunk]) -> list[tuple[float, Chunk]]:
        if not vector:
            return []
        scored = [
            (sum(a * b for a, b in zip(vector, c.vector, strict=False)), c) for c in candidates
        ]
        return sorted(scored, key=lambda sc: (-sc[0], sc[1].id))

    async def upsert(self, chunks: Sequence[Chunk], deadline: Deadline) -> int:
        if self.error is not None:
            raise self.error
        for chunk in chunks:
            self.chunks[chunk.id] = chunk
        return len(chunks)

    async def delete_source(
        self, tenant: str, source: str, deadline: Deadline, *, keep_ids: Sequence[str] = ()
    ) -> int:
        if self.error is not None:
            raise self.error
        kept = set(keep_ids)
        doomed = [
            i
            for i, c in self.chunks.items()
            if c.source == source and (not tenant or c.tenant == tenant) and i not in kept
        ]
        for i in doomed:
            del self.chunks[i]
        return len(doomed)


@dataclass
class FakeGenerator:
    """Streams ``tokens``; ``error`` is raised after ``fail_after`` tokens (0: before any)."""

    tokens: Sequence[str] = ("The answer ", "is here ", "[1].")
    model: str = "fake-model"
    delay_s: float = 0.0
    error: RagfleetError | None = None
    fail_after: int = 0
    requests: list[GenerationParams] = field(default_factory=list)

    async def generate(
        self, params: GenerationParams, deadline: Deadline, reserve_s: float = 0.0
    ) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(params)
        for i, token in enumerate(self.tokens):
            if self.error is not None and i == self.fail_after:
                raise self.error
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield TokenEvent(token)
        if self.error is not None and self.fail_after >= len(self.tokens):
            raise self.error
        yield GenerationDone(
            model=params.model or self.model,
            finish_reason="stop",
            usage=Usage(prompt_tokens=42, completion_tokens=len(self.tokens)),
        )
