"""Deterministic in-memory upstreams with the clients' interfaces, for tests and demos.

``FakeEmbedder`` hashes words into a small vector space, ``FakeRetriever`` keeps chunks in a dict
(lexical: word overlap; dense: dot product), ``FakeGenerator`` streams a scripted answer. Each
can be told to fail or to be slow, and records what it was asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field

from ragfleet.runtime.clients import Deadline
from ragfleet.runtime.errors import RagfleetError
from ragfleet_gateway.domain import (
    Chunk,
    GenerationDone,
    GenerationEvent,
    GenerationParams,
    Hit,
    InputType,
    SearchMode,
    TokenEvent,
    Usage,
)

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
            await asyncio.sleep(self.delay_s)
        self.finished_at.append(time.perf_counter())
        if self.error is not None:
            raise self.error
        return [fake_vector(t) for t in texts]


@dataclass
class FakeRetriever:
    chunks: dict[str, Chunk] = field(default_factory=dict)
    error: RagfleetError | None = None
    lexical_error: RagfleetError | None = None
    searches: list[tuple[SearchMode, float]] = field(default_factory=list)

    async def search(
        self,
        mode: SearchMode,
        top_k: int,
        deadline: Deadline,
        *,
        query: str = "",
        vector: Sequence[float] = (),
        tenant: str = "",
        equals: Mapping[str, str] | None = None,
    ) -> list[Hit]:
        self.searches.append((mode, time.perf_counter()))
        if self.error is not None:
            raise self.error
        if mode is SearchMode.LEXICAL and self.lexical_error is not None:
            raise self.lexical_error
        candidates = [
            c
            for c in self.chunks.values()
            if (not tenant or c.tenant == tenant)
            and all(c.metadata.get(k) == v for k, v in (equals or {}).items())
        ]
        if mode is SearchMode.LEXICAL:
            terms = set(words(query))
            scored = [(float(len(terms & set(words(c.text)))), c) for c in candidates]
            scored = [(s, c) for s, c in scored if s > 0]
        else:
            scored = [
                (sum(a * b for a, b in zip(vector, c.vector, strict=False)), c) for c in candidates
            ]
        scored.sort(key=lambda sc: (-sc[0], sc[1].id))
        return [
            Hit(
                chunk=c,
                score=s,
                lexical_rank=rank if mode is SearchMode.LEXICAL else 0,
                dense_rank=rank if mode is SearchMode.DENSE else 0,
            )
            for rank, (s, c) in enumerate(scored[:top_k], start=1)
        ]

    async def upsert(self, chunks: Sequence[Chunk], deadline: Deadline) -> int:
        if self.error is not None:
            raise self.error
        for chunk in chunks:
            self.chunks[chunk.id] = chunk
        return len(chunks)

    async def delete_source(self, tenant: str, source: str, deadline: Deadline) -> int:
        if self.error is not None:
            raise self.error
        doomed = [
            i
            for i, c in self.chunks.items()
            if c.source == source and (not tenant or c.tenant == tenant)
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
