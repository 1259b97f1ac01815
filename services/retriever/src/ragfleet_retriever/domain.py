"""Domain types of the retriever, independent of gRPC and of any backend."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

# Limits every backend can honour. Metadata keys become field names in OpenSearch
# (``metadata.<key>``), so a dot (an object path there) or an empty key is refused everywhere.
METADATA_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_METADATA_VALUE_CHARS = 2048
# OpenSearch refuses document ids longer than 512 bytes.
MAX_ID_BYTES = 512


class SearchMode(StrEnum):
    LEXICAL = "lexical"
    DENSE = "dense"
    HYBRID = "hybrid"


@dataclass(frozen=True, slots=True)
class Chunk:
    """A unit of indexed text. ``vector`` is empty for a text-only chunk (lexical search only)."""

    id: str
    text: str
    source: str = ""
    title: str = ""
    section: str = ""
    tenant: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    vector: tuple[float, ...] = ()

    @property
    def lexical_text(self) -> str:
        """What BM25 reads: the title, the section path and the text. The section path is left
        out when the text already starts with it (``ragfleet.chunking`` puts it there), so its
        words are not counted twice."""
        section = "" if self.text.startswith(self.section) else self.section
        return "\n".join(part for part in (self.title, section, self.text) if part)


@dataclass(frozen=True, slots=True)
class Filter:
    """Conjunction of conditions; an empty field matches everything.

    ``tenant`` and ``source`` must equal the chunk's; every ``equals`` pair must be in the
    chunk's metadata. ``equals`` keys are metadata keys (``METADATA_KEY_PATTERN``); there is
    no other field to filter on.
    """

    tenant: str = ""
    source: str = ""
    equals: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not (self.tenant or self.source or self.equals)

    def matches(self, tenant: str, source: str, metadata: Mapping[str, str]) -> bool:
        return (
            (not self.tenant or tenant == self.tenant)
            and (not self.source or source == self.source)
            and all(metadata.get(key) == value for key, value in self.equals.items())
        )


MATCH_ALL = Filter()


class ScoredId(NamedTuple):
    """One backend search result: a chunk id and the backend's score (higher is better)."""

    id: str
    score: float


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result. ``score`` is fused for hybrid search, the backend's score otherwise;
    ranks are 1-based within each sub-search, 0 when absent from it. A hybrid search fused by
    the backend itself (``ServerSideHybrid``) reports only the fused score: both ranks 0."""

    chunk: Chunk
    score: float
    lexical_rank: int
    dense_rank: int


@dataclass(frozen=True, slots=True)
class IndexStats:
    chunks: int
    sources: int
    dimension: int
    backend: str
