"""The generator's domain core: request validation, model selection and streaming generation.

It knows nothing about gRPC or Ray; the Serve deployment converts protos to these types and
maps the domain errors raised here to status codes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from ragfleet.runtime.errors import InvalidInput, NotFound
from ragfleet.runtime.logging import get_logger
from ragfleet_generator.engine import (
    Cancellation,
    ChatMessage,
    EngineKind,
    FinishReason,
    GenerationDone,
    GenerationEvent,
    LLMEngine,
    Role,
    SamplingParams,
    TokenDelta,
    UsageMeter,
)
from ragfleet_generator.repetition import RepetitionGuard
from ragfleet_generator.settings import GeneratorSettings

log = get_logger(__name__)
T = TypeVar("T")

MAX_TEMPERATURE = 2.0
DEFAULT_TEMPERATURE = 0.2


@dataclass(frozen=True)
class GenerationLimits:
    """Documented request limits; see ``GeneratorSettings`` for their defaults."""

    max_output_tokens: int
    default_max_tokens: int
    max_messages: int
    max_message_chars: int
    max_stop_sequences: int

    @classmethod
    def from_settings(cls, settings: GeneratorSettings) -> GenerationLimits:
        return cls(
            max_output_tokens=settings.max_output_tokens,
            default_max_tokens=settings.default_max_tokens,
            max_messages=settings.max_messages,
            max_message_chars=settings.max_message_chars,
            max_stop_sequences=settings.max_stop_sequences,
        )


@dataclass(frozen=True)
class MessageInput:
    """A chat message as the caller sent it, before validation."""

    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """``model`` empty means the default model; ``max_tokens`` None means the default limit;
    ``temperature`` None means ``DEFAULT_TEMPERATURE``."""

    messages: Sequence[MessageInput]
    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    stop: Sequence[str] = ()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    engine: EngineKind
    context_length: int
    max_output_tokens: int


@dataclass
class ServedModel:
    """A loaded engine with the executor and lock that keep it to one generation at a time.

    One worker thread per model keeps blocking inference off the event loop, and the lock keeps
    two streams from interleaving on one engine (a llama.cpp context holds one sequence).
    """

    name: str
    kind: EngineKind
    engine: LLMEngine
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
    )

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


class GeneratorCore:
    """Validates generation requests and streams events from the requested model's engine."""

    def __init__(
        self, models: Sequence[ServedModel], default_model: str, limits: GenerationLimits
    ) -> None:
        if not models:
            raise ValueError("at least one model must be served")
        self._models: Mapping[str, ServedModel] = {m.name: m for m in models}
        if default_model not in self._models:
            raise ValueError(f"default model {default_model!r} is not among the served models")
        self._default_model = default_model
        self._limits = limits

    @property
    def default_model(self) -> str:
        return self._default_model

    def list_models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=m.name,
                engine=m.kind,
                context_length=m.engine.context_window,
                max_output_tokens=self._max_tokens_limit(m),
            )
            for m in self._models.values()
        ]

    def resolve_model(self, name: str) -> ServedModel:
        """The served model called ``name`` (the default when empty); NotFound otherwise."""
        model = self._models.get(name or self._default_model)
        if model is None:
            raise NotFound(
                f"model: {name!r} is not served; available models: {', '.join(self._models)}"
            )
        return model

    def validate_messages(self, messages: Sequence[MessageInput]) -> list[ChatMessage]:
        limits = self._limits
        if not messages:
            raise InvalidInput("messages: at least one message is required")
        if len(messages) > limits.max_messages:
            raise InvalidInput(
                f"messages: at most {limits.max_messages} messages are allowed, got {len(messages)}"
            )
        roles = ", ".join(r.value for r in Role)
        validated: list[ChatMessage] = []
        for i, message in enumerate(messages):
            try:
                role = Role(message.role)
            except ValueError:
                raise InvalidInput(
                    f"messages[{i}].role: {message.role!r} is not one of {roles}"
                ) from None
            if not message.content.strip():
                raise InvalidInput(f"messages[{i}].content: must not be empty")
            if len(message.content) > limits.max_message_chars:
                raise InvalidInput(
                    f"messages[{i}].content: at most {limits.max_message_chars} characters "
                    f"are allowed, got {len(message.content)}"
                )
            validated.append(ChatMessage(role, message.content))
        return validated

    def validate_params(self, request: GenerationRequest, model: ServedModel) -> SamplingParams:
        limits = self._limits
        max_limit = self._max_tokens_limit(model)
        default_max_tokens = min(limits.default_max_tokens, max_limit)
        if request.max_tokens is not None and not 1 <= request.max_tokens <= max_limit:
            raise InvalidInput(
                f"max_tokens: must be between 1 and {max_limit} for model {model.name!r} "
                f"(unset means the default, {default_max_tokens}); got {request.max_tokens}"
            )
        temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
        if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
            raise InvalidInput(
                f"temperature: must be between 0 and {MAX_TEMPERATURE}, got {temperature}"
            )
        if len(request.stop) > limits.max_stop_sequences:
            raise InvalidInput(
                f"stop: at most {limits.max_stop_sequences} stop sequences are allowed, "
                f"got {len(request.stop)}"
            )
        if any(not s for s in request.stop):
            raise InvalidInput("stop: stop sequences must not be empty")
        max_tokens = default_max_tokens if request.max_tokens is None else request.max_tokens
        return SamplingParams(
            max_tokens=max_tokens, temperature=temperature, stop=tuple(request.stop)
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Yields token deltas, then one GenerationDone. A generation that falls into a loop
        (``RepetitionGuard``) is stopped there and ends with finish reason ``repetition``. A
        caller that stops iterating (cancelled, or closing this generator) stops the engine
        within its step in progress (``Cancellation``), then frees the model.

        Raises NotFound for a model that is not served and InvalidInput (before anything is
        yielded) for a request outside the limits, including a prompt that does not leave
        ``max_tokens`` of room in the model's context window.
        """
        model = self.resolve_model(request.model)
        messages = self.validate_messages(request.messages)
        params = self.validate_params(request, model)
        async with model.lock:
            prompt_tokens = await model.run(model.engine.count_prompt_tokens, messages)
            window = model.engine.context_window
            if prompt_tokens + params.max_tokens > window:
                raise InvalidInput(
                    f"messages: the prompt is {prompt_tokens} tokens; with max_tokens "
                    f"{params.max_tokens} it exceeds the context window of {window} tokens "
                    f"of model {model.name!r}"
                )
            cancellation = Cancellation()
            events = model.engine.generate(messages, params, cancellation)
            guard = RepetitionGuard()
            meter = UsageMeter()
            completion_tokens = 0
            finished = False
            try:
                while (event := await model.run(next, events, None)) is not None:
                    finished = isinstance(event, GenerationDone)
                    yield event
                    if isinstance(event, TokenDelta):
                        meter.token()
                        completion_tokens += 1
                        if guard.feed(event.text):
                            finished = True
                            yield GenerationDone(
                                FinishReason.REPETITION,
                                meter.finish(prompt_tokens, completion_tokens),
                            )
                            return
            except (asyncio.CancelledError, GeneratorExit):
                if not finished:
                    # The caller went away (cancelled, deadline, closed stream): the step in
                    # progress stops early instead of running to its end.
                    log.info("generation_cancelled", model=model.name, tokens=completion_tokens)
                    cancellation.cancel()
                raise
            finally:
                # Queued behind any step still running, so the engine is never entered twice.
                model.executor.submit(events.close)

    def _max_tokens_limit(self, model: ServedModel) -> int:
        return min(self._limits.max_output_tokens, model.engine.context_window - 1)
