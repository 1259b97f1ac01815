"""The JSON bodies the OpenSearch backend sends, as pure functions (no I/O), so each one can be
checked without a cluster. Every body follows the OpenSearch 2.x/3.x REST API documentation:
index creation with a ``knn_vector`` field, the bulk API, the ``match``, ``knn`` and ``hybrid``
queries, ``delete_by_query`` and search pipelines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ragfleet.domain import Chunk, Filter
from ragfleet.fusion import FusionMethod
from ragfleet_retriever.settings import KnnEngine, SpaceType

JsonObject = dict[str, Any]

# Field names in the index. ``body`` is the BM25 field, ``Chunk.search_text``, as the
# embedded backend does (on SciFact one concatenated field scored 0.684 nDCG@10 against 0.666
# for separate fields; DESIGN.md section 4).
BODY = "body"
VECTOR = "vector"
METADATA = "metadata"
# Metadata is stored in ``_source`` but not indexed (no field per key, so user metadata can
# neither exceed index.mapping.total_fields.limit nor clash on a key's type); filters match
# ``key=value`` terms of this one keyword field instead. Keys cannot hold "=".
METADATA_TERMS = "metadata_terms"

# Cardinality counts are exact (up to hash collisions) below this many distinct values and
# approximate above; 40,000 is the largest threshold OpenSearch accepts.
SOURCES_PRECISION_THRESHOLD = 40_000
# Ids per must_not clause of a delete that keeps chunks: far below max_terms_count (65,536).
KEEP_IDS_PER_CLAUSE = 10_000


class Version(NamedTuple):
    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


# Efficient (in-graph) filtering of a faiss k-NN query arrived in 2.9; the hybrid query and the
# normalization-processor in 2.10; the score-ranker-processor (RRF) in 2.19, which reads its rank
# constant from ``combination.parameters`` on 2.19-3.0 and from ``combination`` from 3.1
# (neural-search #1370, #1418) and ranks per shard until 3.5 (global ranking: neural-search
# #1718). A k-NN query takes ``method_parameters.ef_search`` from 2.16.
MINIMUM_VERSION = Version(2, 9)
HYBRID_MINIMUM_VERSION = Version(2, 10)
QUERY_EF_SEARCH_VERSION = Version(2, 16)
RRF_MINIMUM_VERSION = Version(2, 19)
RRF_TOP_LEVEL_RANK_CONSTANT_VERSION = Version(3, 1)
RRF_GLOBAL_RANKING_VERSION = Version(3, 5)
# The lucene engine took at most 1,024 dimensions until k-NN 2.12 (16,000 since).
LUCENE_OLD_MAX_DIMENSION = 1024
LUCENE_LARGE_DIMENSION_VERSION = Version(2, 12)
ENGINE_SPACE_MINIMUM_VERSION: Mapping[tuple[KnnEngine, SpaceType], Version] = {
    (KnnEngine.FAISS, SpaceType.INNERPRODUCT): Version(2, 9),
    (KnnEngine.FAISS, SpaceType.COSINESIMIL): Version(2, 19),
    (KnnEngine.LUCENE, SpaceType.COSINESIMIL): Version(2, 9),
    (KnnEngine.LUCENE, SpaceType.INNERPRODUCT): Version(2, 13),
}


def parse_version(number: str) -> Version:
    """``"2.19.1"`` or ``"3.0.0-SNAPSHOT"`` -> ``Version``; raises ``ValueError`` otherwise."""
    parts = number.split("-", 1)[0].split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts[:3]):
        raise ValueError(f"not an OpenSearch version number: {number!r}")
    major, minor, *rest = (int(part) for part in parts[:3])
    return Version(major, minor, rest[0] if rest else 0)


@dataclass(frozen=True, slots=True)
class IndexLayout:
    """How the chunk index is laid out: its name, shards and the vector field's method."""

    index: str
    dimension: int
    engine: KnnEngine = KnnEngine.FAISS
    space_type: SpaceType = SpaceType.COSINESIMIL
    hnsw_m: int = 16
    hnsw_ef_construction: int = 128
    hnsw_ef_search: int = 100
    shards: int = 1
    replicas: int = 1

    def __post_init__(self) -> None:
        if not self.index:
            raise ValueError("index: must not be empty")
        if self.dimension < 1:
            raise ValueError(f"dimension: must be at least 1, got {self.dimension}")


def index_body(layout: IndexLayout) -> JsonObject:
    """Settings and mappings of a new chunk index.

    The mapping is strict: only the fields below are accepted, and no value is ever guessed to
    be a date or a number. ``metadata`` is kept in ``_source`` but not indexed; its pairs are
    indexed as ``key=value`` keywords of ``metadata_terms``, so any number of keys costs one
    field and filters stay exact matches. (``flat_object`` would also hold the field count, but
    its documentation rules out filtering by subfields.) ``body`` is left out of ``_source``:
    it is derived from title, section and text. ``ef_search`` is a parameter of the faiss
    method (the index setting is read by nmslib only); queries also send it on 2.16+.
    """
    return {
        "settings": {
            "index": {
                "number_of_shards": layout.shards,
                "number_of_replicas": layout.replicas,
                "knn": True,
            }
        },
        "mappings": {
            "dynamic": "strict",
            "date_detection": False,
            "numeric_detection": False,
            "_source": {"excludes": [BODY]},
            "properties": {
                "id": {"type": "keyword"},
                "source": {"type": "keyword"},
                "tenant": {"type": "keyword"},
                "title": {"type": "text", "index": False},
                "section": {"type": "text", "index": False},
                "text": {"type": "text", "index": False},
                BODY: {"type": "text", "analyzer": "english"},
                METADATA: {"type": "object", "enabled": False},
                METADATA_TERMS: {"type": "keyword"},
                VECTOR: vector_mapping(layout),
            },
        },
    }


def vector_mapping(layout: IndexLayout) -> JsonObject:
    parameters: JsonObject = {"m": layout.hnsw_m, "ef_construction": layout.hnsw_ef_construction}
    if layout.engine is KnnEngine.FAISS:
        parameters["ef_search"] = layout.hnsw_ef_search
    return {
        "type": "knn_vector",
        "dimension": layout.dimension,
        "method": {
            "name": "hnsw",
            "engine": layout.engine.value,
            "space_type": layout.space_type.value,
            "parameters": parameters,
        },
    }


def mapping_mismatches(layout: IndexLayout, mappings: Mapping[str, Any]) -> list[str]:
    """How an existing index's mappings (the ``mappings`` object of GET ``<index>/_mapping``)
    differ from what ``layout`` needs; empty when the index is usable as it is."""
    properties = mappings.get("properties", {})
    problems: list[str] = []
    vector = properties.get(VECTOR)
    if not isinstance(vector, Mapping) or vector.get("type") != "knn_vector":
        problems.append(f"field {VECTOR!r} is not a knn_vector")
    else:
        if vector.get("dimension") != layout.dimension:
            problems.append(
                f"{VECTOR}.dimension is {vector.get('dimension')}, configured {layout.dimension}"
            )
        method = vector.get("method", {})
        # Mappings written without an explicit engine or space report the cluster defaults.
        space = method.get("space_type", vector.get("space_type"))
        if space is not None and space != layout.space_type.value:
            problems.append(f"{VECTOR}.space_type is {space}, configured {layout.space_type.value}")
        engine = method.get("engine")
        if engine is not None and engine != layout.engine.value:
            problems.append(f"{VECTOR}.engine is {engine}, configured {layout.engine.value}")
    body = properties.get(BODY)
    if not isinstance(body, Mapping) or body.get("type") != "text":
        problems.append(f"field {BODY!r} is not a text field")
    for name in ("id", "source", "tenant", METADATA_TERMS):
        field = properties.get(name)
        if not isinstance(field, Mapping) or field.get("type") != "keyword":
            problems.append(f"field {name!r} is not a keyword field")
    if METADATA_TERMS not in properties:
        problems.append(
            f"the index predates field {METADATA_TERMS!r} (metadata filters): reindex into a "
            "new index (RAGFLEET_RETRIEVER_OPENSEARCH_INDEX) with `ragfleet ingest`"
        )
    return problems


def unit(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1 (the caller guarantees it is not all zeros)."""
    norm = math.sqrt(math.fsum(value * value for value in vector))
    return [value / norm for value in vector]


# Inner product of unit vectors is their cosine similarity, so vectors are normalised before
# they are stored or searched in that space; cosinesimil normalises on its own.
VECTOR_FOR_SPACE: Mapping[SpaceType, Callable[[Sequence[float]], list[float]]] = {
    SpaceType.COSINESIMIL: list,
    SpaceType.INNERPRODUCT: unit,
}


def _cosine_from_cosinesimil(score: float) -> float:
    # score = (2 - d) / 2 with d = 1 - cos.
    return 2.0 * score - 1.0


def _cosine_from_innerproduct(score: float) -> float:
    # Both engines: score = ip + 1 when ip > 0, 1 / (1 - ip) otherwise; ip = cos of unit vectors.
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


COSINE_FROM_SCORE: Mapping[SpaceType, Callable[[float], float]] = {
    SpaceType.COSINESIMIL: _cosine_from_cosinesimil,
    SpaceType.INNERPRODUCT: _cosine_from_innerproduct,
}


def document(chunk: Chunk, space_type: SpaceType) -> JsonObject:
    """The stored document of ``chunk``; a chunk without a vector has no vector field."""
    doc: JsonObject = {
        "id": chunk.id,
        "source": chunk.source,
        "tenant": chunk.tenant,
        "title": chunk.title,
        "section": chunk.section,
        "text": chunk.text,
        BODY: chunk.search_text,
        METADATA: dict(chunk.metadata),
        METADATA_TERMS: [
            metadata_term(key, value) for key, value in sorted(chunk.metadata.items())
        ],
    }
    if chunk.vector:
        doc[VECTOR] = VECTOR_FOR_SPACE[space_type](chunk.vector)
    return doc


def chunk_from_source(chunk_id: str, source: Mapping[str, Any]) -> Chunk:
    """The chunk stored as ``source`` (fetched without its vector)."""
    return Chunk(
        id=chunk_id,
        text=source.get("text", ""),
        source=source.get("source", ""),
        title=source.get("title", ""),
        section=source.get("section", ""),
        tenant=source.get("tenant", ""),
        metadata=dict(source.get(METADATA) or {}),
    )


def bulk_index_actions(index: str, chunks: Iterable[Chunk], space: SpaceType) -> list[JsonObject]:
    """Bulk API lines that index (insert or replace) each chunk under ``_id`` = its id."""
    lines: list[JsonObject] = []
    for chunk in chunks:
        lines.append({"index": {"_index": index, "_id": chunk.id}})
        lines.append(document(chunk, space))
    return lines


def bulk_delete_actions(index: str, ids: Iterable[str]) -> list[JsonObject]:
    return [{"delete": {"_index": index, "_id": chunk_id}} for chunk_id in ids]


# OpenSearch's bulk-indexing guide advises 5-15 MB per request; http.max_content_length
# (100 MB by default) answers 413 above it.
BULK_MAX_BYTES = 10 * 1024 * 1024


def bulk_requests(actions: Sequence[JsonObject], max_bytes: int) -> list[list[JsonObject]]:
    """``actions`` (bulk lines: an ``index`` action is followed by its document) cut into
    requests of at most ``max_bytes`` of NDJSON, in order, an action never apart from its
    document. An action larger than ``max_bytes`` on its own goes alone."""
    requests: list[list[JsonObject]] = []
    current: list[JsonObject] = []
    size = 0
    i = 0
    while i < len(actions):
        width = 2 if "index" in actions[i] else 1
        group = list(actions[i : i + width])
        group_bytes = sum(len(json.dumps(line, ensure_ascii=False).encode()) + 1 for line in group)
        if current and size + group_bytes > max_bytes:
            requests.append(current)
            current, size = [], 0
        current += group
        size += group_bytes
        i += width
    if current:
        requests.append(current)
    return requests


def metadata_term(key: str, value: str) -> str:
    return f"{key}={value}"


def filter_clauses(filter: Filter) -> list[JsonObject]:
    """Exact-match ``term`` clauses for a filter; empty for a filter that matches everything."""
    clauses: list[JsonObject] = [
        {"term": {name: value}}
        for name, value, exact in (
            ("tenant", filter.tenant, filter.exact_tenant),
            ("source", filter.source, False),
        )
        if value or exact
    ]
    clauses += [
        {"term": {METADATA_TERMS: metadata_term(key, value)}}
        for key, value in sorted(filter.equals.items())
    ]
    return clauses


def _lexical_clause(query: str, filter: Filter) -> JsonObject:
    # The filter goes in the bool's filter context: it restricts matches without scoring.
    return {
        "bool": {
            "must": [{"match": {BODY: {"query": query}}}],
            "filter": filter_clauses(filter),
        }
    }


def _knn_clause(
    vector: Sequence[float], k: int, filter: Filter, space: SpaceType, ef_search: int | None
) -> JsonObject:
    # The filter inside the knn clause is efficient filtering: applied while the graph is
    # searched (or by an exact scan of the filtered set), so k hits come back whenever k match.
    clause: JsonObject = {VECTOR: VECTOR_FOR_SPACE[space](vector), "k": k}
    if ef_search is not None:
        clause["method_parameters"] = {"ef_search": max(ef_search, k)}
    clauses = filter_clauses(filter)
    if clauses:
        clause["filter"] = {"bool": {"filter": clauses}}
    return {"knn": {VECTOR: clause}}


def lexical_search(query: str, k: int, filter: Filter) -> JsonObject:
    return {
        "size": k,
        "_source": False,
        "track_total_hits": False,
        "query": _lexical_clause(query, filter),
    }


def dense_search(
    vector: Sequence[float],
    k: int,
    filter: Filter,
    space: SpaceType,
    ef_search: int | None = None,
) -> JsonObject:
    """``ef_search`` (None on clusters before 2.16) is sent per query, raised to ``k``."""
    return {
        "size": k,
        "_source": False,
        "track_total_hits": False,
        "query": _knn_clause(vector, k, filter, space, ef_search),
    }


def hybrid_search(
    query: str,
    vector: Sequence[float],
    size: int,
    candidate_k: int,
    filter: Filter,
    space: SpaceType,
    ef_search: int | None = None,
) -> JsonObject:
    """A ``hybrid`` query: lexical first, dense second (the order the pipelines' weights
    follow). Each sub-query carries the filter itself, which works on every version that has
    the hybrid query (the hybrid-level ``filter`` parameter is newer)."""
    return {
        "size": size,
        "_source": False,
        "track_total_hits": False,
        "query": {
            "hybrid": {
                "queries": [
                    _lexical_clause(query, filter),
                    _knn_clause(vector, candidate_k, filter, space, ef_search),
                ]
            }
        },
    }


def delete_by_query(
    ids: Sequence[str] | None, filter: Filter, keep_ids: Sequence[str] = ()
) -> JsonObject:
    """Matches the chunks to delete: those matching ``filter``, among ``ids`` when given, and
    not among ``keep_ids`` (``must_not`` ids clauses of at most ``KEEP_IDS_PER_CLAUSE`` values,
    well under the index's ``max_terms_count``, 65,536 by default)."""
    clauses = filter_clauses(filter)
    if ids is not None:
        clauses.append({"ids": {"values": list(ids)}})
    query: JsonObject = {"filter": clauses}
    if keep_ids:
        kept = list(dict.fromkeys(keep_ids))
        query["must_not"] = [
            {"ids": {"values": kept[start : start + KEEP_IDS_PER_CLAUSE]}}
            for start in range(0, len(kept), KEEP_IDS_PER_CLAUSE)
        ]
    return {"query": {"bool": query}}


def stats_search() -> JsonObject:
    """Counts chunks exactly and distinct sources with a cardinality aggregation."""
    return {
        "size": 0,
        "track_total_hits": True,
        "aggs": {
            "sources": {
                "cardinality": {
                    "field": "source",
                    "precision_threshold": SOURCES_PRECISION_THRESHOLD,
                }
            }
        },
    }


def _normalization_pipeline(dense_weight: float, _rrf_k: int, _version: Version) -> JsonObject:
    # min_max + weighted arithmetic mean is WeightedFusion (ragfleet.fusion); the weights follow
    # the hybrid query's order (lexical, dense) and must sum to 1.
    return {
        "description": "ragfleet hybrid search: min-max normalisation, weighted mean",
        "phase_results_processors": [
            {
                "normalization-processor": {
                    "normalization": {"technique": "min_max"},
                    "combination": {
                        "technique": "arithmetic_mean",
                        "parameters": {"weights": [1.0 - dense_weight, dense_weight]},
                    },
                }
            }
        ],
    }


def _rrf_pipeline(_dense_weight: float, rrf_k: int, version: Version) -> JsonObject:
    combination: JsonObject = {"technique": "rrf"}
    if version >= RRF_TOP_LEVEL_RANK_CONSTANT_VERSION:
        combination["rank_constant"] = rrf_k
    else:
        combination["parameters"] = {"rank_constant": rrf_k}
    return {
        "description": "ragfleet hybrid search: reciprocal rank fusion",
        "phase_results_processors": [{"score-ranker-processor": {"combination": combination}}],
    }


PIPELINE_BODY: Mapping[FusionMethod, Callable[[float, int, Version], JsonObject]] = {
    FusionMethod.WEIGHTED: _normalization_pipeline,
    FusionMethod.RRF: _rrf_pipeline,
}

PIPELINE_MINIMUM_VERSION: Mapping[FusionMethod, Version] = {
    FusionMethod.WEIGHTED: HYBRID_MINIMUM_VERSION,
    FusionMethod.RRF: RRF_MINIMUM_VERSION,
}


def pipeline_name(index: str, method: FusionMethod) -> str:
    """One pipeline per index and method: pipelines are cluster-wide, so two deployments with
    different fusion defaults on one cluster do not overwrite each other's."""
    return f"{index}-hybrid-{method.value}"
