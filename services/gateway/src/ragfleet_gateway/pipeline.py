"""``RagPipeline``: the gateway's three use cases over one set of upstreams, as the gRPC
servicer and the REST bridge call them: ``retrieve`` (``ragfleet_gateway.retrieval``), ``ask``
(``ragfleet_gateway.answering``) and ``ingest`` (``ragfleet_gateway.ingestion``).

Every method validates its input first (``InvalidInput`` naming the field and the limit, see
``ragfleet_gateway.validation``) and spends no more than its ``deadline`` allows.
"""

from __future__ import annotations

from collections.abc import Mapping

from ragfleet.chunking import DocumentChunker
from ragfleet_gateway.answering import Answering
from ragfleet_gateway.fallback import Generator
from ragfleet_gateway.ingestion import DocumentIngest
from ragfleet_gateway.retrieval import Embedder, PassageReranker, Retrieval, Retriever
from ragfleet_gateway.settings import GatewaySettings


class RagPipeline:
    def __init__(
        self,
        settings: GatewaySettings,
        embedder: Embedder,
        retriever: Retriever,
        generator: Generator,
        chunker: DocumentChunker | None = None,
        *,
        model_generators: Mapping[str, Generator] | None = None,
        reranker: PassageReranker | None = None,
    ) -> None:
        """``generator`` serves every model of ``settings.models`` that ``model_generators``
        (model name -> generator) does not map elsewhere. ``reranker`` (the embedder's Rerank)
        rescores the best hits when a request asks for it."""
        self.settings = settings
        retrieval = Retrieval(settings, embedder, retriever, reranker)
        answering = Answering(settings, retrieval, generator, model_generators)
        ingestion = DocumentIngest(settings, embedder, retriever, chunker)
        self.retrieve = retrieval.retrieve
        self.ask = answering.ask
        self.ingest = ingestion.ingest
