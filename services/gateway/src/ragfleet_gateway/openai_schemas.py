"""The OpenAI-compatible routes' bodies (pydantic): OpenAI's chat completions and models
shapes, plus ragfleet's documented extras (``retrieval`` in the request; ``sources``,
``citations``, ``rewrite`` and ``history_trimmed`` in the response). The routes are in
``ragfleet_gateway.openai_api``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragfleet_gateway.rest_schemas import CitationOut, RetrievalOptions, RewriteOut, SourceOut


# --- request -----------------------------------------------------------------------------
class ContentPartIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """A message as OpenAI's clients send it; fields this API does not use are ignored, and
    those it cannot honour (tool calls) are refused."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[ContentPartIn] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None


class StreamOptionsIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    """Unknown fields are refused (400 naming them). ``top_p``, the penalties, ``seed``,
    ``user``, ``metadata``, ``store`` and ``parallel_tool_calls`` are accepted and not used."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="one of GET /v1/models")
    messages: list[ChatMessageIn] = Field(
        description="the conversation, ending with the user's question; earlier user and "
        "assistant messages are its history; system and developer messages are not used (the "
        "gateway's grounded prompt applies)"
    )
    stream: bool = False
    stream_options: StreamOptionsIn | None = None
    max_completion_tokens: int | None = None
    max_tokens: int | None = Field(
        default=None, description="used when max_completion_tokens is unset"
    )
    temperature: float | None = None
    n: int | None = Field(default=None, description="only 1")
    tools: list[dict[str, Any]] | None = Field(default=None, description="not supported")
    tool_choice: str | dict[str, Any] | None = Field(default=None, description="none only")
    functions: list[dict[str, Any]] | None = Field(default=None, description="not supported")
    function_call: str | dict[str, Any] | None = Field(default=None, description="none only")
    response_format: dict[str, Any] | None = Field(default=None, description="type text only")
    logprobs: bool | None = Field(default=None, description="not supported")
    stop: str | list[str] | None = Field(
        default=None, description="not supported: the gateway's stop sequences apply"
    )
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    retrieval: RetrievalOptions = Field(
        default_factory=RetrievalOptions,
        description="ragfleet extra: retrieval options as in POST /v1/ask (top_k, mode, "
        "tenant, filter, rerank, ...); the openai client sends it with extra_body",
    )


# --- responses ---------------------------------------------------------------------------
class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None = Field(
        default=None,
        description="ragfleet extra: USD the answer cost, every model tried included (priced by "
        "the gateway's price table); null without one",
    )


class MessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChoiceOut(BaseModel):
    index: int = 0
    message: MessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(
        description="the model that answered (a fallback after the named one "
        "failed); the named model when none answered"
    )
    choices: list[ChoiceOut]
    usage: UsageOut
    sources: list[SourceOut] = Field(
        description="ragfleet extra: the passages shown to the "
        "model, numbered as the answer's [n] markers"
    )
    citations: list[CitationOut] = Field(
        description="ragfleet extra: the sources the answer cites (checked against the passages)"
    )
    rewrite: RewriteOut | None = Field(
        description="ragfleet extra: the standalone question "
        "retrieval searched for, when there was a history"
    )
    history_trimmed: int = Field(
        description="ragfleet extra: earlier messages left out of the "
        "prompt, the oldest first, to fit the history budget"
    )
    answer_id: str = Field(
        default="",
        description="ragfleet extra: names the answer in POST /v1/feedback (empty when the "
        "gateway records no answers)",
    )


class DeltaOut(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoiceOut(BaseModel):
    index: int = 0
    delta: DeltaOut
    finish_reason: Literal["stop", "length"] | None = None


class RestartChunkOut(BaseModel):
    model: str
    reason: str


class ChatCompletionChunkOut(BaseModel):
    """One ``data:`` event of a streamed completion. The first chunk carries the role and the
    ``sources`` (and ``rewrite``); the one with ``finish_reason`` carries ``citations``,
    ``history_trimmed`` and ``answer_id``; with ``stream_options.include_usage`` a last chunk
    has no choices and the ``usage``. A chunk with ``restart`` says a model failed mid-answer:
    discard the content so far (the next model answers from the start)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoiceOut]
    usage: UsageOut | None = None
    sources: list[SourceOut] | None = None
    rewrite: RewriteOut | None = None
    citations: list[CitationOut] | None = None
    history_trimmed: int | None = None
    answer_id: str | None = None
    restart: RestartChunkOut | None = None


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragfleet"


class ModelsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error (4xx) or api_error (5xx)")
    param: str | None = Field(description="the request field at fault, when one is")
    code: str | None = Field(description="model_not_found, or the gRPC code name in lower case")


class OpenAIErrorOut(BaseModel):
    error: OpenAIErrorDetail
