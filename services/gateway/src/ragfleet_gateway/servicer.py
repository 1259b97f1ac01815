"""GatewayService over gRPC: converts proto <-> domain and calls ``RagPipeline``.

Errors are raised as domain exceptions; the runtime's interceptor maps them to status codes.
The caller's API key was checked (and its role for the RPC) by the authentication interceptor
(``ragfleet_gateway.auth``); here the key decides each request's tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from ragfleet.domain import (
    ChatMessage,
    TokenEvent,
    fusion_from_proto,
    hit_to_proto,
    search_mode_from_proto,
    usage_to_proto,
)
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import InvalidInput
from ragfleet_gateway.answering import close_on_termination
from ragfleet_gateway.auth import Principal, current_principal
from ragfleet_gateway.domain import (
    Answer,
    AnswerEvent,
    AskEvent,
    AskRequest,
    AttemptOutcome,
    Document,
    FeedbackRequest,
    RestartEvent,
    RetrievalRequest,
    RewriteEvent,
    RewriteMethod,
    SourcesEvent,
    StageTiming,
)
from ragfleet_gateway.ingest_jobs import IngestJobs, JobRequest
from ragfleet_gateway.pipeline import RagPipeline

Context = grpc.aio.ServicerContext[Any, Any]


def deadline_of(context: Context, cap_s: float) -> Deadline:
    """The client's gRPC deadline, at most ``cap_s`` seconds away."""
    remaining = context.time_remaining()
    return Deadline.after(cap_s if remaining is None else min(remaining, cap_s))


def retrieval_request(
    options: gateway_pb2.RetrievalOptions, principal: Principal
) -> RetrievalRequest:
    """The request's retrieval options, in the tenant its key allows."""
    mode = search_mode_from_proto(options.mode, "retrieval.mode")
    fusion = fusion_from_proto(options.fusion.method, "retrieval.fusion.method")
    return RetrievalRequest(
        top_k=options.top_k if options.HasField("top_k") else None,
        mode=None if mode is None else mode.value,
        fusion=None if fusion is None else fusion.value,
        rrf_k=options.fusion.rrf_k,
        dense_weight=(
            options.fusion.dense_weight if options.fusion.HasField("dense_weight") else None
        ),
        tenant=principal.tenant_for(options.filter.tenant, "retrieval.filter.tenant"),
        equals=dict(options.filter.equals),
        rerank=options.rerank if options.HasField("rerank") else None,
        rerank_depth=options.rerank_depth if options.HasField("rerank_depth") else None,
    )


_OUTCOMES = {
    AttemptOutcome.SUCCEEDED: gateway_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    AttemptOutcome.FAILED: gateway_pb2.ATTEMPT_OUTCOME_FAILED,
    AttemptOutcome.SKIPPED: gateway_pb2.ATTEMPT_OUTCOME_SKIPPED,
    AttemptOutcome.REJECTED: gateway_pb2.ATTEMPT_OUTCOME_REJECTED,
    AttemptOutcome.ESCALATED: gateway_pb2.ATTEMPT_OUTCOME_ESCALATED,
}


_REWRITE_METHODS = {
    RewriteMethod.MODEL: gateway_pb2.REWRITE_METHOD_MODEL,
    RewriteMethod.RULE: gateway_pb2.REWRITE_METHOD_RULE,
    RewriteMethod.NONE: gateway_pb2.REWRITE_METHOD_NONE,
}


def _timings(timings: list[StageTiming]) -> list[gateway_pb2.StageTiming]:
    return [gateway_pb2.StageTiming(stage=t.stage, ms=t.ms) for t in timings]


def answer_to_proto(answer: Answer) -> gateway_pb2.Answer:
    return gateway_pb2.Answer(
        text=answer.text,
        citations=[
            gateway_pb2.Citation(
                number=c.number,
                chunk_id=c.chunk_id,
                source=c.source,
                title=c.title,
                section=c.section,
            )
            for c in answer.citations
        ],
        model=answer.model,
        usage=usage_to_proto(answer.usage),
        timings=_timings(answer.timings),
        degraded=answer.degraded,
        degraded_reasons=answer.degraded_reasons,
        answered=answer.answered,
        attempts=[
            gateway_pb2.ModelAttempt(
                model=a.model,
                outcome=_OUTCOMES[a.outcome],
                reason=a.reason,
                discarded_chars=a.discarded_chars,
                ms=a.ms,
                prompt_tokens=a.prompt_tokens,
                completion_tokens=a.completion_tokens,
                cost_usd=a.cost_usd,
            )
            for a in answer.attempts
        ],
        restarted=answer.restarted,
        history_trimmed=answer.history_trimmed,
        cost_usd=answer.cost_usd,
        answer_id=answer.answer_id,
        route=(
            None
            if answer.route is None
            else gateway_pb2.Route(
                policy=answer.route.policy,
                model=answer.route.model,
                reason=answer.route.reason,
                score=answer.route.score,
                escalated=answer.route.escalated,
            )
        ),
    )


def event_to_proto(event: AskEvent) -> gateway_pb2.AskEvent:
    if isinstance(event, RewriteEvent):
        r = event.rewrite
        return gateway_pb2.AskEvent(
            rewrite=gateway_pb2.Rewrite(
                query=r.query, method=_REWRITE_METHODS[r.method], reason=r.reason
            )
        )
    if isinstance(event, SourcesEvent):
        return gateway_pb2.AskEvent(
            sources=gateway_pb2.Sources(
                sources=[
                    gateway_pb2.Source(number=s.number, hit=hit_to_proto(s.hit))
                    for s in event.sources
                ]
            )
        )
    if isinstance(event, TokenEvent):
        return gateway_pb2.AskEvent(token=event.text)
    if isinstance(event, RestartEvent):
        return gateway_pb2.AskEvent(
            restart=gateway_pb2.Restart(model=event.model, reason=event.reason)
        )
    assert isinstance(event, AnswerEvent)
    return gateway_pb2.AskEvent(answer=answer_to_proto(event.answer))


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Deadlines: the client's gRPC deadline, capped by ``request_timeout_s`` (ingest:
    ``ingest_timeout_s``)."""

    def __init__(self, pipeline: RagPipeline, jobs: IngestJobs | None = None) -> None:
        self._pipeline = pipeline
        self._settings = pipeline.settings
        self._jobs = jobs or IngestJobs.from_settings(pipeline.settings)

    async def Ask(
        self, request: gateway_pb2.AskRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.AskEvent]:
        ask = AskRequest(
            question=request.question,
            retrieval=retrieval_request(request.retrieval, current_principal()),
            model=request.model,
            max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
            temperature=request.temperature if request.HasField("temperature") else None,
            history=tuple(ChatMessage(m.role, m.content) for m in request.history),
        )
        deadline = deadline_of(context, self._settings.request_timeout_s)
        events = self._pipeline.ask(ask, deadline)
        context.add_done_callback(close_on_termination(events))  # type: ignore[arg-type]
        async for event in events:
            yield event_to_proto(event)

    async def Retrieve(
        self, request: gateway_pb2.RetrieveRequest, context: Context
    ) -> gateway_pb2.RetrieveResponse:
        result = await self._pipeline.retrieve(
            request.query,
            retrieval_request(request.retrieval, current_principal()),
            deadline_of(context, self._settings.request_timeout_s),
        )
        return gateway_pb2.RetrieveResponse(
            hits=[hit_to_proto(h) for h in result.hits],
            timings=_timings(result.timings),
            degraded=result.degraded,
            degraded_reasons=result.degraded_reasons,
        )

    async def Ingest(
        self, request: gateway_pb2.IngestRequest, context: Context
    ) -> gateway_pb2.IngestResponse:
        """Inline ``documents`` go through ``RagPipeline.ingest``; a ``source`` runs an
        ingestion job (the Ray Data pipeline) and answers with its summary when it ends. Either
        writes only in the tenant the key allows."""
        tenant = current_principal().tenant_for(request.tenant)
        if request.source:
            if request.documents:
                raise InvalidInput("documents, source: give inline documents or a source, not both")
            return await self._ingest_source(request, tenant)
        if request.sync:
            raise InvalidInput("sync: only applies to ingestion from a source")
        documents = [
            Document(
                source=d.source,
                text=d.text,
                title=d.title,
                content_type=d.content_type,
                metadata=dict(d.metadata),
            )
            for d in request.documents
        ]
        result = await self._pipeline.ingest(
            documents, tenant, deadline_of(context, self._settings.ingest_timeout_s)
        )
        return gateway_pb2.IngestResponse(
            documents=result.documents, chunks=result.chunks, replaced=result.replaced
        )

    async def Feedback(
        self, request: gateway_pb2.FeedbackRequest, context: Context
    ) -> gateway_pb2.FeedbackResponse:
        feedback_id = await self._pipeline.feedback(
            current_principal().tenant_for(""),
            FeedbackRequest(request.answer_id, request.rating, request.comment, request.correction),
        )
        return gateway_pb2.FeedbackResponse(feedback_id=feedback_id)

    async def _ingest_source(
        self, request: gateway_pb2.IngestRequest, tenant: str
    ) -> gateway_pb2.IngestResponse:
        job = self._jobs.start(JobRequest(request.source, tenant, request.sync))
        await job.done.wait()
        if job.failure is not None:
            raise job.failure
        s = job.summary
        return gateway_pb2.IngestResponse(
            documents=s.documents,
            chunks=s.chunks_added,
            unchanged=s.unchanged,
            replaced=s.replaced,
            added=s.added,
            deleted=s.deleted,
            skipped=s.skipped,
            failed=s.failed,
            chunks_deleted=s.chunks_deleted,
            failures=[gateway_pb2.IngestItem(source=r.source, reason=r.reason) for r in s.failures],
            skipped_items=[
                gateway_pb2.IngestItem(source=r.source, reason=r.reason) for r in s.skipped_items
            ],
            elapsed_s=s.elapsed_s,
        )
