"""OpenAI-compatible routes on the REST bridge, over the same ``RagPipeline.ask``:
``POST /v1/chat/completions`` (JSON, or ``chat.completion.chunk`` Server-Sent Events ending in
``data: [DONE]`` with ``"stream": true``) and ``GET /v1/models``.

The last message is the question; the user and assistant messages before it are its history
(a follow-up is rewritten for retrieval, see ``ragfleet_gateway.conversation``). The models are
the fallback chain's (``GatewaySettings.models``): naming one starts the chain there, the models
after it remaining the fallback; without a configured chain the one model is ``ragfleet``, the
generator's default. Answers carry ragfleet's extras beside OpenAI's fields (bodies in
``ragfleet_gateway.openai_schemas``).

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with the domain error's
HTTP status: an unknown model is 404 listing the models; empty messages, a last message not
from the user, ``n`` > 1, tools, and text no service can carry are 400 naming the field.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIRouter
from starlette.exceptions import HTTPException

from ragfleet.domain import ChatMessage, TokenEvent
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import InvalidInput, NotFound, RagfleetError, Unauthenticated
from ragfleet_gateway import domain, sse
from ragfleet_gateway.answering import collect
from ragfleet_gateway.auth import Authenticator, Principal, Role, rest_authorization
from ragfleet_gateway.openai_schemas import (
    ChatCompletionBody,
    ChatCompletionChunkOut,
    ChatCompletionOut,
    ChatMessageIn,
    ChoiceOut,
    ChunkChoiceOut,
    DeltaOut,
    MessageOut,
    ModelOut,
    ModelsOut,
    OpenAIErrorOut,
    RestartChunkOut,
    UsageOut,
)
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.rest_schemas import CitationOut, RewriteOut, SourceOut
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.validation import check_message, check_question, invalid_body

DEFAULT_MODEL = "ragfleet"
"""The one model listed when no fallback chain is configured: the generator's default."""

_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*)")
# The core names the chat's last message "question" and the messages before it "history".
_CORE_FIELDS = {"question": "messages", "history": "messages"}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorOut, "description": "invalid request; param names the field"},
    401: {"model": OpenAIErrorOut, "description": "no API key, or one that is not valid"},
    403: {"model": OpenAIErrorOut, "description": "the key lacks the role or the tenant"},
    404: {"model": OpenAIErrorOut, "description": "unknown model; the message lists the models"},
    503: {"model": OpenAIErrorOut, "description": "an upstream is unavailable"},
    504: {"model": OpenAIErrorOut, "description": "the deadline ran out"},
}


def error_body(exc: RagfleetError) -> dict[str, Any]:
    """``exc`` in OpenAI's error shape; ``param`` is the field the message starts with (none
    for a missing or invalid key, whose code is OpenAI's ``invalid_api_key``)."""
    if isinstance(exc, Unauthenticated):
        return {
            "error": {
                "message": exc.message,
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    match = _FIELD.match(exc.message)
    param = match.group(1) if match else None
    if param is not None:
        param = _CORE_FIELDS.get(param.split("[")[0].split(".")[0], param)
    is_model = isinstance(exc, NotFound) and param == "model"
    return {
        "error": {
            "message": exc.message,
            "type": "invalid_request_error" if exc.http_status < 500 else "api_error",
            "param": param,
            "code": "model_not_found" if is_model else exc.grpc_code.name.lower(),
        }
    }


def _error_response(exc: RagfleetError) -> JSONResponse:
    return JSONResponse(status_code=exc.http_status, content=error_body(exc))


class _OpenAIRoute(APIRoute):
    """Answers these routes' failures in OpenAI's error shape (the app's handlers answer the
    other routes' in ragfleet's)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _error_response(invalid_body(exc.errors()))
            except HTTPException as exc:
                # FastAPI's own refusal of a body it cannot read (not UTF-8, say).
                return _error_response(InvalidInput(f"body: {exc.detail}"))
            except Exception as exc:
                return _error_response(sse.reported(exc))

        return route


def model_ids(settings: GatewaySettings) -> list[str]:
    return [m.name for m in settings.models] or [DEFAULT_MODEL]


def chain_model(name: str, settings: GatewaySettings) -> str:
    """The chain's model for an OpenAI model id ("" for the generator's default)."""
    ids = model_ids(settings)
    if name not in ids:
        raise NotFound(f"model: {name!r} does not exist; the models are {', '.join(ids)}")
    return name if settings.models else ""


def _text(message: ChatMessageIn, field: str) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise InvalidInput(
                f"{field}.content[{j}].type must be text (only text is supported); "
                f"got {part.type!r}"
            )
    return "".join(part.text or "" for part in content)


def conversation(
    messages: list[ChatMessageIn], settings: GatewaySettings
) -> tuple[str, tuple[ChatMessage, ...]]:
    """The question (the last message, from the user) and its history (the user and
    assistant messages before it; system and developer messages are left out)."""
    if not messages:
        raise InvalidInput("messages must not be empty")
    turns: list[ChatMessage] = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if message.role in ("system", "developer"):
            continue
        if message.role in ("tool", "function") or message.tool_calls or message.function_call:
            raise InvalidInput(
                f"{field}: tool and function calls are not supported (this API offers no tools)"
            )
        text = _text(message, field)
        check_message(message.role, text, settings, field)
        turns.append(ChatMessage(message.role, text))
    last = len(messages) - 1
    if messages[last].role != "user":
        raise InvalidInput(
            f"messages[{last}].role must be user: the last message is the question; "
            f"got {messages[last].role!r}"
        )
    question = check_question(turns[-1].content, settings, field=f"messages[{last}].content")
    return question, tuple(turns[:-1])


def _check_supported(body: ChatCompletionBody) -> None:
    """400 naming the first parameter this API cannot honour."""
    refused = [
        ("n", body.n not in (None, 1), "only 1 choice is supported"),
        ("tools", bool(body.tools), "tools are not supported"),
        ("functions", bool(body.functions), "functions are not supported"),
        ("tool_choice", body.tool_choice not in (None, "none"), "only none is supported"),
        ("function_call", body.function_call not in (None, "none"), "only none is supported"),
        (
            "response_format",
            body.response_format is not None and body.response_format.get("type") != "text",
            "only type text is supported",
        ),
        ("logprobs", bool(body.logprobs), "log probabilities are not supported"),
        ("stop", body.stop is not None, "not supported; the gateway's stop sequences apply"),
        ("stream_options", body.stream_options is not None and not body.stream, "needs stream"),
    ]
    for field, bad, why in refused:
        if bad:
            raise InvalidInput(f"{field}: {why}")


def ask_request(
    body: ChatCompletionBody, settings: GatewaySettings, principal: Principal
) -> domain.AskRequest:
    """The ask a chat completion request stands for, in the tenant ``principal`` allows
    (validated here as far as OpenAI's fields go; the core validates the rest)."""
    _check_supported(body)
    model = chain_model(body.model, settings)
    question, history = conversation(body.messages, settings)
    max_tokens = body.max_completion_tokens
    return domain.AskRequest(
        question=question,
        retrieval=body.retrieval.to_domain(principal),
        model=model,
        max_tokens=body.max_tokens if max_tokens is None else max_tokens,
        temperature=body.temperature,
        history=history,
    )


def _usage(answer: domain.Answer) -> UsageOut:
    u = answer.usage
    return UsageOut(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
        cost_usd=answer.cost_usd,
    )


def _finish(answer: domain.Answer) -> Any:
    return "length" if answer.finish_reason == "length" else "stop"


def completion(result: domain.AskResult, id_: str, created: int, model: str) -> ChatCompletionOut:
    answer = result.answer
    return ChatCompletionOut(
        id=id_,
        created=created,
        model=answer.model or model,
        choices=[ChoiceOut(message=MessageOut(content=answer.text), finish_reason=_finish(answer))],
        usage=_usage(answer),
        sources=SourceOut.all(result.sources),
        citations=CitationOut.all(answer.citations),
        rewrite=None if result.rewrite is None else RewriteOut.of(result.rewrite),
        history_trimmed=answer.history_trimmed,
        answer_id=answer.answer_id,
    )


async def _chunks(
    first: domain.AskEvent,
    events: AsyncGenerator[domain.AskEvent, None],
    chunk: Callable[..., ChatCompletionChunkOut],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The ask's events as chat completion chunks, then ``[DONE]``; a failure after the first
    chunk is a ``data: {"error": ...}`` event (the openai client raises it)."""
    rewrite: RewriteOut | None = None
    streamed = ""  # the content sent since the last restart

    async def all_events() -> AsyncIterator[domain.AskEvent]:
        yield first
        async for event in events:
            yield event

    try:
        async for event in all_events():
            if isinstance(event, domain.RewriteEvent):
                rewrite = RewriteOut.of(event.rewrite)
            elif isinstance(event, domain.SourcesEvent):
                delta = DeltaOut(role="assistant", content="")
                yield sse.message(
                    chunk(delta, sources=SourceOut.all(event.sources), rewrite=rewrite)
                )
            elif isinstance(event, TokenEvent):
                streamed += event.text
                yield sse.message(chunk(DeltaOut(content=event.text)))
            elif isinstance(event, domain.RestartEvent):
                streamed = ""
                yield sse.message(
                    chunk(
                        DeltaOut(), restart=RestartChunkOut(model=event.model, reason=event.reason)
                    )
                )
            else:
                answer = event.answer
                # A retrieval-only answer is not streamed as tokens: its text is sent here.
                rest = (
                    answer.text.removeprefix(streamed) if answer.text.startswith(streamed) else ""
                )
                yield sse.message(
                    chunk(
                        DeltaOut(content=rest or None),
                        finish_reason=_finish(answer),
                        model=answer.model or None,
                        citations=CitationOut.all(answer.citations),
                        history_trimmed=answer.history_trimmed,
                        answer_id=answer.answer_id,
                    )
                )
                if include_usage:
                    yield sse.message(chunk(None, usage=_usage(answer)))
        yield sse.message("[DONE]")
    except Exception as exc:
        yield sse.message(error_body(sse.reported(exc)))
    finally:
        await events.aclose()


def add_openai_routes(app: FastAPI, pipeline: RagPipeline, auth: Authenticator) -> None:
    """``POST /v1/chat/completions`` (under ``request_timeout_s``) and ``GET /v1/models``; the
    query role (the openai client sends its ``api_key`` as the bearer key)."""
    settings = pipeline.settings
    lister = Depends(rest_authorization(auth, Role.QUERY, "GET /v1/models"))
    chatter = Depends(rest_authorization(auth, Role.QUERY, "POST /v1/chat/completions"))
    created = int(time.time())
    router = APIRouter(route_class=_OpenAIRoute, tags=["OpenAI-compatible"])

    @router.get(
        "/v1/models",
        response_model=ModelsOut,
        responses={code: _ERRORS[code] for code in (401, 403)},
    )
    async def models(_: Principal = lister) -> ModelsOut:
        return ModelsOut(data=[ModelOut(id=m, created=created) for m in model_ids(settings)])

    @router.post(
        "/v1/chat/completions",
        response_model=ChatCompletionOut,
        responses={
            **_ERRORS,
            200: {
                "description": "the completion as JSON, or with stream=true a text/event-stream "
                "of ChatCompletionChunkOut events ending in 'data: [DONE]'",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
        },
    )
    async def chat_completions(body: ChatCompletionBody, principal: Principal = chatter) -> Any:
        request = ask_request(body, settings, principal)
        id_ = f"chatcmpl-{uuid.uuid4().hex}"
        events = pipeline.ask(request, Deadline.after(settings.request_timeout_s))
        if not body.stream:
            return completion(await collect(events), id_, int(time.time()), body.model)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        now = int(time.time())

        def chunk(
            delta: DeltaOut | None,
            *,
            finish_reason: Any = None,
            model: str | None = None,
            **extras: Any,
        ) -> ChatCompletionChunkOut:
            choices = (
                [] if delta is None else [ChunkChoiceOut(delta=delta, finish_reason=finish_reason)]
            )
            return ChatCompletionChunkOut(
                id=id_, created=now, model=model or body.model, choices=choices, **extras
            )

        # Retrieval runs before the first event: its failures still get a proper status.
        first = await anext(events)
        return sse.EventStream(_chunks(first, events, chunk, include_usage))

    app.include_router(router)
