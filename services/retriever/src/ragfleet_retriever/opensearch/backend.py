"""The OpenSearch backend: one index holding BM25 text and a ``knn_vector`` field per chunk.

Start-up (``OpenSearchBackend.open``) checks the cluster's version against what the configured
engine, space and hybrid mode need, creates the index when missing (idempotent; a concurrent
creation by another replica is fine) or checks the existing index's mapping, and creates the
search pipelines of server-side hybrid search. Every failure names the cluster's address.

Writes go through the bulk API with ``_id`` = chunk id, so upserting twice stores one copy.
``refresh=wait_for`` (the default policy) returns once the chunks are searchable; ``false``
returns once they are durable, and ``bulk_load`` applies OpenSearch's documented bulk-indexing
settings (no refresh, no replicas) for the duration of a load.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError, RequestError

from ragfleet.domain import MATCH_ALL, Chunk, Filter
from ragfleet.fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_RRF_K, FusionMethod
from ragfleet.runtime.channels import REQUEST_DEADLINE
from ragfleet.runtime.errors import (
    FailedPrecondition,
    InvalidInput,
    RagfleetError,
    ResourceExhausted,
    Unavailable,
)
from ragfleet.runtime.logging import get_logger
from ragfleet_retriever.domain import IndexStats, ScoredId
from ragfleet_retriever.opensearch import bodies
from ragfleet_retriever.opensearch.bodies import IndexLayout, JsonObject, Version
from ragfleet_retriever.opensearch.client import translated_errors
from ragfleet_retriever.settings import HybridExecution, KnnEngine, RefreshPolicy

log = get_logger(__name__)

# A failed bulk item is reported with at most this many examples.
_MAX_REPORTED_FAILURES = 3


def check_version(version: Version, layout: IndexLayout, hybrid: HybridExecution) -> None:
    """Raises ``FailedPrecondition`` when the cluster is too old for ``layout`` or ``hybrid``."""
    needs = [(bodies.MINIMUM_VERSION, "efficient filtering of k-NN queries")]
    needs.append(
        (
            bodies.ENGINE_SPACE_MINIMUM_VERSION[(layout.engine, layout.space_type)],
            f"engine {layout.engine.value} with space {layout.space_type.value} (use "
            "RAGFLEET_RETRIEVER_OPENSEARCH_SPACE_TYPE=innerproduct on older clusters)",
        )
    )
    if layout.engine is KnnEngine.LUCENE and layout.dimension > bodies.LUCENE_OLD_MAX_DIMENSION:
        needs.append(
            (
                bodies.LUCENE_LARGE_DIMENSION_VERSION,
                f"lucene vectors of {layout.dimension} dimensions (at most "
                f"{bodies.LUCENE_OLD_MAX_DIMENSION} before; or use faiss)",
            )
        )
    if hybrid is HybridExecution.SERVER:
        needs.append((bodies.HYBRID_MINIMUM_VERSION, "the hybrid query (opensearch_hybrid=server)"))
    for minimum, feature in needs:
        if version < minimum:
            raise FailedPrecondition(f"OpenSearch {version} is too old: {feature} needs {minimum}")


def _per_index(response: Mapping[str, Any]) -> Mapping[str, Any]:
    """The one entry of a response keyed by concrete index name (the configured name may be an
    alias of it)."""
    for entry in response.values():
        if isinstance(entry, Mapping):
            return entry
    return {}


def _reason(item: Mapping[str, Any]) -> str:
    error = item.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('type', '')}: {error.get('reason', '')}"
    return str(error)


class OpenSearchBackend:
    """``IndexBackend`` on an OpenSearch index. Thread-safe (the client pools connections).

    Dense scores are cosine similarities recovered from OpenSearch's k-NN scores, so fusion
    ranks alike on both backends. With ``hybrid=SERVER`` it also offers ``search_hybrid``
    (``ServerSideHybrid``).
    """

    name = "opensearch"

    def __init__(
        self,
        client: OpenSearch,
        layout: IndexLayout,
        *,
        address: str,
        version: Version,
        refresh: RefreshPolicy = RefreshPolicy.WAIT_FOR,
        pipelines: Mapping[FusionMethod, tuple[str, float, int]] | None = None,
        bulk_max_bytes: int = bodies.BULK_MAX_BYTES,
        read_from_primary: bool = False,
        timeout_s: float = 5.0,
    ) -> None:
        """Use ``open``, which checks the cluster and prepares the index. ``pipelines`` maps a
        fusion method to (pipeline name, dense weight, rrf k) of a search pipeline that
        exists on the cluster."""
        self._client = client
        self._layout = layout
        self._address = address
        self.version = version
        self._refresh = refresh
        self._pipelines = dict(pipelines or {})
        self._bulk_max_bytes = bulk_max_bytes
        self._timeout_s = timeout_s
        # Reads the primaries answer when they can: the only read-after-write a cluster with
        # segment replication gives (refresh=wait_for refreshes the primary alone; replicas
        # catch up asynchronously; OpenSearch issue #8700).
        self._read_params = {"preference": "_primary_first"} if read_from_primary else {}
        # Per-query ef_search: read by both engines from 2.16 (before, faiss reads the mapping's).
        self._ef_search = (
            layout.hnsw_ef_search if version >= bodies.QUERY_EF_SEARCH_VERSION else None
        )
        self._state_lock = threading.Lock()
        self._bulk_loads = 0
        self._saved_settings: JsonObject = {}
        # Whether chunks were written since the last refresh (they are not yet searchable, so
        # a delete_by_query would not see them).
        self._unrefreshed = False

    @classmethod
    def open(
        cls,
        client: OpenSearch,
        layout: IndexLayout,
        *,
        address: str,
        refresh: RefreshPolicy = RefreshPolicy.WAIT_FOR,
        hybrid: HybridExecution = HybridExecution.CLIENT,
        dense_weight: float = DEFAULT_DENSE_WEIGHT,
        rrf_k: int = DEFAULT_RRF_K,
        bulk_max_bytes: int = bodies.BULK_MAX_BYTES,
        read_from_primary: bool = False,
        timeout_s: float = 5.0,
    ) -> OpenSearchBackend:
        """Checks the cluster at ``address`` and prepares the index (blocking; fails fast).

        Raises ``Unavailable`` or ``DeadlineExceeded`` when the cluster cannot be reached,
        ``FailedPrecondition`` when it is too old, is not OpenSearch, or holds an index of that
        name whose mapping does not fit ``layout`` (for instance another vector dimension).
        With ``hybrid=SERVER`` the search pipelines for ``dense_weight`` and ``rrf_k`` are
        created or updated; RRF is served by the cluster only from 2.19 on.
        """
        with translated_errors(address, "GET /"):
            info = client.info()
        version = cls._version_of(info, address)
        check_version(version, layout, hybrid)
        backend = cls(
            client,
            layout,
            address=address,
            version=version,
            refresh=refresh,
            bulk_max_bytes=bulk_max_bytes,
            read_from_primary=read_from_primary,
            timeout_s=timeout_s,
        )
        backend._ensure_index()
        if hybrid is HybridExecution.SERVER:
            backend._pipelines = backend._ensure_pipelines(dense_weight, rrf_k)
        log.info(
            "opensearch_ready",
            address=address,
            version=str(version),
            index=layout.index,
            server_side_fusion=sorted(method.value for method in backend._pipelines),
        )
        return backend

    @staticmethod
    def _version_of(info: Mapping[str, Any], address: str) -> Version:
        version = info.get("version", {})
        if version.get("distribution") != "opensearch":
            raise FailedPrecondition(
                f"{address} is not an OpenSearch cluster (version: {dict(version)})"
            )
        try:
            return bodies.parse_version(str(version.get("number", "")))
        except ValueError as error:
            raise FailedPrecondition(f"OpenSearch at {address}: {error}") from None

    def _ensure_index(self) -> None:
        index = self._layout.index
        with translated_errors(self._address, f"HEAD /{index}"):
            exists = self._client.indices.exists(index=index)
        if not exists:
            try:
                with translated_errors(self._address, f"PUT /{index}"):
                    self._client.indices.create(index=index, body=bodies.index_body(self._layout))
                log.info("opensearch_index_created", index=index, address=self._address)
                return
            except RagfleetError as error:
                # Another replica created it first: fall through and check its mapping.
                cause = error.__cause__
                if not (
                    isinstance(cause, RequestError)
                    and "resource_already_exists_exception" in str(cause.error)
                ):
                    raise
        with translated_errors(self._address, f"GET /{index}/_mapping"):
            response = self._client.indices.get_mapping(index=index)
        mappings = _per_index(response).get("mappings", {})
        problems = bodies.mapping_mismatches(self._layout, mappings)
        if problems:
            raise FailedPrecondition(
                f"OpenSearch index {index!r} at {self._address} does not fit the configuration: "
                + "; ".join(problems)
                + ". Match the settings to the index (RAGFLEET_RETRIEVER_DIMENSION, "
                "_OPENSEARCH_ENGINE, _OPENSEARCH_SPACE_TYPE) or set "
                "RAGFLEET_RETRIEVER_OPENSEARCH_INDEX to a new index"
            )

    def _ensure_pipelines(
        self, dense_weight: float, rrf_k: int
    ) -> dict[FusionMethod, tuple[str, float, int]]:
        """Creates or updates one search pipeline per fusion method the cluster supports;
        returns what was made. PUT is itself idempotent; the GET first avoids rewriting
        the cluster state on every start-up."""
        made: dict[FusionMethod, tuple[str, float, int]] = {}
        for method, build in bodies.PIPELINE_BODY.items():
            minimum = bodies.PIPELINE_MINIMUM_VERSION[method]
            reason = ""
            if self.version < minimum:
                reason = f"needs OpenSearch {minimum}, cluster is {self.version}"
            elif (
                method is FusionMethod.RRF
                and self._layout.shards > 1
                and self.version < bodies.RRF_GLOBAL_RANKING_VERSION
            ):
                reason = (
                    f"OpenSearch {self.version} ranks RRF per shard (global ranking from "
                    f"{bodies.RRF_GLOBAL_RANKING_VERSION}); the index has {self._layout.shards}"
                )
            if reason:
                log.warning("opensearch_fusion_in_client", method=method.value, reason=reason)
                continue
            name = bodies.pipeline_name(self._layout.index, method)
            body = build(dense_weight, rrf_k, self.version)
            path = f"/_search/pipeline/{name}"
            try:
                with translated_errors(self._address, f"GET {path}"):
                    current = self._client.search_pipeline.get(id=name).get(name)
            except RagfleetError as error:
                if not isinstance(error.__cause__, NotFoundError):
                    raise
                current = None
            if current != body:
                try:
                    with translated_errors(self._address, f"PUT {path}"):
                        self._client.search_pipeline.put(id=name, body=body)
                except RagfleetError as error:
                    if isinstance(error.__cause__, RequestError):
                        raise FailedPrecondition(
                            f"{error.message}. Server-side hybrid search needs the "
                            "neural-search plugin; or set RAGFLEET_RETRIEVER_OPENSEARCH_HYBRID="
                            "client"
                        ) from error
                    raise
                log.info("opensearch_pipeline_written", pipeline=name, address=self._address)
            made[method] = (name, dense_weight, rrf_k)
        return made

    @property
    def dimension(self) -> int:
        return self._layout.dimension

    @property
    def index(self) -> str:
        return self._layout.index

    def _timeout(self, operation: str) -> dict[str, Any]:
        """The ``request_timeout`` of a call made for an RPC: what is left of the client's
        deadline, at most ``timeout_s`` (``DeadlineExceeded`` when nothing is left). Calls
        outside an RPC, or for a client without a deadline, keep the client's timeout."""
        deadline = REQUEST_DEADLINE.get()
        if deadline is None:
            return {}
        left = deadline.timeout(f"{operation} on OpenSearch at {self._address}", self._timeout_s)
        return {"request_timeout": left}

    def _refresh_param(self) -> str:
        with self._state_lock:
            # wait_for would block until the next refresh, which never comes while a bulk load
            # has disabled periodic refreshes.
            if self._bulk_loads or self._refresh is RefreshPolicy.FALSE:
                self._unrefreshed = True
                return "false"
        return "wait_for"

    def _bulk(self, actions: list[JsonObject], operation: str) -> list[Mapping[str, Any]]:
        """Sends bulk ``actions`` in requests of at most ``bulk_max_bytes``; returns the
        per-item results. A failed item raises after the rest were applied (bulk is not
        atomic; upsert and delete are safe to retry): RESOURCE_EXHAUSTED when the cluster
        pushed back (429), UNAVAILABLE for a server-side failure, INVALID_ARGUMENT when only
        the items themselves were refused (4xx: a document the mapping cannot take)."""
        items: list[Mapping[str, Any]] = []
        for request in bodies.bulk_requests(actions, self._bulk_max_bytes):
            with translated_errors(self._address, operation):
                response = self._client.bulk(
                    body=request,
                    params={"refresh": self._refresh_param(), **self._timeout(operation)},
                )
            items += [next(iter(item.values())) for item in response.get("items", [])]
        failed = [item for item in items if item.get("error")]
        if failed:
            examples = "; ".join(
                f"{item.get('_id')}: {_reason(item)}" for item in failed[:_MAX_REPORTED_FAILURES]
            )
            message = (
                f"OpenSearch at {self._address} refused {len(failed)} of {len(items)} "
                f"bulk items ({examples})"
            )
            statuses = [int(item.get("status", 0)) for item in failed]
            if 429 in statuses:
                raise ResourceExhausted(message)
            if any(status >= 500 for status in statuses):
                raise Unavailable(message)
            if all(400 <= status < 500 for status in statuses):
                raise InvalidInput(message)
            raise RagfleetError(message)
        return items

    def upsert(self, chunks: Sequence[Chunk]) -> int:
        """Indexes ``chunks`` by id (a later duplicate id in ``chunks`` wins); each document is
        replaced whole. Durable on return; searchable on return under ``wait_for``."""
        latest = {chunk.id: chunk for chunk in chunks}
        if latest:
            self._bulk(
                bodies.bulk_index_actions(
                    self._layout.index, latest.values(), self._layout.space_type
                ),
                "bulk upsert",
            )
        return len(latest)

    def delete(
        self,
        *,
        ids: Sequence[str] | None = None,
        filter: Filter = MATCH_ALL,
        keep_ids: Sequence[str] = (),
    ) -> int:
        """Deletes by id (bulk deletes: exact, real-time) or by filter (``delete_by_query``,
        restricted to ``ids`` when given), except the chunks in ``keep_ids`` (a ``must_not``
        clause: one query, so a kept chunk is never deleted, even briefly). Refuses to delete
        everything."""
        if ids is None and filter.is_empty:
            raise InvalidInput(
                "delete: give ids or a non-empty filter (tenant, source or metadata)"
            )
        if filter.is_empty and ids is not None:
            kept = frozenset(keep_ids)
            doomed = [chunk_id for chunk_id in dict.fromkeys(ids) if chunk_id not in kept]
            if not doomed:
                return 0
            items = self._bulk(
                bodies.bulk_delete_actions(self._layout.index, doomed), "bulk delete"
            )
            return sum(1 for item in items if item.get("result") == "deleted")
        index = self._layout.index
        with self._state_lock:
            stale, self._unrefreshed = self._unrefreshed, False
        if stale:
            # delete_by_query works on a search snapshot: make recent writes visible first.
            with translated_errors(self._address, f"POST /{index}/_refresh"):
                self._client.indices.refresh(index=index)
        with translated_errors(self._address, f"POST /{index}/_delete_by_query"):
            response = self._client.delete_by_query(
                index=index,
                body=bodies.delete_by_query(ids, filter, keep_ids),
                # A chunk re-upserted while the query runs keeps its newer version.
                params={"refresh": "true", "conflicts": "proceed"},
            )
        failures = response.get("failures") or []
        if failures:
            raise Unavailable(
                f"OpenSearch at {self._address}: delete_by_query deleted "
                f"{response.get('deleted', 0)} chunks, then failed: {failures[0]}"
            )
        return int(response.get("deleted", 0))

    def _search(self, body: JsonObject, operation: str, **params: str) -> list[Mapping[str, Any]]:
        index = self._layout.index
        with translated_errors(self._address, f"{operation} on /{index}/_search"):
            response = self._client.search(
                index=index,
                body=body,
                params={**self._read_params, **params, **self._timeout(operation)} or None,
            )
        hits: list[Mapping[str, Any]] = response["hits"]["hits"]
        return hits

    def search_lexical(self, query: str, k: int, filter: Filter = MATCH_ALL) -> list[ScoredId]:
        hits = self._search(bodies.lexical_search(query, k, filter), "lexical search")
        return [ScoredId(hit["_id"], float(hit["_score"])) for hit in hits]

    def search_dense(
        self, vector: Sequence[float], k: int, filter: Filter = MATCH_ALL
    ) -> list[ScoredId]:
        space = self._layout.space_type
        body = bodies.dense_search(vector, k, filter, space, self._ef_search)
        hits = self._search(body, "dense search")
        to_cosine = bodies.COSINE_FROM_SCORE[space]
        return [ScoredId(hit["_id"], to_cosine(float(hit["_score"]))) for hit in hits]

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
        filter: Filter = MATCH_ALL,
    ) -> list[ScoredId] | None:
        """One ``hybrid`` query fused by the cluster's search pipeline for ``fusion``; None
        (fuse in the caller) when there is no such pipeline or it was made with other
        parameters than ``dense_weight`` / ``rrf_k``. Scores are the pipeline's fused scores."""
        pipeline = self._pipelines.get(fusion)
        if pipeline is None:
            return None
        name, pipeline_weight, pipeline_rrf_k = pipeline
        # The tolerance lets a weight sent as a protobuf float32 match the configured default.
        if (
            fusion is FusionMethod.WEIGHTED
            and not math.isclose(dense_weight, pipeline_weight, abs_tol=1e-6)
        ) or (fusion is FusionMethod.RRF and rrf_k != pipeline_rrf_k):
            return None
        body = bodies.hybrid_search(
            query,
            vector,
            max(k, candidate_k),
            candidate_k,
            filter,
            self._layout.space_type,
            self._ef_search,
        )
        hits = self._search(body, "hybrid search", search_pipeline=name)
        return [ScoredId(hit["_id"], float(hit["_score"])) for hit in hits[:k]]

    def fetch(self, ids: Sequence[str]) -> dict[str, Chunk]:
        """Stored chunks by id (real-time: sees writes not yet refreshed), without vectors."""
        if not ids:
            return {}
        index = self._layout.index
        with translated_errors(self._address, f"POST /{index}/_mget"):
            response = self._client.mget(
                index=index,
                body={"ids": list(dict.fromkeys(ids))},
                params={
                    "_source_excludes": bodies.VECTOR,
                    **self._read_params,
                    **self._timeout("fetch"),
                },
            )
        return {
            doc["_id"]: bodies.chunk_from_source(doc["_id"], doc.get("_source", {}))
            for doc in response.get("docs", [])
            if doc.get("found")
        }

    def stats(self) -> IndexStats:
        index = self._layout.index
        with translated_errors(self._address, f"stats on /{index}/_search"):
            response = self._client.search(index=index, body=bodies.stats_search())
        chunks = int(response["hits"]["total"]["value"])
        sources = int(response["aggregations"]["sources"]["value"])
        return IndexStats(chunks, sources, self.dimension, self.name)

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Applies the documented bulk-indexing settings for the duration of a load:
        ``refresh_interval: -1`` and ``number_of_replicas: 0``, and upserts skip the refresh.
        On exit (also on error) the previous settings are restored and the index is refreshed,
        so everything loaded is searchable afterwards. Nested and concurrent loads share one
        window: the settings are restored when the last one ends.

        The settings are the index's, not this process's: other writers of the same index
        (another retriever replica using ``wait_for``) would wait for the load's end, so run
        loads when the index has no other writers.
        """
        index = self._layout.index
        with self._state_lock:
            self._bulk_loads += 1
            first = self._bulk_loads == 1
            try:
                if first:
                    self._saved_settings = self._begin_bulk_load(index)
            except BaseException:
                self._bulk_loads -= 1
                raise
        try:
            yield
        finally:
            with self._state_lock:
                self._bulk_loads -= 1
                last = self._bulk_loads == 0
                if last:
                    self._end_bulk_load(index, self._saved_settings)
                    self._unrefreshed = False

    def _begin_bulk_load(self, index: str) -> JsonObject:
        with translated_errors(self._address, f"GET /{index}/_settings"):
            response = self._client.indices.get_settings(
                index=index, params={"flat_settings": "true"}
            )
        current = _per_index(response).get("settings", {})
        # An unset refresh_interval is restored as null, which resets it to the default.
        saved: JsonObject = {
            "index.refresh_interval": current.get("index.refresh_interval"),
            "index.number_of_replicas": current.get(
                "index.number_of_replicas", self._layout.replicas
            ),
        }
        with translated_errors(self._address, f"PUT /{index}/_settings"):
            self._client.indices.put_settings(
                index=index,
                body={"index": {"refresh_interval": "-1", "number_of_replicas": 0}},
            )
        log.info("opensearch_bulk_load_started", index=index, saved=saved)
        return saved

    def _end_bulk_load(self, index: str, saved: JsonObject) -> None:
        with translated_errors(self._address, f"PUT /{index}/_settings"):
            self._client.indices.put_settings(index=index, body=saved)
        with translated_errors(self._address, f"POST /{index}/_refresh"):
            self._client.indices.refresh(index=index)
        log.info("opensearch_bulk_load_ended", index=index, restored=saved)

    def close(self) -> None:
        self._client.close()
