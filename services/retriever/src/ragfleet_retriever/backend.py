"""The interface every index backend implements (embedded, OpenSearch), and the optional
server-side hybrid search a backend may add."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ragfleet.domain import Chunk, Filter
from ragfleet.fusion import FusionMethod
from ragfleet_retriever.domain import IndexStats, ScoredId


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

    def delete(
        self,
        *,
        ids: Sequence[str] | None = None,
        filter: Filter = ...,
        keep_ids: Sequence[str] = (),
    ) -> int:
        """Deletes chunks matching ``filter``, restricted to ``ids`` when given, except those
        in ``keep_ids``, in one step: a concurrent reader sees the kept chunks throughout.
        Returns the number deleted. Refuses (``InvalidInput``) when given neither ids nor a
        filter."""
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


@runtime_checkable
class ServerSideHybrid(Protocol):
    """A backend that can run a hybrid search and fuse it itself, in one round trip."""

    def search_hybrid(
        self,
        query: str,
        vector: Sequence[float],
        k: int,
        candidate_k: int,
        fusion: FusionMethod,
        *,
        dense_weight: float,
        rrf_k: int,
        filter: Filter = ...,
    ) -> list[ScoredId] | None:
        """The ``k`` best chunks by ``fusion`` over ``candidate_k`` candidates from each
        sub-search, both filtered by ``filter``; None when the backend cannot fuse with these
        parameters (the caller then fuses the two sub-searches itself)."""
        ...
