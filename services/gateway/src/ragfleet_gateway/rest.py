"""REST bridge (FastAPI) over the same ``RagPipeline`` the gRPC servicer calls.

Routes: ``POST /v1/ask`` (JSON, or Server-Sent Events with ``"stream": true``),
``POST /v1/retrieve``, ``POST /v1/ingest``, ``POST /v1/ingest/jobs`` and
``GET /v1/ingest/jobs/{id}`` (ingestion jobs), ``GET /healthz``, and the OpenAI-compatible
``POST /v1/chat/completions`` and ``GET /v1/models`` (``ragfleet_gateway.openai_api``); OpenAPI
at ``/openapi.json`` and ``/docs``. Every route but ``/healthz`` and the OpenAPI documents needs
an API key (``Authorization: Bearer``) with the route's role (``ragfleet_gateway.auth``): 401
without a valid key, 403 for a role it lacks or another tenant. Every error but the OpenAI
routes' (which answer in OpenAI's shape) is
``{"error": {"code": "<gRPC code name>", "message": "..."}}`` with the HTTP status of the domain
error (400 invalid input, 401, 403, 503 unavailable, 504 deadline, ...).
The request and response bodies, and their conversions, are in ``ragfleet_gateway.rest_schemas``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragfleet.domain import TokenEvent
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import NotFound, RagfleetError, Unauthenticated
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway import domain, sse
from ragfleet_gateway.answering import collect
from ragfleet_gateway.auth import Authenticator, Principal, Role, rest_authorization
from ragfleet_gateway.ingest_jobs import IngestJobs
from ragfleet_gateway.openai_api import add_openai_routes
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.rest_schemas import (
    AnswerOut,
    AskBody,
    AskOut,
    ErrorOut,
    FeedbackBody,
    FeedbackOut,
    HealthOut,
    IngestBody,
    IngestJobBody,
    IngestJobOut,
    IngestOut,
    RestartOut,
    RetrieveBody,
    RetrieveOut,
    RewriteOut,
    SourcesOut,
)
from ragfleet_gateway.validation import invalid_body

log = get_logger(__name__)

HealthCheck = Callable[[], Awaitable[dict[str, str | None]]]

_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED", 413: "OUT_OF_RANGE"}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "invalid input; the message names the field"},
    401: {"model": ErrorOut, "description": "no API key, or one that is not valid"},
    403: {"model": ErrorOut, "description": "the key lacks the role, or names another tenant"},
    503: {"model": ErrorOut, "description": "an upstream is unavailable"},
    504: {"model": ErrorOut, "description": "the deadline ran out"},
}

_ASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    404: {"model": ErrorOut, "description": "the model is not one the gateway serves"},
    200: {
        "description": "the answer as JSON, or with stream=true a text/event-stream of "
        "events 'rewrite' (RewriteOut, with a history), 'sources' (SourcesOut), 'token' "
        "({text}), 'restart' (RestartOut: discard the tokens so far), 'answer' (AnswerOut) and "
        "'error' (ErrorOut) when it fails after streaming began",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
}


def create_app(
    pipeline: RagPipeline,
    health: HealthCheck,
    jobs: IngestJobs | None = None,
    authenticator: Authenticator | None = None,
) -> FastAPI:
    """The REST app; ``health`` reports each upstream's state (None when SERVING); ``jobs``
    runs ingestion jobs and ``authenticator`` checks API keys (defaults: built from the
    pipeline's settings)."""
    settings = pipeline.settings
    auth = authenticator or Authenticator.from_settings(
        settings.api_keys_file, settings.auth_disabled
    )
    app = FastAPI(
        title="ragfleet gateway",
        version="1.0",
        description="Retrieval-augmented answers with citations over the ragfleet services.",
    )
    _install_error_handlers(app)
    _add_query_routes(app, pipeline, auth)
    _add_feedback_route(app, pipeline, auth)
    add_openai_routes(app, pipeline, auth)
    _add_ingest_routes(app, pipeline, jobs or IngestJobs.from_settings(settings), auth)
    _add_health_route(app, health)
    return app


# --- routes ------------------------------------------------------------------------------
def _add_query_routes(app: FastAPI, pipeline: RagPipeline, auth: Authenticator) -> None:
    """``POST /v1/ask`` and ``POST /v1/retrieve``, each under ``request_timeout_s``; the
    query role."""
    settings = pipeline.settings
    asker = Depends(rest_authorization(auth, Role.QUERY, "POST /v1/ask"))
    retriever = Depends(rest_authorization(auth, Role.QUERY, "POST /v1/retrieve"))

    def deadline() -> Deadline:
        return Deadline.after(settings.request_timeout_s)

    @app.post("/v1/ask", response_model=AskOut, responses=_ASK_RESPONSES)
    async def ask(body: AskBody, principal: Principal = asker) -> Any:
        events = pipeline.ask(body.to_domain(principal), deadline())
        if body.stream:
            # Retrieval runs before the first event: its failures still get a proper status.
            first = await anext(events)
            return sse.EventStream(_stream(first, events))
        return AskOut.of(await collect(events))

    @app.post("/v1/retrieve", response_model=RetrieveOut, responses=_ERRORS)
    async def retrieve(body: RetrieveBody, principal: Principal = retriever) -> RetrieveOut:
        request = body.retrieval.to_domain(principal)
        result = await pipeline.retrieve(body.query, request, deadline())
        return RetrieveOut.of(result)


def _add_feedback_route(app: FastAPI, pipeline: RagPipeline, auth: Authenticator) -> None:
    """``POST /v1/feedback``: a rating of an answer of the key's tenant; the query role."""
    rater = Depends(rest_authorization(auth, Role.QUERY, "POST /v1/feedback"))

    @app.post(
        "/v1/feedback",
        response_model=FeedbackOut,
        responses={
            **_ERRORS,
            404: {"model": ErrorOut, "description": "no such answer in the key's tenant"},
            409: {"model": ErrorOut, "description": "this gateway records no answers"},
        },
    )
    async def feedback(body: FeedbackBody, principal: Principal = rater) -> FeedbackOut:
        """Rates an earlier answer (``answer.answer_id``); a correction becomes the reference
        answer of exported evaluation sets (``ragfleet flywheel export``)."""
        feedback_id = await pipeline.feedback(principal.tenant_for(""), body.to_domain())
        return FeedbackOut(feedback_id=feedback_id)


def _add_ingest_routes(
    app: FastAPI, pipeline: RagPipeline, ingest_jobs: IngestJobs, auth: Authenticator
) -> None:
    """``POST /v1/ingest`` (inline, under ``ingest_timeout_s``) and the ingestion jobs; the
    ingest role. A job is visible only in its tenant (and to admins)."""
    settings = pipeline.settings
    ingester = Depends(rest_authorization(auth, Role.INGEST, "POST /v1/ingest"))
    job_starter = Depends(rest_authorization(auth, Role.INGEST, "POST /v1/ingest/jobs"))
    job_reader = Depends(rest_authorization(auth, Role.INGEST, "GET /v1/ingest/jobs"))

    @app.post("/v1/ingest", response_model=IngestOut, responses=_ERRORS)
    async def ingest(body: IngestBody, principal: Principal = ingester) -> IngestOut:
        documents = [d.to_domain() for d in body.documents]
        tenant = principal.tenant_for(body.tenant)
        result = await pipeline.ingest(documents, tenant, Deadline.after(settings.ingest_timeout_s))
        return IngestOut.of(result)

    @app.post(
        "/v1/ingest/jobs",
        response_model=IngestJobOut,
        status_code=202,
        responses={code: _ERRORS[code] for code in (400, 401, 403)},
    )
    async def start_ingest_job(
        body: IngestJobBody, principal: Principal = job_starter
    ) -> IngestJobOut:
        """Starts ingesting a source with the Ray Data pipeline; poll the job for its state."""
        return IngestJobOut.of(ingest_jobs.start(body.to_domain(principal)))

    @app.get(
        "/v1/ingest/jobs/{job_id}",
        response_model=IngestJobOut,
        responses={
            404: {"model": ErrorOut, "description": "no such job in the key's tenant"},
            401: _ERRORS[401],
            403: _ERRORS[403],
        },
    )
    async def get_ingest_job(job_id: str, principal: Principal = job_reader) -> IngestJobOut:
        job = ingest_jobs.get(job_id)
        if principal.tenant_for("") != job.request.tenant and Role.ADMIN not in principal.roles:
            raise NotFound(f"job_id: no ingestion job {job_id!r}")
        return IngestJobOut.of(job)


def _add_health_route(app: FastAPI, health: HealthCheck) -> None:
    """``GET /healthz``: 200 when every upstream is SERVING, else 503."""

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


# --- Server-Sent Events ------------------------------------------------------------------
async def _stream(
    first: domain.AskEvent, events: AsyncGenerator[domain.AskEvent, None]
) -> AsyncIterator[bytes]:
    """The ask events as SSE; a failure after the first event becomes an ``error`` event."""
    yield _encode(first)
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                yield _encode(event)
    except Exception as exc:
        error = sse.reported(exc)
        yield sse.message(
            {"error": {"code": error.grpc_code.name, "message": error.message}}, "error"
        )


def _encode(event: domain.AskEvent) -> bytes:
    if isinstance(event, domain.RewriteEvent):
        return sse.message(RewriteOut.of(event.rewrite), "rewrite")
    if isinstance(event, domain.SourcesEvent):
        return sse.message(SourcesOut.of(event), "sources")
    if isinstance(event, TokenEvent):
        return sse.message({"text": event.text}, "token")
    if isinstance(event, domain.RestartEvent):
        return sse.message(RestartOut(model=event.model, reason=event.reason), "restart")
    return sse.message(AnswerOut.of(event.answer), "answer")


# --- errors ------------------------------------------------------------------------------
def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RagfleetError)
    async def domain_error(_: Request, exc: RagfleetError) -> JSONResponse:
        response = _error(exc.http_status, exc.grpc_code.name, exc.message)
        if isinstance(exc, Unauthenticated):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "INVALID_ARGUMENT", invalid_body(exc.errors()).message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, _HTTP_CODES.get(exc.status_code, "UNKNOWN"), str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("rest_crashed", error=type(exc).__name__)
        return _error(500, "INTERNAL", f"internal error: {type(exc).__name__}")
