"""gRPC face of the embedder: converts protos to domain calls and back, nothing more."""

from __future__ import annotations

from typing import Any

import grpc

from ragfleet.domain import InputType
from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.runtime.errors import InvalidInput
from ragfleet_embedder.core import Embedder

_INPUT_TYPES: dict[int, InputType] = {
    embedder_pb2.INPUT_TYPE_UNSPECIFIED: InputType.PASSAGE,
    embedder_pb2.INPUT_TYPE_QUERY: InputType.QUERY,
    embedder_pb2.INPUT_TYPE_PASSAGE: InputType.PASSAGE,
}


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    async def Embed(
        self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> embedder_pb2.EmbedResponse:
        input_type = _INPUT_TYPES.get(request.input_type)
        if input_type is None:
            raise InvalidInput(f"input_type {request.input_type} is not a known InputType")
        result = await self._embedder.embed(list(request.texts), input_type)
        return embedder_pb2.EmbedResponse(
            embeddings=[embedder_pb2.Embedding(values=row) for row in result.vectors.tolist()],
            model=result.model,
            dimension=result.dimension,
        )

    async def GetModelInfo(
        self,
        request: embedder_pb2.GetModelInfoRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> embedder_pb2.ModelInfo:
        info = self._embedder.model_info()
        return embedder_pb2.ModelInfo(
            name=info.name,
            dimension=info.dimension,
            max_sequence_length=info.max_sequence_length,
            max_batch_texts=info.max_batch_texts,
            max_text_chars=info.max_text_chars,
            reranker=info.reranker,
        )

    async def Rerank(
        self, request: embedder_pb2.RerankRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> embedder_pb2.RerankResponse:
        result = await self._embedder.rerank(request.query, list(request.passages))
        return embedder_pb2.RerankResponse(scores=result.scores, model=result.model)
