"""Domain types of the retriever, independent of gRPC and of any backend (the chunk and the
search modes are the shared ones of ``ragfleet.domain``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

# Limits every backend can honour. Metadata keys become field names in OpenSearch
# (``metadata.<key>``), so a dot (an object path there) or an empty key is refused everywhere.
METADATA_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_METADATA_VALUE_CHARS = 2048
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
