"""REST bridge (FastAPI) over the same ``RagPipeline`` the gRPC servicer calls.

Routes: ``POST /v1/ask`` (JSON, or Server-Sent Events with ``"stream": true``),
``POST /v1/retrieve``, ``POST /v1/ingest``, ``POST /v1/ingest/jobs`` and
``GET /v1/ingest/jobs/{id}`` (ingestion jobs), ``GET /healthz``; OpenAPI at ``/openapi.json`` and
``/docs``. Every error is ``{"error": {"code": "<gRPC code name>", "message": "..."}}`` with the
HTTP status of the domain error (400 invalid input, 503 unavailable, 504 deadline, ...).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragfleet.runtime.clients import Deadline
from ragfleet.runtime.errors import RagfleetError
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway import domain
from ragfleet_gateway.ingest_jobs import IngestJob, IngestJobs, JobRequest
from ragfleet_gateway.pipeline import RagPipeline

log = get_logger(__name__)

HealthCheck = Callable[[], Awaitable[dict[str, str | None]]]

_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED", 413: "OUT_OF_RANGE"}


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
    tenant: str = ""
    filter: dict[str, str] = Field(default_factory=dict, description="metadata equality filter")
    rerank: bool | None = Field(
        default=None, description="rescore fused candidates with the reranker (default: off)"
    )
    rerank_depth: int | None = Field(
        default=None, description="candidates rescored, 1..max_rerank_depth (default 20)"
    )

    def to_domain(self) -> domain.RetrievalRequest:
        return domain.RetrievalRequest(
            top_k=self.top_k,
            mode=self.mode,
            fusion=self.fusion,
            rrf_k=self.rrf_k,
            dense_weight=self.dense_weight,
            tenant=self.tenant,
            equals=self.filter,
            rerank=self.rerank,
            rerank_depth=self.rerank_depth,
        )


class AskBody(_Body):
    question: str
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


class RetrieveBody(_Body):
    query: str
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions)


class DocumentBody(_Body):
    source: str
    text: str
    title: str = ""
    content_type: str = Field(default="", description="text/markdown, text/plain, text/html")
    metadata: dict[str, str] = Field(default_factory=dict)


class IngestBody(_Body):
    documents: list[DocumentBody]
    tenant: str = ""


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
    def of(cls, hit: domain.Hit) -> HitOut:
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


class SourceOut(BaseModel):
    number: int
    hit: HitOut


class SourcesOut(BaseModel):
    sources: list[SourceOut]

    @classmethod
    def of(cls, event: domain.SourcesEvent) -> SourcesOut:
        return cls(
            sources=[SourceOut(number=s.number, hit=HitOut.of(s.hit)) for s in event.sources]
        )


class CitationOut(BaseModel):
    number: int
    chunk_id: str
    source: str
    title: str
    section: str


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    total_ms: float
    tokens_per_second: float


class AttemptOut(BaseModel):
    model: str = Field(description="empty: the generator's default model")
    outcome: Literal["succeeded", "failed", "skipped", "rejected"]
    reason: str
    discarded_chars: int
    ms: float


class RestartOut(BaseModel):
    """A model failed after streaming: discard the tokens received so far."""

    model: str
    reason: str


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

    @classmethod
    def of(cls, answer: domain.Answer) -> AnswerOut:
        u = answer.usage
        return cls(
            text=answer.text,
            citations=[
                CitationOut(
                    number=c.number,
                    chunk_id=c.chunk_id,
                    source=c.source,
                    title=c.title,
                    section=c.section,
                )
                for c in answer.citations
            ],
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
                )
                for a in answer.attempts
            ],
            restarted=answer.restarted,
        )


class AskOut(BaseModel):
    sources: list[SourceOut]
    answer: AnswerOut


class IngestOut(BaseModel):
    documents: int
    chunks: int
    replaced: int = Field(description="documents whose source had chunks that were replaced")
    removed_chunks: int = Field(description="old chunks deleted for those sources")


class IngestJobBody(_Body):
    source: str = Field(
        description="http(s) URL, sitemap URL (*.xml), or a path under the gateway's "
        "ingest_allowed_roots (directory, file, JSONL/BEIR corpus, *.urls list)"
    )
    tenant: str = ""
    sync: bool = Field(default=False, description="delete documents that vanished from source")


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


class ErrorDetail(BaseModel):
    code: str = Field(description="gRPC status code name, e.g. INVALID_ARGUMENT")
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class HealthOut(BaseModel):
    status: Literal["SERVING", "NOT_SERVING"]
    upstreams: dict[str, str] = Field(description="per upstream: SERVING, or why it is not")


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "invalid input; the message names the field"},
    503: {"model": ErrorOut, "description": "an upstream is unavailable"},
    504: {"model": ErrorOut, "description": "the deadline ran out"},
}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def _error_body(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, RagfleetError):
        return {"error": {"code": exc.grpc_code.name, "message": exc.message}}
    return {"error": {"code": "INTERNAL", "message": f"internal error: {type(exc).__name__}"}}


def _sse(event: str, payload: BaseModel | dict[str, Any]) -> bytes:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"event: {event}\ndata: {data}\n\n".encode()


def _encode(event: domain.AskEvent) -> bytes:
    if isinstance(event, domain.SourcesEvent):
        return _sse("sources", SourcesOut.of(event))
    if isinstance(event, domain.TokenEvent):
        return _sse("token", {"text": event.text})
    if isinstance(event, domain.RestartEvent):
        return _sse("restart", RestartOut(model=event.model, reason=event.reason))
    return _sse("answer", AnswerOut.of(event.answer))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RagfleetError)
    async def domain_error(_: Request, exc: RagfleetError) -> JSONResponse:
        return _error(exc.http_status, exc.grpc_code.name, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return _error(400, "INVALID_ARGUMENT", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, _HTTP_CODES.get(exc.status_code, "UNKNOWN"), str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("rest_crashed", error=type(exc).__name__)
        return _error(500, "INTERNAL", f"internal error: {type(exc).__name__}")


def create_app(
    pipeline: RagPipeline, health: HealthCheck, jobs: IngestJobs | None = None
) -> FastAPI:
    """The REST app; ``health`` reports each upstream's state (None when SERVING); ``jobs``
    runs ingestion jobs (default: built from the pipeline's settings)."""
    settings = pipeline.settings
    ingest_jobs = jobs or IngestJobs.from_settings(settings)
    app = FastAPI(
        title="ragfleet gateway",
        version="1.0",
        description="Retrieval-augmented answers with citations over the ragfleet services.",
    )
    _install_error_handlers(app)

    def deadline() -> Deadline:
        return Deadline.after(settings.request_timeout_s)

    @app.post(
        "/v1/ask",
        response_model=AskOut,
        responses={
            **_ERRORS,
            200: {
                "description": "the answer as JSON, or with stream=true a text/event-stream of "
                "events 'sources' (SourcesOut), 'token' ({text}), 'restart' (RestartOut: discard "
                "the tokens so far), 'answer' (AnswerOut) and "
                "'error' (ErrorOut) when it fails after streaming began",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
        },
    )
    async def ask(body: AskBody) -> Any:
        request = domain.AskRequest(
            question=body.question,
            retrieval=body.retrieval.to_domain(),
            model=body.model,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
        )
        events = pipeline.ask(request, deadline())
        if body.stream:
            # Retrieval runs before the first event: its failures still get a proper status.
            first = await anext(events)
            return EventSourceResponse(_stream(first, events))
        sources: list[SourceOut] = []
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, domain.SourcesEvent):
                    sources = SourcesOut.of(event).sources
                elif isinstance(event, domain.AnswerEvent):
                    return AskOut(sources=sources, answer=AnswerOut.of(event.answer))
        raise RagfleetError("the answer stream ended without an answer")

    async def _stream(
        first: domain.AskEvent, events: AsyncGenerator[domain.AskEvent, None]
    ) -> AsyncIterator[bytes]:
        yield _encode(first)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    yield _encode(event)
        except Exception as exc:
            if not isinstance(exc, RagfleetError):
                log.exception("ask_stream_crashed")
            yield _sse("error", _error_body(exc))

    @app.post("/v1/retrieve", response_model=RetrieveOut, responses=_ERRORS)
    async def retrieve(body: RetrieveBody) -> RetrieveOut:
        result = await pipeline.retrieve(body.query, body.retrieval.to_domain(), deadline())
        return RetrieveOut(
            hits=[HitOut.of(h) for h in result.hits],
            timings=[TimingOut(stage=t.stage, ms=t.ms) for t in result.timings],
            degraded=result.degraded,
            degraded_reasons=result.degraded_reasons,
        )

    @app.post("/v1/ingest", response_model=IngestOut, responses=_ERRORS)
    async def ingest(body: IngestBody) -> IngestOut:
        documents = [
            domain.Document(
                source=d.source,
                text=d.text,
                title=d.title,
                content_type=d.content_type,
                metadata=d.metadata,
            )
            for d in body.documents
        ]
        result = await pipeline.ingest(
            documents, body.tenant, Deadline.after(settings.ingest_timeout_s)
        )
        return IngestOut(
            documents=result.documents,
            chunks=result.chunks,
            replaced=result.replaced,
            removed_chunks=result.removed_chunks,
        )

    @app.post(
        "/v1/ingest/jobs",
        response_model=IngestJobOut,
        status_code=202,
        responses={400: _ERRORS[400]},
    )
    async def start_ingest_job(body: IngestJobBody) -> IngestJobOut:
        """Starts ingesting a source with the Ray Data pipeline; poll the job for its state."""
        job = ingest_jobs.start(JobRequest(body.source, body.tenant, body.sync))
        return IngestJobOut.of(job)

    @app.get(
        "/v1/ingest/jobs/{job_id}",
        response_model=IngestJobOut,
        responses={404: {"model": ErrorOut, "description": "no such job"}},
    )
    async def get_ingest_job(job_id: str) -> IngestJobOut:
        return IngestJobOut.of(ingest_jobs.get(job_id))

    @app.get(
        "/healthz",
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "an upstream is not SERVING"}},
    )
    async def healthz() -> JSONResponse:
        states = await health()
        body = HealthOut(
            status="SERVING" if all(v is None for v in states.values()) else "NOT_SERVING",
            upstreams={name: reason or "SERVING" for name, reason in states.items()},
        )
        return JSONResponse(
            status_code=200 if body.status == "SERVING" else 503, content=body.model_dump()
        )

    return app
