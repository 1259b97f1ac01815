"""``LLMEngine`` over any OpenAI-compatible chat completions endpoint (a closed model, or vLLM
or llama.cpp serving elsewhere), with the official ``openai`` SDK.

Streaming asks for usage in the final chunk (``stream_options.include_usage``); a server that
does not send it gets the estimates below. The SDK's own retries are off: failing over to
another model is the gateway's fallback chain's decision, and hidden retries would only spend
its deadline. Errors are mapped to domain errors; the API key never appears in them or in logs.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from pathlib import Path

import openai
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from ragfleet.runtime.errors import (
    FailedPrecondition,
    InvalidInput,
    ModelLoadError,
    RagfleetError,
    Unavailable,
)
from ragfleet_generator.engine import (
    Cancellation,
    ChatMessage,
    FinishReason,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenDelta,
    UsageMeter,
)

# Keyless servers (vLLM, llama.cpp) accept any key, but the SDK refuses to run without one.
PLACEHOLDER_API_KEY = "EMPTY"
# Prompt size estimate for the context-window check, since the API has no tokenize call:
# English averages about 4 characters per token; each message adds a few template tokens.
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4


def read_api_key(env_name: str | None, key_file: Path | None, environ: dict[str, str]) -> str:
    """The key from the environment variable ``env_name`` or the file ``key_file`` (stripped);
    the placeholder when neither is configured. ModelLoadError names what is missing, never
    the key."""
    if env_name is not None:
        key = environ.get(env_name, "").strip()
        if not key:
            raise ModelLoadError(f"the API key variable {env_name} is not set or empty")
        return key
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise ModelLoadError(
                f"cannot read the API key file {key_file}: {exc.strerror}"
            ) from None
        if not key:
            raise ModelLoadError(f"the API key file {key_file} is empty")
        return key
    return PLACEHOLDER_API_KEY


def map_openai_error(exc: openai.OpenAIError, endpoint: str) -> RagfleetError:
    """Overload, server faults and connection failures are Unavailable (worth another model or
    a retry); a rejected request is InvalidInput; bad credentials, a missing model or another
    client-side refusal are FailedPrecondition (the deployment's configuration is wrong)."""
    if isinstance(exc, openai.APITimeoutError):
        return Unavailable(f"{endpoint} timed out")
    if isinstance(exc, openai.APIConnectionError):
        return Unavailable(f"{endpoint} is unreachable: {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = f"{endpoint} answered {status}: {exc.message}"
        if status == 429 or status >= 500:
            return Unavailable(detail)
        if status in (400, 422):
            return InvalidInput(detail)
        return FailedPrecondition(detail)
    return Unavailable(f"{endpoint} failed: {type(exc).__name__}")


class OpenAIEngine:
    """Chat completions from ``model`` at the client's base URL. Safe to call from one thread at a
    time (the core's contract); the server does the batching."""

    def __init__(self, client: openai.OpenAI, model: str, context_window: int) -> None:
        self._client = client
        self._model = model
        self._context_window = context_window
        self._endpoint = f"{client.base_url} model {model!r}"

    @classmethod
    def connect(
        cls,
        base_url: str,
        model: str,
        api_key: str,
        context_window: int,
        timeout_s: float,
        connect_timeout_s: float,
    ) -> OpenAIEngine:
        """Builds the client; nothing is sent until the first generation."""
        client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key,
            timeout=openai.Timeout(timeout_s, connect=connect_timeout_s),
            max_retries=0,
        )
        return cls(client, model, context_window)

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """An estimate (see ``_CHARS_PER_TOKEN``); the final usage carries the server's count."""
        chars = sum(len(m.content) for m in messages)
        return math.ceil(chars / _CHARS_PER_TOKEN) + _TOKENS_PER_MESSAGE * len(messages)

    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        cancellation: Cancellation | None = None,
    ) -> Generator[GenerationEvent, None, None]:
        """Closing the iterator or cancelling ``cancellation`` closes the HTTP stream, which
        ends the request at the server (OpenAI-compatible servers, vLLM's included, abort a
        generation whose client disconnected)."""
        meter = UsageMeter()
        payload: list[ChatCompletionMessageParam] = [
            {"role": str(m.role), "content": m.content}  # type: ignore[misc]
            for m in messages
        ]
        try:
            stream = self._client.chat.completions.create(
                model=self._model,
                messages=payload,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                stop=list(params.stop) or openai.omit,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.OpenAIError as exc:
            raise map_openai_error(exc, self._endpoint) from None
        if cancellation is not None:
            # From the cancelling thread: the read this thread is blocked in then fails.
            cancellation.on_cancel(stream.close)
        finish = FinishReason.STOP
        deltas = 0
        reported: ChatCompletionChunk | None = None
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    reported = chunk
                for choice in chunk.choices:
                    if choice.delta.content:
                        meter.token()
                        deltas += 1
                        yield TokenDelta(choice.delta.content)
                    if choice.finish_reason == "length":
                        finish = FinishReason.LENGTH
        except Exception as exc:
            if cancellation is not None and cancellation.cancelled:
                return  # whatever the read of the closed stream raised; nobody is waiting
            if isinstance(exc, openai.OpenAIError):
                raise map_openai_error(exc, self._endpoint) from None
            raise
        finally:
            stream.close()
        if reported is not None and reported.usage is not None:
            prompt_tokens = reported.usage.prompt_tokens
            completion_tokens = reported.usage.completion_tokens
        else:
            # No usage from the server: the prompt estimate, and one token per streamed delta
            # (servers send a delta per token).
            prompt_tokens = self.count_prompt_tokens(messages)
            completion_tokens = deltas
        yield GenerationDone(finish, meter.finish(prompt_tokens, completion_tokens))
