"""gRPC servicer: converts protos to domain types and back, and calls the core. Nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from ragfleet.common.v1 import common_pb2
from ragfleet.domain import (
    Filter,
    SearchQuery,
    chunk_from_proto,
    fusion_from_proto,
    hit_to_proto,
    search_mode_from_proto,
    search_mode_to_proto,
)
from ragfleet.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from ragfleet.runtime.errors import InvalidInput
from ragfleet_retriever.core import Retriever

Context = grpc.aio.ServicerContext[Any, Any]


def filter_from_proto(filter: common_pb2.Filter, source: str = "") -> Filter:
    """A search or delete filter; with a ``source`` (a delete of a source's chunks) the tenant
    is exact, so an empty tenant never deletes other tenants' copies of the source."""
    return Filter(
        tenant=filter.tenant,
        source=source,
        equals=dict(filter.equals),
        exact_tenant=bool(source),
    )


class RetrieverServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    """``ragfleet.retriever.v1.RetrieverService`` over a ``Retriever`` core.

    Unset and proto zero values mean "the default": unset top_k, candidate_k 0, rrf_k 0,
    unspecified mode and fusion method, unset dense_weight. Search hits carry chunks without
    their vectors.
    """

    def __init__(self, core: Retriever) -> None:
        self._core = core

    async def Search(
        self, request: retriever_pb2.SearchRequest, context: Context
    ) -> retriever_pb2.SearchResponse:
        if request.HasField("top_k") and request.top_k <= 0:
            raise InvalidInput(
                f"top_k: must be positive (unset means the default), got {request.top_k}"
            )
        if request.candidate_k < 0:
            raise InvalidInput(
                f"candidate_k: must be positive (0 means the default), got {request.candidate_k}"
            )
        fusion = request.fusion
        query = SearchQuery(
            query=request.query,
            vector=tuple(request.query_vector),
            mode=search_mode_from_proto(request.mode),
            top_k=request.top_k if request.HasField("top_k") else None,
            candidate_k=request.candidate_k or None,
            fusion=fusion_from_proto(fusion.method),
            rrf_k=fusion.rrf_k or None,
            dense_weight=fusion.dense_weight if fusion.HasField("dense_weight") else None,
            filter=filter_from_proto(request.filter),
        )
        result = await self._core.search(query)
        return retriever_pb2.SearchResponse(
            hits=[hit_to_proto(hit) for hit in result.hits],
            mode=search_mode_to_proto(result.mode),
            best_dense_score=result.best_dense_score,
        )

    async def Upsert(
        self, request: retriever_pb2.UpsertRequest, context: Context
    ) -> retriever_pb2.UpsertResponse:
        upserted = await self._core.upsert([chunk_from_proto(c) for c in request.chunks])
        return retriever_pb2.UpsertResponse(upserted=upserted)

    async def Delete(
        self, request: retriever_pb2.DeleteRequest, context: Context
    ) -> retriever_pb2.DeleteResponse:
        deleted = await self._core.delete(
            list(request.ids),
            filter_from_proto(request.filter, request.source),
            list(request.keep_ids),
        )
        return retriever_pb2.DeleteResponse(deleted=deleted)

    async def GetStats(
        self, request: retriever_pb2.GetStatsRequest, context: Context
    ) -> retriever_pb2.Stats:
        stats = await self._core.stats()
        return retriever_pb2.Stats(
            chunks=stats.chunks,
            sources=stats.sources,
            dimension=stats.dimension,
            backend=stats.backend,
        )
