"""The REST bridge's JSON schemas (pydantic) and their conversions to and from the gateway's
domain types: request bodies turn into domain requests (``to_domain``, in the tenant the
caller's key allows), domain results into response bodies (``of``). The class names are the
OpenAPI component names; the routes that use them are in ``ragfleet_gateway.rest``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ragfleet.domain import ChatMessage, Hit
from ragfleet_gateway import domain
from ragfleet_gateway.auth import Principal
from ragfleet_gateway.ingest_jobs import IngestJob, JobRequest


# --- request bodies ----------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrievalOptions(_Body):
    """Unset fields take the gateway's defaults (settings)."""

    top_k: int | None = Field(default=None, description="1..max_top_k (default 50)")
    mode: str | None = Field(default=None, description="lexical, dense or hybrid")
    fusion: str | None = Field(default=None, description="rrf or weighted")
    rrf_k: int | None = Field(default=None, description="RRF rank constant, >= 1")
    dense_weight: float | None = Field(default=None, description="weighted fusion, in [0, 1]")
    tenant: str = Field(default="", description="empty: the API key's tenant")
    filter: dict[str, str] = Field(default_factory=dict, description="metadata equality filter")
    rerank: bool | None = Field(
        default=None, description="rescore fused candidates with the reranker (default: off)"
    )
    rerank_depth: int | None = Field(
        default=None, description="candidates rescored, 1..max_rerank_depth (default 20)"
    )

    def to_domain(self, principal: Principal) -> domain.RetrievalRequest:
        return domain.RetrievalRequest(
            top_k=self.top_k,
            mode=self.mode,
            fusion=self.fusion,
            rrf_k=self.rrf_k,
            dense_weight=self.dense_weight,
            tenant=principal.tenant_for(self.tenant, "retrieval.tenant"),
            equals=self.filter,
            rerank=self.rerank,
            rerank_depth=self.rerank_depth,
        )


class MessageBody(_Body):
    role: str = Field(description="user or assistant")
    content: str


class AskBody(_Body):
    question: str
    history: list[MessageBody] = Field(
        default_factory=list,
        description="earlier messages of the conversation, oldest first: a follow-up is "
        "rewritten into a standalone question for retrieval (see rewrite)",
    )
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions)
    model: str = Field(
        default="",
        description="the first model of the fallback chain to try (404 unless configured); "
        "empty: the chain's first model",
    )
    max_tokens: int | None = Field(
        default=None, description="unset: the default; 1..max_tokens_limit"
    )
    temperature: float | None = None
    stream: bool = Field(default=False, description="answer as Server-Sent Events")

    def to_domain(self, principal: Principal) -> domain.AskRequest:
        """The request without ``stream``: streaming is how the answer is sent, not asked."""
        return domain.AskRequest(
            question=self.question,
            retrieval=self.retrieval.to_domain(principal),
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            history=tuple(ChatMessage(m.role, m.content) for m in self.history),
        )


class RetrieveBody(_Body):
    query: str
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions)


class DocumentBody(_Body):
    source: str
    text: str
    title: str = ""
    content_type: str = Field(default="", description="text/markdown, text/plain, text/html")
    metadata: dict[str, str] = Field(default_factory=dict)

    def to_domain(self) -> domain.Document:
        return domain.Document(
            source=self.source,
            text=self.text,
            title=self.title,
            content_type=self.content_type,
            metadata=self.metadata,
        )


class FeedbackBody(_Body):
    answer_id: str = Field(description="answer.answer_id of the answer rated")
    rating: int = Field(description="1 (wrong or useless) to 5 (right and well supported)")
    comment: str = Field(default="", description="at most 4,000 characters")
    correction: str = Field(
        default="",
        description="the answer that is right, at most 4,000 characters: it becomes the "
        "reference answer in exported evaluation sets",
    )

    def to_domain(self) -> domain.FeedbackRequest:
        return domain.FeedbackRequest(self.answer_id, self.rating, self.comment, self.correction)


class FeedbackOut(BaseModel):
    feedback_id: str


class IngestBody(_Body):
    documents: list[DocumentBody]
    tenant: str = Field(default="", description="empty: the API key's tenant")


class IngestJobBody(_Body):
    source: str = Field(
        description="http(s) URL, sitemap URL (*.xml), or a path under the gateway's "
        "ingest_allowed_roots (directory, file, JSONL/BEIR corpus, *.urls list)"
    )
    tenant: str = Field(default="", description="empty: the API key's tenant")
    sync: bool = Field(default=False, description="delete documents that vanished from source")

    def to_domain(self, principal: Principal) -> JobRequest:
        return JobRequest(self.source, principal.tenant_for(self.tenant), self.sync)


# --- responses ---------------------------------------------------------------------------
class ChunkOut(BaseModel):
    id: str
    text: str
    source: str
    title: str
    section: str
    tenant: str
    metadata: dict[str, str]


class HitOut(BaseModel):
    chunk: ChunkOut
    score: float
    lexical_rank: int
    dense_rank: int

    @classmethod
    def of(cls, hit: Hit) -> HitOut:
        c = hit.chunk
        return cls(
            chunk=ChunkOut(
                id=c.id,
                text=c.text,
                source=c.source,
                title=c.title,
                section=c.section,
                tenant=c.tenant,
                metadata=dict(c.metadata),
            ),
            score=hit.score,
            lexical_rank=hit.lexical_rank,
            dense_rank=hit.dense_rank,
        )


class TimingOut(BaseModel):
    stage: str
    ms: float


class RetrieveOut(BaseModel):
    hits: list[HitOut]
    timings: list[TimingOut]
    degraded: bool
    degraded_reasons: list[str]

    @classmethod
    def of(cls, result: domain.RetrievalResult) -> RetrieveOut:
        return cls(
            hits=[HitOut.of(h) for h in result.hits],
            timings=[TimingOut(stage=t.stage, ms=t.ms) for t in result.timings],
            degraded=result.degraded,
            degraded_reasons=result.degraded_reasons,
        )


class SourceOut(BaseModel):
    number: int
    hit: HitOut

    @classmethod
    def all(cls, sources: list[domain.Source]) -> list[SourceOut]:
        return [cls(number=s.number, hit=HitOut.of(s.hit)) for s in sources]


class SourcesOut(BaseModel):
    sources: list[SourceOut]

    @classmethod
    def of(cls, event: domain.SourcesEvent) -> SourcesOut:
        return cls(sources=SourceOut.all(event.sources))


class RewriteOut(BaseModel):
    """The question retrieval searched for, when the request carried a history."""

    query: str
    method: Literal["model", "rule", "none"] = Field(
        description="model: the model rewrote it; rule: the previous question was put before "
        "it (reason says why not the model); none: searched as asked"
    )
    reason: str = Field(description="why the model did not rewrite it; empty when it did")

    @classmethod
    def of(cls, rewrite: domain.QueryRewrite) -> RewriteOut:
        return cls(query=rewrite.query, method=rewrite.method.value, reason=rewrite.reason)


class CitationOut(BaseModel):
    number: int
    chunk_id: str
    source: str
    title: str
    section: str

    @classmethod
    def all(cls, citations: list[domain.Citation]) -> list[CitationOut]:
        return [
            cls(
                number=c.number,
                chunk_id=c.chunk_id,
                source=c.source,
                title=c.title,
                section=c.section,
            )
            for c in citations
        ]


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    total_ms: float
    tokens_per_second: float


class AttemptOut(BaseModel):
    model: str = Field(description="empty: the generator's default model")
    outcome: Literal["succeeded", "failed", "skipped", "rejected", "escalated"] = Field(
        description="escalated: it answered, but the router's cascade check found the answer "
        "wanting and the next model answered instead"
    )
    reason: str
    discarded_chars: int
    ms: float
    prompt_tokens: int = Field(description="the generator's usage; a failed try: 0")
    completion_tokens: int = Field(
        description="the generator's usage; a failed try: the token deltas it streamed"
    )
    cost_usd: float | None = Field(
        description="priced by the gateway's price table; null without one"
    )


class RestartOut(BaseModel):
    """A model failed after streaming: discard the tokens received so far."""

    model: str
    reason: str


class RouteOut(BaseModel):
    """Which model the router chose first, and why."""

    policy: Literal["none", "requested", "classifier", "signals", "cascade"]
    model: str
    reason: str
    score: float | None = Field(
        description="the classifier's probability that the question needs the strong model, "
        "or the signal's value; null when the policy has none"
    )
    escalated: bool = Field(description="the cascade moved from the cheap model to the strong one")

    @classmethod
    def of(cls, route: domain.Route) -> RouteOut:
        return cls(
            policy=route.policy,  # type: ignore[arg-type]
            model=route.model,
            reason=route.reason,
            score=route.score,
            escalated=route.escalated,
        )


class AnswerOut(BaseModel):
    text: str
    citations: list[CitationOut]
    model: str
    usage: UsageOut
    timings: list[TimingOut]
    degraded: bool
    degraded_reasons: list[str]
    answered: bool = Field(
        description="false: nothing relevant retrieved, the model declined (no citations), "
        "or no model answered (retrieval-only, degraded)"
    )
    attempts: list[AttemptOut] = Field(description="every try of every model, in order")
    restarted: bool = Field(description="a model failed mid-stream; a restart event was sent")
    history_trimmed: int = Field(
        description="earlier messages left out of the prompt, the oldest first, to fit the "
        "history budget"
    )
    cost_usd: float | None = Field(
        description="USD, the sum of the attempts' costs (0 when no model was asked); null "
        "when the gateway has no price table"
    )
    answer_id: str = Field(
        description="names this answer in POST /v1/feedback; empty when the gateway records "
        "no answers"
    )
    route: RouteOut | None = Field(description="the router's choice; null when no model was asked")

    @classmethod
    def of(cls, answer: domain.Answer) -> AnswerOut:
        u = answer.usage
        return cls(
            text=answer.text,
            citations=CitationOut.all(answer.citations),
            model=answer.model,
            usage=UsageOut(
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                time_to_first_token_ms=u.time_to_first_token_ms,
                total_ms=u.total_ms,
                tokens_per_second=u.tokens_per_second,
            ),
            timings=[TimingOut(stage=t.stage, ms=t.ms) for t in answer.timings],
            degraded=answer.degraded,
            degraded_reasons=answer.degraded_reasons,
            answered=answer.answered,
            attempts=[
                AttemptOut(
                    model=a.model,
                    outcome=a.outcome.value,
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
            route=None if answer.route is None else RouteOut.of(answer.route),
        )


class AskOut(BaseModel):
    rewrite: RewriteOut | None = Field(description="set when the request carried a history")
    sources: list[SourceOut]
    answer: AnswerOut

    @classmethod
    def of(cls, result: domain.AskResult) -> AskOut:
        return cls(
            rewrite=None if result.rewrite is None else RewriteOut.of(result.rewrite),
            sources=SourceOut.all(result.sources),
            answer=AnswerOut.of(result.answer),
        )


class IngestOut(BaseModel):
    documents: int
    chunks: int
    replaced: int = Field(description="documents whose source had chunks that were replaced")
    removed_chunks: int = Field(description="old chunks deleted for those sources")

    @classmethod
    def of(cls, result: domain.IngestResult) -> IngestOut:
        return cls(
            documents=result.documents,
            chunks=result.chunks,
            replaced=result.replaced,
            removed_chunks=result.removed_chunks,
        )


class IngestItemOut(BaseModel):
    source: str
    reason: str


class IngestSummaryOut(BaseModel):
    documents: int
    added: int
    replaced: int
    unchanged: int
    deleted: int
    skipped: int
    failed: int
    chunks_added: int
    chunks_deleted: int
    elapsed_s: float
    failures: list[IngestItemOut]
    skipped_items: list[IngestItemOut]


class ErrorDetail(BaseModel):
    code: str = Field(description="gRPC status code name, e.g. INVALID_ARGUMENT")
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class IngestJobOut(BaseModel):
    id: str
    state: Literal["running", "succeeded", "failed"] = Field(
        description="failed: the run failed (error) or some documents did (summary.failures)"
    )
    source: str
    tenant: str
    sync: bool
    created_at: float
    finished_at: float | None
    error: ErrorDetail | None
    summary: IngestSummaryOut = Field(description="counts so far while running")

    @classmethod
    def of(cls, job: IngestJob) -> IngestJobOut:
        s = job.summary
        failure = job.failure
        return cls(
            id=job.id,
            state=job.state.value,
            source=job.request.source,
            tenant=job.request.tenant,
            sync=job.request.sync,
            created_at=job.created_at,
            finished_at=job.finished_at,
            error=ErrorDetail(code=failure.grpc_code.name, message=failure.message)
            if failure
            else None,
            summary=IngestSummaryOut(
                documents=s.documents,
                added=s.added,
                replaced=s.replaced,
                unchanged=s.unchanged,
                deleted=s.deleted,
                skipped=s.skipped,
                failed=s.failed,
                chunks_added=s.chunks_added,
                chunks_deleted=s.chunks_deleted,
                elapsed_s=s.elapsed_s,
                failures=[IngestItemOut(source=r.source, reason=r.reason) for r in s.failures],
                skipped_items=[
                    IngestItemOut(source=r.source, reason=r.reason) for r in s.skipped_items
                ],
            ),
        )


class HealthOut(BaseModel):
    status: Literal["SERVING", "NOT_SERVING"]
    upstreams: dict[str, str] = Field(description="per upstream: SERVING, or why it is not")
