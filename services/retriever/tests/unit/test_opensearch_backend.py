"""The OpenSearch backend without a cluster: the real opensearch-py client talks to a recording
fake connection, so these tests see the exact HTTP requests (method, path, parameters, JSON or
NDJSON body) the backend sends. Error mapping is also checked with the real client against a
closed local port and against a socket that never answers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from opensearchpy import OpenSearch
from opensearchpy.connection.base import Connection
from pydantic import ValidationError

from ragfleet.domain import Chunk, Filter
from ragfleet.fusion import FusionMethod
from ragfleet.runtime.channels import REQUEST_DEADLINE, Deadline
from ragfleet.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    RagfleetError,
    ResourceExhausted,
    Unavailable,
)
from ragfleet_retriever.backend import IndexBackend, ServerSideHybrid
from ragfleet_retriever.opensearch import OpenSearchBackend, bodies
from ragfleet_retriever.opensearch.bodies import IndexLayout, Version
from ragfleet_retriever.opensearch.client import address_of
from ragfleet_retriever.server import open_backend
from ragfleet_retriever.settings import (
    HybridExecution,
    KnnEngine,
    RefreshPolicy,
    RetrieverSettings,
    SpaceType,
)

pytestmark = pytest.mark.unit

INDEX = "chunks"
ADDRESS = "http://fake.invalid:9200"
LAYOUT = IndexLayout(index=INDEX, dimension=3)


@dataclass
class Sent:
    method: str
    path: str
    params: dict[str, str]
    body: Any


Reply = tuple[int, Any]


@dataclass
class FakeCluster:
    """Answers the REST calls the backend makes, keeping just enough state (index, mapping,
    pipelines, documents) to be consistent, and records every request."""

    version: str = "2.19.1"
    distribution: str = "opensearch"
    mappings: dict[str, Any] | None = None
    pipelines: dict[str, Any] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)
    hits: list[tuple[str, float]] = field(default_factory=list)
    deleted_by_query: int = 0
    item_errors: dict[str, tuple[int, str]] = field(default_factory=dict)
    overrides: dict[tuple[str, str], Reply] = field(default_factory=dict)
    create_race: bool = False
    sent: list[Sent] = field(default_factory=list)

    def handle(self, method: str, path: str, params: dict[str, str], raw: bytes | None) -> Reply:
        body = self._parse(raw)
        self.sent.append(Sent(method, path, params, body))
        if (method, path) in self.overrides:
            return self.overrides[(method, path)]
        parts = path.strip("/").split("/")
        if path == "/":
            return 200, {"version": {"distribution": self.distribution, "number": self.version}}
        if parts[:2] == ["_search", "pipeline"]:
            return self._pipeline(method, parts[2], body)
        if parts == ["_bulk"]:
            return self._bulk(body)
        if len(parts) == 1:
            return self._index(method, body)
        handler: Mapping[str, Callable[[Any], Reply]] = {
            "_mapping": lambda _: (200, {INDEX: {"mappings": self.mappings}}),
            "_search": self._search,
            "_mget": lambda b: (200, {"docs": [self._doc(i) for i in b["ids"]]}),
            "_delete_by_query": lambda _: (200, {"deleted": self.deleted_by_query, "failures": []}),
            "_settings": lambda _: (
                200,
                {INDEX: {"settings": {"index.number_of_replicas": "1"}}}
                if method == "GET"
                else {"acknowledged": True},
            ),
            "_refresh": lambda _: (200, {"_shards": {}}),
        }
        return handler[parts[1]](body)

    @staticmethod
    def _parse(raw: bytes | None) -> Any:
        if not raw:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        lines = [line for line in text.split("\n") if line]
        if len(lines) > 1:
            return [json.loads(line) for line in lines]
        return json.loads(lines[0])

    def _index(self, method: str, body: Any) -> Reply:
        if method == "HEAD":
            return (200 if self.mappings is not None else 404), None
        if self.create_race:
            self.mappings = bodies.index_body(LAYOUT)["mappings"]
            return 400, {
                "error": {
                    "root_cause": [{"type": "resource_already_exists_exception", "reason": "x"}],
                    "type": "resource_already_exists_exception",
                    "reason": "index [chunks] already exists",
                },
                "status": 400,
            }
        self.mappings = body["mappings"]
        return 200, {"acknowledged": True}

    def _pipeline(self, method: str, name: str, body: Any) -> Reply:
        if method == "GET":
            if name in self.pipelines:
                return 200, {name: self.pipelines[name]}
            return 404, {}
        self.pipelines[name] = body
        return 200, {"acknowledged": True}

    def _bulk(self, lines: list[Any]) -> Reply:
        items, errors = [], False
        iterator = iter(lines)
        for action in iterator:
            kind, meta = next(iter(action.items()))
            chunk_id = meta["_id"]
            if kind == "index":
                document = next(iterator)
                if chunk_id in self.item_errors:
                    status, error = self.item_errors[chunk_id]
                    errors = True
                    items.append(
                        {kind: {"_id": chunk_id, "status": status, "error": {"type": error}}}
                    )
                    continue
                self.documents[chunk_id] = document
                items.append({kind: {"_id": chunk_id, "status": 201, "result": "created"}})
            else:
                found = self.documents.pop(chunk_id, None) is not None
                items.append(
                    {
                        kind: {
                            "_id": chunk_id,
                            "status": 200 if found else 404,
                            "result": "deleted" if found else "not_found",
                        }
                    }
                )
        return 200, {"errors": errors, "items": items}

    def _search(self, body: Any) -> Reply:
        if "aggs" in body:
            sources = {doc["source"] for doc in self.documents.values()}
            return 200, {
                "hits": {"total": {"value": len(self.documents)}, "hits": []},
                "aggregations": {"sources": {"value": len(sources)}},
            }
        return 200, {"hits": {"hits": [{"_id": i, "_score": s} for i, s in self.hits]}}

    def _doc(self, chunk_id: str) -> Any:
        if chunk_id not in self.documents:
            return {"_id": chunk_id, "found": False}
        source = {k: v for k, v in self.documents[chunk_id].items() if k != "vector"}
        return {"_id": chunk_id, "found": True, "_source": source}

    def last(self, suffix: str) -> Sent:
        return next(s for s in reversed(self.sent) if s.path.endswith(suffix))

    def paths(self) -> list[str]:
        return [f"{s.method} {s.path}" for s in self.sent]


class FakeConnection(Connection):
    """An opensearch-py connection that hands each request to a ``FakeCluster``."""

    def __init__(self, cluster: FakeCluster, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster

    def perform_request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
        ignore: Any = (),
        headers: Any = None,
    ) -> tuple[int, dict[str, str], str]:
        status, payload = self.cluster.handle(
            method, url, {k: str(v) for k, v in (params or {}).items()}, body
        )
        raw = json.dumps(payload) if payload is not None else ""
        if not 200 <= status < 300 and status not in ignore:
            self._raise_error(status, raw, "application/json")
        return status, {"content-type": "application/json"}, raw

    def close(self) -> None:
        pass


def client_for(cluster: FakeCluster) -> OpenSearch:
    return OpenSearch(
        hosts=[{"host": "fake.invalid", "port": 9200}],
        connection_class=FakeConnection,
        cluster=cluster,
        max_retries=0,
    )


def open_on(
    cluster: FakeCluster, layout: IndexLayout = LAYOUT, **options: Any
) -> OpenSearchBackend:
    return OpenSearchBackend.open(client_for(cluster), layout, address=ADDRESS, **options)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def backend(cluster: FakeCluster) -> Iterator[OpenSearchBackend]:
    opened = open_on(cluster)
    cluster.sent.clear()
    yield opened
    opened.close()


CHUNK = Chunk(
    id="a",
    text="Drain calls.",
    source="ops.md",
    title="Ops",
    section="Shutdown",
    tenant="acme",
    metadata={"lang": "en"},
    vector=(3.0, 0.0, 4.0),
)


# --- start-up -------------------------------------------------------------------------------


def test_start_up_creates_the_index_with_bm25_and_knn_fields(cluster: FakeCluster) -> None:
    open_on(cluster, IndexLayout(index=INDEX, dimension=384, hnsw_m=24, replicas=2))
    assert cluster.paths() == ["GET /", f"HEAD /{INDEX}", f"PUT /{INDEX}"]
    created = cluster.last(f"/{INDEX}").body
    # ef_search is no index setting: nmslib alone reads index.knn.algo_param.ef_search.
    assert created["settings"]["index"] == {
        "number_of_shards": 1,
        "number_of_replicas": 2,
        "knn": True,
    }
    mappings = created["mappings"]
    assert mappings["dynamic"] == "strict"
    # A metadata value like "2024-05-01" must not make a date field (date detection runs
    # before dynamic templates) that a later non-date value would fail.
    assert mappings["date_detection"] is False and mappings["numeric_detection"] is False
    properties = mappings["properties"]
    assert properties["vector"] == {
        "type": "knn_vector",
        "dimension": 384,
        "method": {
            "name": "hnsw",
            "engine": "faiss",
            "space_type": "cosinesimil",
            "parameters": {"m": 24, "ef_construction": 128, "ef_search": 100},
        },
    }
    assert properties["body"] == {"type": "text", "analyzer": "english"}
    assert {name: properties[name]["type"] for name in ("id", "source", "tenant")} == {
        "id": "keyword",
        "source": "keyword",
        "tenant": "keyword",
    }
    # Metadata keys never become fields (no total_fields.limit to reach, no type clashes):
    # the object is stored, not indexed; filters match key=value terms of one keyword field.
    assert properties["metadata"] == {"type": "object", "enabled": False}
    assert properties["metadata_terms"] == {"type": "keyword"}
    assert "dynamic_templates" not in mappings
    assert mappings["_source"] == {"excludes": ["body"]}


def test_lucene_engine_has_no_ef_search_in_its_mapping() -> None:
    body = bodies.index_body(IndexLayout(index=INDEX, dimension=3, engine=KnnEngine.LUCENE))
    assert "knn.algo_param.ef_search" not in body["settings"]["index"]
    method = body["mappings"]["properties"]["vector"]["method"]
    assert method["engine"] == "lucene" and "ef_search" not in method["parameters"]


def test_an_index_from_before_metadata_terms_is_refused_with_the_fix() -> None:
    old = bodies.index_body(LAYOUT)["mappings"]
    del old["properties"]["metadata_terms"]
    problems = bodies.mapping_mismatches(LAYOUT, old)
    assert any("reindex" in p and "metadata_terms" in p for p in problems)


def test_start_up_on_an_existing_index_checks_its_mapping_and_writes_nothing(
    cluster: FakeCluster,
) -> None:
    cluster.mappings = bodies.index_body(LAYOUT)["mappings"]
    open_on(cluster)
    assert cluster.paths() == ["GET /", f"HEAD /{INDEX}", f"GET /{INDEX}/_mapping"]


def test_an_index_of_another_dimension_is_refused_clearly(cluster: FakeCluster) -> None:
    cluster.mappings = bodies.index_body(IndexLayout(index=INDEX, dimension=768))["mappings"]
    with pytest.raises(FailedPrecondition) as raised:
        open_on(cluster)
    message = raised.value.message
    assert "vector.dimension is 768, configured 3" in message
    assert ADDRESS in message
    assert "RAGFLEET_RETRIEVER_OPENSEARCH_INDEX" in message


def test_an_index_of_another_space_is_refused(cluster: FakeCluster) -> None:
    other = IndexLayout(index=INDEX, dimension=3, space_type=SpaceType.INNERPRODUCT)
    cluster.mappings = bodies.index_body(other)["mappings"]
    with pytest.raises(FailedPrecondition, match="space_type is innerproduct"):
        open_on(cluster)


def test_an_index_created_by_another_replica_meanwhile_is_accepted(cluster: FakeCluster) -> None:
    cluster.create_race = True
    backend = open_on(cluster)
    assert cluster.paths()[-1] == f"GET /{INDEX}/_mapping"
    assert backend.dimension == 3


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("2.19.1", Version(2, 19, 1)),
        ("3.0.0-SNAPSHOT", Version(3, 0, 0)),
        ("2.9", Version(2, 9, 0)),
    ],
)
def test_version_numbers_are_parsed(number: str, expected: Version) -> None:
    assert bodies.parse_version(number) == expected


@pytest.mark.parametrize("number", ["", "x.y", "7"])
def test_garbage_versions_are_refused(number: str) -> None:
    with pytest.raises(ValueError):
        bodies.parse_version(number)


@pytest.mark.parametrize(
    ("version", "layout", "hybrid", "needed"),
    [
        ("2.8.0", LAYOUT, HybridExecution.CLIENT, "2.9.0"),
        ("2.17.0", LAYOUT, HybridExecution.CLIENT, "2.19.0"),
        (
            "2.12.0",
            IndexLayout(
                index=INDEX, dimension=3, engine=KnnEngine.LUCENE, space_type=SpaceType.INNERPRODUCT
            ),
            HybridExecution.CLIENT,
            "2.13.0",
        ),
        (
            "2.9.0",
            IndexLayout(index=INDEX, dimension=3, space_type=SpaceType.INNERPRODUCT),
            HybridExecution.SERVER,
            "2.10.0",
        ),
        (
            "2.11.0",
            IndexLayout(index=INDEX, dimension=1536, engine=KnnEngine.LUCENE),
            HybridExecution.CLIENT,
            "2.12.0",
        ),
    ],
)
def test_a_cluster_too_old_for_the_configuration_is_refused(
    cluster: FakeCluster, version: str, layout: IndexLayout, hybrid: HybridExecution, needed: str
) -> None:
    cluster.version = version
    with pytest.raises(FailedPrecondition, match=f"OpenSearch {version} is too old.*{needed}"):
        open_on(cluster, layout, hybrid=hybrid)
    assert cluster.paths() == ["GET /"]


def test_older_clusters_work_with_innerproduct(cluster: FakeCluster) -> None:
    cluster.version = "2.11.0"
    layout = IndexLayout(index=INDEX, dimension=3, space_type=SpaceType.INNERPRODUCT)
    assert open_on(cluster, layout).version == Version(2, 11, 0)


def test_something_else_than_opensearch_is_refused(cluster: FakeCluster) -> None:
    cluster.distribution = "elasticsearch"
    with pytest.raises(FailedPrecondition, match="not an OpenSearch cluster"):
        open_on(cluster)


# --- search pipelines -----------------------------------------------------------------------


def test_server_side_hybrid_creates_both_pipelines_on_2_19(cluster: FakeCluster) -> None:
    open_on(cluster, hybrid=HybridExecution.SERVER, dense_weight=0.3, rrf_k=40)
    assert cluster.pipelines[f"{INDEX}-hybrid-weighted"] == {
        "description": "ragfleet hybrid search: min-max normalisation, weighted mean",
        "phase_results_processors": [
            {
                "normalization-processor": {
                    "normalization": {"technique": "min_max"},
                    "combination": {
                        "technique": "arithmetic_mean",
                        "parameters": {"weights": [0.7, 0.3]},
                    },
                }
            }
        ],
    }
    # neural-search 2.19 and 3.0 read the rank constant under combination.parameters.
    assert cluster.pipelines[f"{INDEX}-hybrid-rrf"] == {
        "description": "ragfleet hybrid search: reciprocal rank fusion",
        "phase_results_processors": [
            {
                "score-ranker-processor": {
                    "combination": {"technique": "rrf", "parameters": {"rank_constant": 40}}
                }
            }
        ],
    }


@pytest.mark.parametrize(
    ("version", "combination"),
    [
        ("2.19.0", {"technique": "rrf", "parameters": {"rank_constant": 40}}),
        ("3.0.0", {"technique": "rrf", "parameters": {"rank_constant": 40}}),
        ("3.1.0", {"technique": "rrf", "rank_constant": 40}),
        ("3.5.0", {"technique": "rrf", "rank_constant": 40}),
    ],
)
def test_the_rrf_rank_constant_goes_where_the_clusters_version_reads_it(
    cluster: FakeCluster, version: str, combination: dict[str, object]
) -> None:
    cluster.version = version
    open_on(cluster, hybrid=HybridExecution.SERVER, rrf_k=40)
    processors = cluster.pipelines[f"{INDEX}-hybrid-rrf"]["phase_results_processors"]
    assert processors == [{"score-ranker-processor": {"combination": combination}}]


@pytest.mark.parametrize(("version", "served"), [("3.4.0", False), ("3.5.0", True)])
def test_rrf_on_several_shards_stays_in_our_code_until_global_ranking(
    cluster: FakeCluster, version: str, served: bool
) -> None:
    """Before 3.5 the score-ranker ranks each shard's hits apart: our fusion ranks globally."""
    cluster.version = version
    open_on(
        cluster,
        IndexLayout(index=INDEX, dimension=3, shards=3),
        hybrid=HybridExecution.SERVER,
    )
    assert (f"{INDEX}-hybrid-rrf" in cluster.pipelines) is served
    assert f"{INDEX}-hybrid-weighted" in cluster.pipelines


def test_rrf_stays_in_our_code_before_2_19(cluster: FakeCluster) -> None:
    cluster.version = "2.18.0"
    layout = IndexLayout(index=INDEX, dimension=3, space_type=SpaceType.INNERPRODUCT)
    backend = open_on(cluster, layout, hybrid=HybridExecution.SERVER)
    assert list(cluster.pipelines) == [f"{INDEX}-hybrid-weighted"]
    cluster.sent.clear()
    common = {"dense_weight": 0.5, "rrf_k": 60}
    assert backend.search_hybrid("q", (1.0, 0.0, 0.0), 5, 50, FusionMethod.RRF, **common) is None
    assert cluster.sent == []


def test_pipelines_are_written_only_when_they_differ(cluster: FakeCluster) -> None:
    open_on(cluster, hybrid=HybridExecution.SERVER)
    cluster.sent.clear()
    open_on(cluster, hybrid=HybridExecution.SERVER)
    assert not [s for s in cluster.sent if s.method == "PUT"]
    open_on(cluster, hybrid=HybridExecution.SERVER, dense_weight=0.25)
    assert [s.path for s in cluster.sent if s.method == "PUT"] == [
        f"/_search/pipeline/{INDEX}-hybrid-weighted"
    ]


def test_a_cluster_without_neural_search_is_reported(cluster: FakeCluster) -> None:
    cluster.overrides[("PUT", f"/_search/pipeline/{INDEX}-hybrid-weighted")] = (
        400,
        {"error": {"type": "illegal_argument_exception", "reason": "Invalid processor type"}},
    )
    with pytest.raises(FailedPrecondition, match="neural-search plugin"):
        open_on(cluster, hybrid=HybridExecution.SERVER)


def test_client_side_hybrid_creates_no_pipeline(cluster: FakeCluster) -> None:
    backend = open_on(cluster)
    assert cluster.pipelines == {}
    common = {"dense_weight": 0.5, "rrf_k": 60}
    assert (
        backend.search_hybrid("q", (1.0, 0.0, 0.0), 5, 5, FusionMethod.WEIGHTED, **common) is None
    )


# --- writes ---------------------------------------------------------------------------------


def test_upsert_sends_one_bulk_request_keyed_by_chunk_id(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    text_only = Chunk(id="b", text="no vector")
    older = Chunk(id="a", text="older version", vector=(1.0, 0.0, 0.0))
    assert backend.upsert([older, CHUNK, text_only]) == 2
    bulk = cluster.last("/_bulk")
    assert bulk.params == {"refresh": "wait_for"}
    assert bulk.body == [
        {"index": {"_index": INDEX, "_id": "a"}},
        {
            "id": "a",
            "source": "ops.md",
            "tenant": "acme",
            "title": "Ops",
            "section": "Shutdown",
            "text": "Drain calls.",
            "body": "Ops\nShutdown\nDrain calls.",
            "metadata": {"lang": "en"},
            "metadata_terms": ["lang=en"],
            "vector": [3.0, 0.0, 4.0],
        },
        {"index": {"_index": INDEX, "_id": "b"}},
        {
            "id": "b",
            "source": "",
            "tenant": "",
            "title": "",
            "section": "",
            "text": "no vector",
            "body": "no vector",
            "metadata": {},
            "metadata_terms": [],
        },
    ]


def test_innerproduct_stores_and_searches_unit_vectors(cluster: FakeCluster) -> None:
    layout = IndexLayout(index=INDEX, dimension=3, space_type=SpaceType.INNERPRODUCT)
    backend = open_on(cluster, layout)
    backend.upsert([CHUNK])
    assert cluster.documents["a"]["vector"] == pytest.approx([0.6, 0.0, 0.8])
    cluster.hits = [("a", 1.5), ("b", 0.8)]
    hits = backend.search_dense((0.0, 0.0, 2.0), 2)
    assert cluster.last("/_search").body["query"]["knn"]["vector"]["vector"] == [0.0, 0.0, 1.0]
    # Score = ip + 1 above 1 and 1 / (1 - ip) below: back to the cosine.
    assert [(h.id, h.score) for h in hits] == [
        ("a", pytest.approx(0.5)),
        ("b", pytest.approx(-0.25)),
    ]


def test_refresh_false_policy_skips_the_wait(cluster: FakeCluster) -> None:
    backend = open_on(cluster, refresh=RefreshPolicy.FALSE)
    backend.upsert([CHUNK])
    assert cluster.last("/_bulk").params == {"refresh": "false"}


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, ResourceExhausted), (400, InvalidInput), (503, Unavailable)],
)
def test_refused_bulk_items_are_reported_with_their_ids(
    backend: OpenSearchBackend, cluster: FakeCluster, status: int, error: type[Exception]
) -> None:
    cluster.item_errors["a"] = (status, "mapper_parsing_exception")
    with pytest.raises(error) as raised:
        backend.upsert([CHUNK, Chunk(id="b", text="fine")])
    assert isinstance(raised.value, RagfleetError)
    assert "refused 1 of 2 bulk items (a: mapper_parsing_exception" in raised.value.message


def test_large_upserts_are_split_into_bulk_requests_by_bytes(cluster: FakeCluster) -> None:
    backend = open_on(cluster, bulk_max_bytes=2_000)
    cluster.sent.clear()
    chunks = [Chunk(id=f"c{i}", text="word " * 60, vector=(1.0, 0.0, 0.0)) for i in range(12)]
    assert backend.upsert(chunks) == 12
    requests = [s.body for s in cluster.sent if s.path == "/_bulk"]
    assert len(requests) > 1
    assert [line["index"]["_id"] for body in requests for line in body[::2]] == [
        c.id for c in chunks
    ]
    for body in requests:
        assert sum(len(json.dumps(line).encode()) + 1 for line in body) <= 2_000


def test_bulk_requests_keep_an_action_with_its_document_and_send_a_giant_alone() -> None:
    small = [{"index": {"_id": "a"}}, {"text": "x"}, {"delete": {"_id": "b"}}]
    giant = [{"index": {"_id": "g"}}, {"text": "y" * 5_000}]
    requests = bodies.bulk_requests([*small, *giant, *small], max_bytes=1_000)
    assert requests == [small, giant, small]


def test_delete_by_ids_uses_bulk_deletes_and_counts_the_found(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    backend.upsert([CHUNK])
    assert backend.delete(ids=["a", "missing", "a"]) == 1
    bulk = cluster.last("/_bulk")
    assert bulk.body == [
        {"delete": {"_index": INDEX, "_id": "a"}},
        {"delete": {"_index": INDEX, "_id": "missing"}},
    ]
    assert backend.delete(ids=[]) == 0


def test_delete_by_filter_uses_delete_by_query(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    cluster.deleted_by_query = 2
    deleted = backend.delete(ids=["a", "b"], filter=Filter(tenant="acme", equals={"lang": "en"}))
    assert deleted == 2
    sent = cluster.last("/_delete_by_query")
    assert sent.path == f"/{INDEX}/_delete_by_query"
    assert sent.params == {"refresh": "true", "conflicts": "proceed"}
    assert sent.body == {
        "query": {
            "bool": {
                "filter": [
                    {"term": {"tenant": "acme"}},
                    {"term": {"metadata_terms": "lang=en"}},
                    {"ids": {"values": ["a", "b"]}},
                ]
            }
        }
    }
    assert not [s for s in cluster.sent if s.path.endswith("/_refresh")]


def test_delete_by_filter_keeps_the_keep_ids_with_must_not_ids_clauses(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    keep = [f"k{i}" for i in range(bodies.KEEP_IDS_PER_CLAUSE + 1)]
    backend.delete(filter=Filter(tenant="acme", source="ops.md", exact_tenant=True), keep_ids=keep)
    sent = cluster.last("/_delete_by_query")
    assert sent.params == {"refresh": "true", "conflicts": "proceed"}
    assert sent.body == {
        "query": {
            "bool": {
                "filter": [{"term": {"tenant": "acme"}}, {"term": {"source": "ops.md"}}],
                "must_not": [
                    {"ids": {"values": keep[: bodies.KEEP_IDS_PER_CLAUSE]}},
                    {"ids": {"values": keep[bodies.KEEP_IDS_PER_CLAUSE :]}},
                ],
            }
        }
    }


def test_delete_by_ids_leaves_the_keep_ids_out_of_the_bulk(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    backend.upsert([CHUNK])
    cluster.sent.clear()
    assert backend.delete(ids=["b", "a"], keep_ids=["a", "b"]) == 0
    assert cluster.sent == []
    assert backend.delete(ids=["a", "b", "c"], keep_ids=["b"]) == 1
    assert cluster.last("/_bulk").body == [
        {"delete": {"_index": INDEX, "_id": "a"}},
        {"delete": {"_index": INDEX, "_id": "c"}},
    ]


def test_delete_by_filter_refreshes_first_after_unrefreshed_writes(cluster: FakeCluster) -> None:
    backend = open_on(cluster, refresh=RefreshPolicy.FALSE)
    backend.upsert([CHUNK])
    cluster.sent.clear()
    backend.delete(filter=Filter(source="ops.md"))
    assert cluster.paths() == [f"POST /{INDEX}/_refresh", f"POST /{INDEX}/_delete_by_query"]


def test_delete_refuses_to_delete_everything(backend: OpenSearchBackend) -> None:
    with pytest.raises(InvalidInput):
        backend.delete(filter=Filter())


def test_bulk_load_applies_and_restores_the_documented_settings(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    with backend.bulk_load():
        with backend.bulk_load():
            backend.upsert([CHUNK])
        backend.upsert([CHUNK])
    settings_writes = [s.body for s in cluster.sent if s.path.endswith("/_settings")]
    assert settings_writes == [
        None,  # the GET of the current settings
        {"index": {"refresh_interval": "-1", "number_of_replicas": 0}},
        {"index.refresh_interval": None, "index.number_of_replicas": "1"},
    ]
    assert [s.params for s in cluster.sent if s.path == "/_bulk"] == [{"refresh": "false"}] * 2
    assert cluster.paths()[-1] == f"POST /{INDEX}/_refresh"
    backend.upsert([CHUNK])
    assert cluster.last("/_bulk").params == {"refresh": "wait_for"}


def test_bulk_load_restores_the_settings_when_the_load_fails(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    with pytest.raises(RuntimeError), backend.bulk_load():
        raise RuntimeError("the load broke")
    assert cluster.last("/_settings").body == {
        "index.refresh_interval": None,
        "index.number_of_replicas": "1",
    }


# --- reads ----------------------------------------------------------------------------------


def test_lexical_search_is_a_match_query_with_filters_in_filter_context(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    cluster.hits = [("a", 7.5), ("b", 2.0)]
    filter = Filter(tenant="acme", source="ops.md", equals={"lang": "en", "kind": "runbook"})
    hits = backend.search_lexical("drain calls", 2, filter)
    assert [(h.id, h.score) for h in hits] == [("a", 7.5), ("b", 2.0)]
    assert cluster.last("/_search").body == {
        "size": 2,
        "_source": False,
        "track_total_hits": False,
        "query": {
            "bool": {
                "must": [{"match": {"body": {"query": "drain calls"}}}],
                "filter": [
                    {"term": {"tenant": "acme"}},
                    {"term": {"source": "ops.md"}},
                    {"term": {"metadata_terms": "kind=runbook"}},
                    {"term": {"metadata_terms": "lang=en"}},
                ],
            }
        },
    }


def test_dense_search_filters_inside_the_knn_clause(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    cluster.hits = [("a", 0.9)]
    hits = backend.search_dense((1.0, 2.0, 2.0), 1, Filter(tenant="acme"))
    # cosinesimil: score = (1 + cos) / 2.
    assert hits[0].score == pytest.approx(0.8)
    assert cluster.last("/_search").body == {
        "size": 1,
        "_source": False,
        "track_total_hits": False,
        "query": {
            "knn": {
                "vector": {
                    "vector": [1.0, 2.0, 2.0],
                    "k": 1,
                    "method_parameters": {"ef_search": 100},
                    "filter": {"bool": {"filter": [{"term": {"tenant": "acme"}}]}},
                }
            }
        },
    }
    backend.search_dense((1.0, 2.0, 2.0), 4)
    assert "filter" not in cluster.last("/_search").body["query"]["knn"]["vector"]


@pytest.mark.parametrize(
    ("version", "k", "sent"), [("2.15.0", 5, None), ("2.16.0", 5, 100), ("3.0.0", 300, 300)]
)
def test_ef_search_is_sent_per_query_where_the_cluster_reads_it(
    cluster: FakeCluster, version: str, k: int, sent: int | None
) -> None:
    """From 2.16 both engines take method_parameters.ef_search (at least k); before, faiss
    reads the mapping's method parameter."""
    cluster.version = version
    layout = IndexLayout(index=INDEX, dimension=3, space_type=SpaceType.INNERPRODUCT)
    open_on(cluster, layout).search_dense((1.0, 2.0, 2.0), k)
    clause = cluster.last("/_search").body["query"]["knn"]["vector"]
    assert clause.get("method_parameters") == (None if sent is None else {"ef_search": sent})


def test_server_side_hybrid_runs_one_hybrid_query_through_the_pipeline(
    cluster: FakeCluster,
) -> None:
    backend = open_on(cluster, hybrid=HybridExecution.SERVER, dense_weight=0.4, rrf_k=60)
    assert isinstance(backend, ServerSideHybrid)
    cluster.hits = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    hits = backend.search_hybrid(
        "drain",
        (1.0, 0.0, 0.0),
        2,
        20,
        FusionMethod.WEIGHTED,
        dense_weight=0.4,
        rrf_k=60,
        filter=Filter(tenant="acme"),
    )
    assert hits is not None
    assert [h.id for h in hits] == ["a", "b"]
    sent = cluster.last("/_search")
    assert sent.params == {"search_pipeline": f"{INDEX}-hybrid-weighted"}
    assert sent.body["size"] == 20
    lexical, dense = sent.body["query"]["hybrid"]["queries"]
    assert lexical["bool"]["filter"] == [{"term": {"tenant": "acme"}}]
    assert dense["knn"]["vector"]["k"] == 20
    assert dense["knn"]["vector"]["filter"] == {"bool": {"filter": [{"term": {"tenant": "acme"}}]}}
    rrf = backend.search_hybrid(
        "drain", (1.0, 0.0, 0.0), 2, 20, FusionMethod.RRF, dense_weight=0.4, rrf_k=60
    )
    assert rrf is not None
    assert cluster.last("/_search").params == {"search_pipeline": f"{INDEX}-hybrid-rrf"}


def test_server_side_hybrid_leaves_other_parameters_to_our_fusion(cluster: FakeCluster) -> None:
    backend = open_on(cluster, hybrid=HybridExecution.SERVER, dense_weight=0.4, rrf_k=60)
    cluster.sent.clear()
    vector = (1.0, 0.0, 0.0)
    assert (
        backend.search_hybrid("q", vector, 2, 20, FusionMethod.WEIGHTED, dense_weight=0.5, rrf_k=60)
        is None
    )
    assert (
        backend.search_hybrid("q", vector, 2, 20, FusionMethod.RRF, dense_weight=0.4, rrf_k=10)
        is None
    )
    assert cluster.sent == []


def test_fetch_uses_mget_without_vectors(backend: OpenSearchBackend, cluster: FakeCluster) -> None:
    backend.upsert([CHUNK])
    found = backend.fetch(["a", "zz", "a"])
    sent = cluster.last("/_mget")
    assert sent.body == {"ids": ["a", "zz"]}
    assert sent.params == {"_source_excludes": "vector"}
    assert found["a"] == Chunk(
        id="a",
        text="Drain calls.",
        source="ops.md",
        title="Ops",
        section="Shutdown",
        tenant="acme",
        metadata={"lang": "en"},
    )
    assert list(found) == ["a"]


def test_calls_for_an_rpc_get_what_is_left_of_its_deadline(cluster: FakeCluster) -> None:
    backend = open_on(cluster, timeout_s=5.0)
    backend.upsert([CHUNK])
    timeouts: list[float] = []
    original = FakeConnection.perform_request

    def recording(self: FakeConnection, *args: Any, **kwargs: Any) -> Any:
        timeouts.append(kwargs.get("timeout") or 0.0)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FakeConnection, "perform_request", recording)
        token = REQUEST_DEADLINE.set(Deadline.after(0.5))
        try:
            backend.search_lexical("drain", 3)
            backend.fetch(["a"])
            backend.upsert([CHUNK])
        finally:
            REQUEST_DEADLINE.reset(token)
        backend.search_lexical("drain", 3)
    assert all(0 < t <= 0.5 for t in timeouts[:3]) and len(timeouts) == 4
    assert timeouts[3] == 0.0  # outside an RPC: the client's own timeout
    token = REQUEST_DEADLINE.set(Deadline.after(-1))
    try:
        with pytest.raises(DeadlineExceeded, match="lexical search on OpenSearch"):
            backend.search_lexical("drain", 3)
    finally:
        REQUEST_DEADLINE.reset(token)


def test_read_from_primary_sends_every_read_to_the_primaries_first(cluster: FakeCluster) -> None:
    """Segment replication: refresh=wait_for makes a write searchable on the primary only."""
    backend = open_on(cluster, read_from_primary=True)
    backend.upsert([CHUNK])
    backend.search_lexical("drain", 3)
    assert cluster.last("/_search").params == {"preference": "_primary_first"}
    backend.fetch(["a"])
    assert cluster.last("/_mget").params == {
        "_source_excludes": "vector",
        "preference": "_primary_first",
    }


def test_stats_count_chunks_and_distinct_sources(
    backend: OpenSearchBackend, cluster: FakeCluster
) -> None:
    backend.upsert([CHUNK, Chunk(id="b", text="x", source="ops.md"), Chunk(id="c", text="y")])
    stats = backend.stats()
    assert (stats.chunks, stats.sources, stats.dimension, stats.backend) == (3, 2, 3, "opensearch")
    assert cluster.last("/_search").body == {
        "size": 0,
        "track_total_hits": True,
        "aggs": {"sources": {"cardinality": {"field": "source", "precision_threshold": 40000}}},
    }


def test_the_backend_satisfies_the_protocol(backend: OpenSearchBackend) -> None:
    typed: IndexBackend = backend
    assert typed.name == "opensearch"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (401, FailedPrecondition, "RAGFLEET_RETRIEVER_OPENSEARCH_USERNAME"),
        (403, FailedPrecondition, "permissions"),
        (429, ResourceExhausted, "429"),
        (503, Unavailable, "503"),
        (400, RagfleetError, "parsing_exception: bad query"),
    ],
)
def test_http_errors_become_domain_errors_naming_the_cluster(
    backend: OpenSearchBackend,
    cluster: FakeCluster,
    status: int,
    error: type[RagfleetError],
    words: str,
) -> None:
    cluster.overrides[("POST", f"/{INDEX}/_search")] = (
        status,
        {"error": {"root_cause": [{"type": "parsing_exception", "reason": "bad query"}]}},
    )
    with pytest.raises(error) as raised:
        backend.search_lexical("x", 1)
    assert type(raised.value) is error
    assert ADDRESS in raised.value.message
    assert words in raised.value.message


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_start_up_against_a_closed_port_fails_fast_naming_the_address() -> None:
    port = free_port()
    settings = RetrieverSettings(
        backend="opensearch",
        opensearch_url=f"http://user:secret@127.0.0.1:{port}",
        opensearch_username="user",
        opensearch_password="secret",
    )
    started = time.monotonic()
    with pytest.raises(Unavailable) as raised:
        open_backend(settings)
    assert time.monotonic() - started < 2.0
    message = raised.value.message
    assert f"OpenSearch at http://127.0.0.1:{port} is unreachable" in message
    assert "Connection refused" in message
    assert "secret" not in message


def test_a_request_to_a_cluster_gone_away_is_unavailable() -> None:
    port = free_port()
    client = OpenSearch(hosts=[f"http://127.0.0.1:{port}"], timeout=2, max_retries=1)
    backend = OpenSearchBackend(
        client, LAYOUT, address=f"http://127.0.0.1:{port}", version=Version(2, 19)
    )
    started = time.monotonic()
    for call in (
        lambda: backend.search_lexical("x", 1),
        lambda: backend.upsert([CHUNK]),
        backend.stats,
    ):
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port} is unreachable"):
            call()
    assert time.monotonic() - started < 2.0


def test_a_cluster_that_never_answers_hits_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        client = OpenSearch(hosts=[f"http://127.0.0.1:{port}"], timeout=0.3, max_retries=0)
        backend = OpenSearchBackend(
            client, LAYOUT, address=f"http://127.0.0.1:{port}", version=Version(2, 19)
        )
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="did not answer lexical search"):
            backend.search_lexical("x", 1)
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://admin:pw@search.example:9243/prefix", "https://search.example:9243"),
        ("https://search.example", "https://search.example:443"),
        ("http://localhost", "http://localhost:9200"),
    ],
)
def test_addresses_never_carry_credentials(url: str, address: str) -> None:
    assert address_of(url) == address


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({}, "opensearch_url must be http(s)://host"),
        ({"opensearch_url": "localhost:9200"}, "opensearch_url must be http(s)://host"),
        (
            {"opensearch_url": "http://h:9200", "opensearch_username": "u"},
            "opensearch_username and opensearch_password",
        ),
        ({"opensearch_url": "http://h:9200", "opensearch_index": "Bad Name"}, "opensearch_index"),
    ],
)
def test_opensearch_settings_are_validated(options: dict[str, str], words: str) -> None:
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        RetrieverSettings(backend="opensearch", **options)  # type: ignore[arg-type]
