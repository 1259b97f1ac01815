"""``RagfleetRetriever``: the gateway's Retrieve RPC (hybrid search, fusion, optional reranking)
as a LangChain retriever."""

from __future__ import annotations

import os
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, PrivateAttr, SecretStr

from langchain_ragfleet._connection import Connection
from langchain_ragfleet._gateway import API_KEY_ENV, GatewayClient, default_api_key
from ragfleet.clients import DEFAULT_ATTEMPTS
from ragfleet.common.v1 import common_pb2
from ragfleet.domain import SearchMode, search_mode_to_proto
from ragfleet.gateway.v1 import gateway_pb2
from ragfleet.runtime.channels import Deadline

GATEWAY_ADDRESS_ENV = "RAGFLEET_GATEWAY_ADDRESS"
DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:50050"


def gateway_address() -> str:
    """``RAGFLEET_GATEWAY_ADDRESS``, else the gateway's default gRPC address."""
    return os.environ.get(GATEWAY_ADDRESS_ENV, DEFAULT_GATEWAY_ADDRESS)


def retrieval_options(
    k: int | None,
    mode: str | None,
    tenant: str,
    metadata_filter: dict[str, str],
    rerank: bool | None,
) -> gateway_pb2.RetrievalOptions:
    """The gateway's RetrievalOptions; unset values leave the gateway's defaults."""
    options = gateway_pb2.RetrievalOptions(
        mode=search_mode_to_proto(None if mode is None else SearchMode(mode)),
        filter=common_pb2.Filter(tenant=tenant, equals=metadata_filter),
    )
    if k is not None:
        options.top_k = k
    if rerank is not None:
        options.rerank = rerank
    return options


def hit_to_document(hit: Any) -> Document:
    """A ScoredChunk as a Document: the chunk's text, its id, and its metadata with where it
    came from (source, title, section, tenant) and how it ranked (score, lexical and dense
    rank, 0 when absent from that list)."""
    chunk = hit.chunk
    return Document(
        id=chunk.id or None,
        page_content=chunk.text,
        metadata={
            **dict(chunk.metadata),
            "source": chunk.source,
            "title": chunk.title,
            "section": chunk.section,
            "tenant": chunk.tenant,
            "score": hit.score,
            "lexical_rank": hit.lexical_rank,
            "dense_rank": hit.dense_rank,
        },
    )


class RagfleetRetriever(BaseRetriever):
    """Passages for a query from the ragfleet gateway's Retrieve RPC.

    ``k`` passages (unset: the gateway's default top_k), searched by ``mode`` (unset: the
    gateway's default, hybrid), within ``tenant`` and the ``metadata_filter`` equalities;
    ``rerank`` asks for the embedder's cross-encoder (unset: the gateway's default). ``k`` may
    also be given per call: ``retriever.invoke("query", k=3)``. Errors are ragfleet's domain
    errors (``InvalidInput`` for a bad option, ``Unavailable``...), naming the gateway.
    ``api_key`` (default ``RAGFLEET_API_KEY``) is sent with every call; its role must include
    query, and an empty ``tenant`` is the key's.

        retriever = RagfleetRetriever(address="127.0.0.1:50050", k=4)
        docs = retriever.invoke("How does the gateway shut down?")
    """

    address: str = Field(default_factory=gateway_address)
    api_key: SecretStr | None = Field(
        default_factory=default_api_key, description="the gateway's API key; default from env"
    )
    k: int | None = Field(default=None, ge=1)
    mode: Literal["lexical", "dense", "hybrid"] | None = None
    tenant: str = ""
    metadata_filter: dict[str, str] = Field(default_factory=dict)
    rerank: bool | None = None
    timeout: float = Field(default=30.0, gt=0, description="seconds one call may take")

    _connection: Connection[GatewayClient] = PrivateAttr()

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": API_KEY_ENV}

    def model_post_init(self, context: Any, /) -> None:
        address, api_key = self.address, self.api_key
        self._connection = Connection(
            lambda: GatewayClient.connect(address, DEFAULT_ATTEMPTS, api_key)
        )

    def _request(self, query: str, k: int | None) -> gateway_pb2.RetrieveRequest:
        return gateway_pb2.RetrieveRequest(
            query=query,
            retrieval=retrieval_options(
                self.k if k is None else k,
                self.mode,
                self.tenant,
                self.metadata_filter,
                self.rerank,
            ),
        )

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        request = self._request(query, k)
        deadline = Deadline.after(self.timeout)
        reply = self._connection.run(lambda client: client.retrieve(request, deadline))
        return [hit_to_document(hit) for hit in reply.hits]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        request = self._request(query, k)
        reply = await self._connection.client().retrieve(request, Deadline.after(self.timeout))
        return [hit_to_document(hit) for hit in reply.hits]
