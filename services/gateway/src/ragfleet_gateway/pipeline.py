"""``RagPipeline``: the gateway's use cases over one set of upstreams, as the gRPC servicer and
the REST bridge call them: ``retrieve`` (``ragfleet_gateway.retrieval``), ``ask``
(``ragfleet_gateway.answering``), ``ingest`` (``ragfleet_gateway.ingestion``) and ``feedback``
(``ragfleet_gateway.feedback``).

Every method validates its input first (``InvalidInput`` naming the field and the limit, see
``ragfleet_gateway.validation``) and spends no more than its ``deadline`` allows.
"""

from __future__ import annotations

from collections.abc import Mapping

from ragfleet.chunking import DocumentChunker
from ragfleet.runtime.errors import FailedPrecondition
from ragfleet_gateway.answering import Answering
from ragfleet_gateway.domain import FeedbackRequest
from ragfleet_gateway.fallback import Generator
from ragfleet_gateway.feedback import FeedbackDesk
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
        feedback: FeedbackDesk | None = None,
    ) -> None:
        """``generator`` serves every model of ``settings.models`` that ``model_generators``
        (model name -> generator) does not map elsewhere. ``reranker`` (the embedder's Rerank)
        rescores the best hits when a request asks for it. ``feedback`` records every answer
        and takes ratings of them (none: answers carry no id, feedback is refused)."""
        self.settings = settings
        self._feedback = feedback
        retrieval = Retrieval(settings, embedder, retriever, reranker)
        answering = Answering(
            settings,
            retrieval,
            generator,
            model_generators,
            None if feedback is None else feedback.recorder,
        )
        ingestion = DocumentIngest(settings, embedder, retriever, chunker)
        self.retrieve = retrieval.retrieve
        self.ask = answering.ask
        self.ingest = ingestion.ingest

    async def feedback(self, tenant: str, request: FeedbackRequest) -> str:
        """A rating of an answer ``tenant`` was given; returns the feedback's id. Raises
        ``FailedPrecondition`` when this gateway records no answers, ``InvalidInput``,
        ``NotFound`` (an answer id the tenant never received) or ``Unavailable`` (the store is
        down)."""
        if self._feedback is None:
            raise FailedPrecondition(
                "this gateway records no answers (RAGFLEET_GATEWAY_FEEDBACK_STORE is empty), "
                "so it takes no feedback"
            )
        return await self._feedback.give(tenant, request)
