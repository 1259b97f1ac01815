"""``ChatRagfleet``: the gateway's Ask RPC (retrieval, then a grounded answer with citations)
as a LangChain chat model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from langchain_ragfleet._connection import Connection
from langchain_ragfleet._gateway import API_KEY_ENV, GatewayClient, default_api_key
from langchain_ragfleet.retrievers import gateway_address, retrieval_options
from ragfleet.common.v1 import common_pb2
from ragfleet.gateway.v1 import gateway_pb2
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import RagfleetError

PER_CALL_PARAMETERS = frozenset({"model", "max_tokens", "temperature"})


def conversation_of(
    messages: Sequence[BaseMessage],
) -> tuple[str, list[common_pb2.ChatMessage]]:
    """The question (the last message, a human one) and the conversation before it as Ask's
    history. System messages are left out: the gateway answers with its own grounded prompt, as
    its OpenAI-compatible route does."""
    turns = [m for m in messages if not isinstance(m, SystemMessage)]
    if not turns or not isinstance(turns[-1], HumanMessage):
        kinds = ", ".join(m.type for m in messages) or "none"
        raise ValueError(
            "ChatRagfleet asks the gateway the last message, which must be a human message "
            f"(system messages are left out); got messages: {kinds}"
        )
    history = []
    for i, message in enumerate(turns[:-1]):
        if not isinstance(message, HumanMessage | AIMessage):
            raise ValueError(
                f"messages[{i}] is a {message.type} message; the conversation before the "
                "question may hold only human and AI messages"
            )
        role = "user" if isinstance(message, HumanMessage) else "assistant"
        history.append(common_pb2.ChatMessage(role=role, content=message.text))
    question = turns[-1].text.strip()
    if not question:
        raise ValueError("the question (the last human message's text) is empty")
    return question, history


class StopScanner:
    """Cuts streamed text before the first of ``stop``. Text that could still be the start of
    a stop sequence is held back until the next delta decides."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """The part of ``delta`` (with what was held back) that is certainly answer text."""
        if self.stopped:
            return ""
        text = self._held + delta
        cut = cut_at_stop(text, self._stop)
        if len(cut) < len(text):
            self.stopped, self._held = True, ""
            return cut
        keep = max((_overlap(text, s) for s in self._stop), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, once no more text comes."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of ``stop``."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that begins ``stop``."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0


def _source(source: gateway_pb2.Source) -> dict[str, Any]:
    chunk = source.hit.chunk
    return {
        "number": source.number,
        "chunk_id": chunk.id,
        "source": chunk.source,
        "title": chunk.title,
        "section": chunk.section,
        "text": chunk.text,
        "score": source.hit.score,
    }


def _citation(citation: gateway_pb2.Citation) -> dict[str, Any]:
    return {
        "number": citation.number,
        "chunk_id": citation.chunk_id,
        "source": citation.source,
        "title": citation.title,
        "section": citation.section,
    }


class AskTurn:
    """Folds one Ask's events into LangChain's message chunks: token deltas (cut at the stop
    sequences) while they stream, then the answer's metadata and usage."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = stop
        self._scanner = StopScanner(stop)
        self._streamed = ""
        self._sources: list[dict[str, Any]] = []
        self._restarts: list[dict[str, str]] = []
        self._rewrite: dict[str, str] | None = None
        self.answer: gateway_pb2.Answer | None = None

    def feed(self, event: gateway_pb2.AskEvent) -> str:
        """The answer text ``event`` adds (empty for events that carry none)."""
        kind = event.WhichOneof("event")
        if kind == "sources":
            self._sources = [_source(s) for s in event.sources.sources]
        elif kind == "rewrite":
            self._rewrite = {
                "query": event.rewrite.query,
                "method": gateway_pb2.RewriteMethod.Name(event.rewrite.method),
                "reason": event.rewrite.reason,
            }
        elif kind == "restart":
            self._restarts.append({"model": event.restart.model, "reason": event.restart.reason})
        elif kind == "answer":
            self.answer = event.answer
        elif kind == "token":
            return self._emit(event.token)
        return ""

    def _emit(self, text: str) -> str:
        out = self._scanner.feed(text)
        self._streamed += out
        return out

    def _answer(self) -> gateway_pb2.Answer:
        if self.answer is None:
            raise RagfleetError("the gateway's Ask ended without an answer")
        return self.answer

    def tail(self) -> str:
        """What the final answer adds to the streamed text: the held-back end, and any text
        the gateway appended (citation markers it completed, or a whole answer that was not
        streamed, such as a retrieval-only one)."""
        answer = self._answer()
        rest = answer.text[len(self._streamed) :] if answer.text.startswith(self._streamed) else ""
        return self._emit(rest) + self._scanner.flush() if rest else self._scanner.flush()

    def text(self) -> str:
        """The whole answer, for a call that did not stream: the final text, cut at a stop."""
        return cut_at_stop(self._answer().text, self._stop)

    def metadata(self, model: str) -> dict[str, Any]:
        answer = self._answer()
        return {
            "model_name": answer.model or model,
            "model_provider": "ragfleet",
            "finish_reason": "stop",
            "answered": answer.answered,
            "citations": [_citation(c) for c in answer.citations],
            "sources": self._sources,
            "degraded": answer.degraded,
            "degraded_reasons": list(answer.degraded_reasons),
            "restarted": answer.restarted,
            "restarts": self._restarts,
            "timings_ms": {t.stage: t.ms for t in answer.timings},
            "rewrite": self._rewrite,
            "history_trimmed": answer.history_trimmed,
            "answer_id": answer.answer_id,
            "route": {
                "policy": answer.route.policy,
                "model": answer.route.model,
                "reason": answer.route.reason,
                "escalated": answer.route.escalated,
            },
        }

    def usage(self) -> UsageMetadata:
        usage = self._answer().usage
        return UsageMetadata(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        )


class ChatRagfleet(BaseChatModel):
    """Grounded answers from the ragfleet gateway's Ask RPC: it retrieves passages for the
    question, has a model of its fallback chain answer from them, and cites them.

    The input is one human message, the question (the gateway answers standalone questions with
    its own system prompt; other messages raise ``ValueError``). The reply's
    ``response_metadata`` holds ``citations`` and ``sources`` (the passages shown to the model,
    with their numbers), ``answered`` (false when the documents do not answer it), ``degraded``,
    ``model_name``, per-stage ``timings_ms``, the router's ``route`` and the ``answer_id`` that
    the gateway's Feedback takes (empty when it records no answers); ``usage_metadata`` holds
    the tokens. Streaming yields the answer's tokens as the model writes them; if a model fails
    mid-answer the gateway restarts with the next one and ``response_metadata["restarted"]``
    says the streamed text includes the discarded start (``invoke`` returns only the final
    answer). ``stop`` is applied here, to the answer's text; ``model`` (per call too) picks the
    first model of the gateway's chain; ``k``, ``mode``, ``tenant``, ``metadata_filter`` and
    ``rerank`` are the retrieval options of ``RagfleetRetriever``. ``api_key`` (default
    ``RAGFLEET_API_KEY``) is sent with every call; its role must include query.

        chat = ChatRagfleet(address="127.0.0.1:50050")
        reply = chat.invoke("How does the gateway shut down?")
        print(reply.content, reply.response_metadata["citations"])
    """

    model_config = ConfigDict(populate_by_name=True)

    address: str = Field(default_factory=gateway_address)
    api_key: SecretStr | None = Field(
        default_factory=default_api_key, description="the gateway's API key; default from env"
    )
    model_name: str = Field(
        default="", alias="model", description="the chain's first model; empty: the gateway's"
    )
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    timeout: float = Field(default=120.0, gt=0, description="seconds one call may take")
    max_retries: int = Field(
        default=2, ge=0, description="retries of an Ask refused UNAVAILABLE before any answer"
    )
    streaming: bool = False
    k: int | None = Field(default=None, ge=1)
    mode: Literal["lexical", "dense", "hybrid"] | None = None
    tenant: str = ""
    metadata_filter: dict[str, str] = Field(default_factory=dict)
    rerank: bool | None = None

    _connection: Connection[GatewayClient] = PrivateAttr()

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": API_KEY_ENV}

    def model_post_init(self, context: Any, /) -> None:
        address, attempts, api_key = self.address, self.max_retries + 1, self.api_key
        self._connection = Connection(lambda: GatewayClient.connect(address, attempts, api_key))

    @property
    def _llm_type(self) -> str:
        return "ragfleet"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "model_name": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="ragfleet",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
        )
        if (temperature := kwargs.get("temperature", self.temperature)) is not None:
            params["ls_temperature"] = temperature
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if stop := stop or self.stop:
            params["ls_stop"] = stop
        return params

    def _request(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> gateway_pb2.AskRequest:
        unknown = set(kwargs) - PER_CALL_PARAMETERS
        if unknown:
            raise ValueError(
                f"ChatRagfleet does not take {', '.join(sorted(unknown))} (per call it takes "
                f"{', '.join(sorted(PER_CALL_PARAMETERS))}; tools are not offered)"
            )
        question, history = conversation_of(messages)
        request = gateway_pb2.AskRequest(
            question=question,
            history=history,
            model=kwargs.get("model") or self.model_name,
            retrieval=retrieval_options(
                self.k, self.mode, self.tenant, self.metadata_filter, self.rerank
            ),
        )
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            request.max_tokens = max_tokens
        if (temperature := kwargs.get("temperature", self.temperature)) is not None:
            request.temperature = temperature
        return request

    def _model(self, kwargs: dict[str, Any]) -> str:
        return str(kwargs.get("model") or self.model_name)

    def _result(self, turn: AskTurn, model: str) -> ChatResult:
        message = AIMessage(
            content=turn.text(),
            response_metadata=turn.metadata(model),
            usage_metadata=turn.usage(),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _last_chunk(self, turn: AskTurn, model: str) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=turn.tail(),
                response_metadata=turn.metadata(model),
                usage_metadata=turn.usage(),
                chunk_position="last",
            )
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request, turn = self._request(messages, kwargs), AskTurn(stop or self.stop or [])
        deadline = Deadline.after(self.timeout)
        for event in self._connection.iterate(lambda client: client.ask(request, deadline)):
            turn.feed(event)
        return self._result(turn, self._model(kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request, turn = self._request(messages, kwargs), AskTurn(stop or self.stop or [])
        client = self._connection.client()
        async for event in client.ask(request, Deadline.after(self.timeout)):
            turn.feed(event)
        return self._result(turn, self._model(kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request, turn = self._request(messages, kwargs), AskTurn(stop or self.stop or [])
        deadline = Deadline.after(self.timeout)
        for event in self._connection.iterate(lambda client: client.ask(request, deadline)):
            if text := turn.feed(event):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        yield self._last_chunk(turn, self._model(kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request, turn = self._request(messages, kwargs), AskTurn(stop or self.stop or [])
        client = self._connection.client()
        async for event in client.ask(request, Deadline.after(self.timeout)):
            if text := turn.feed(event):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        yield self._last_chunk(turn, self._model(kwargs))
