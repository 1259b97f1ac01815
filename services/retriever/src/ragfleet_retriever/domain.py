"""Domain types of the retriever, independent of gRPC and of any backend (the chunk and the
search modes are the shared ones of ``ragfleet.domain``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# OpenSearch refuses document ids longer than 512 bytes.
MAX_ID_BYTES = 512


class ScoredId(NamedTuple):
    """One backend search result: a chunk id and the backend's score (higher is better)."""

    id: str
    score: float


@dataclass(frozen=True, slots=True)
class IndexStats:
    chunks: int
    sources: int
    dimension: int
    backend: str
