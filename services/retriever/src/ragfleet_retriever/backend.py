"""The interface every index backend implements (embedded today, OpenSearch next)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ragfleet_retriever.domain import Chunk, Filter, IndexStats, ScoredId


class IndexBackend(Protocol):
    """A hybrid index. Methods block (call them from a worker thread) and are thread-safe.

    Scores are higher-is-better: BM25 for lexical search, cosine similarity for dense search.
    Filters are applied inside each search, so ``k`` results are returned whenever ``k`` chunks
    match. Arguments are validated by the caller (``Retriever``); backends may assume them sane.
    """

    name: str

    @property
    def dimension(self) -> int:
        """The vector dimension every stored and query vector must have."""
        ...

    def upsert(self, chunks: Sequence[Chunk]) -> int:
        """Inserts or replaces by id; durable on return. Returns the number of distinct ids."""
        ...

    def delete(self, *, ids: Sequence[str] | None = None, filter: Filter = ...) -> int:
        """Deletes chunks matching ``filter``, restricted to ``ids`` when given; returns the
        number deleted. Refuses (``InvalidInput``) when given neither ids nor a filter."""
        ...

    def search_lexical(self, query: str, k: int, filter: Filter = ...) -> list[ScoredId]: ...

    def search_dense(
        self, vector: Sequence[float], k: int, filter: Filter = ...
    ) -> list[ScoredId]: ...

    def fetch(self, ids: Sequence[str]) -> dict[str, Chunk]:
        """Stored chunks by id, without vectors; ids not stored are left out."""
        ...

    def stats(self) -> IndexStats: ...

    def close(self) -> None: ...
