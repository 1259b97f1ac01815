"""The engine interface every LLM backend implements, and the events it streams.

An engine turns chat messages into a stream of ``TokenDelta`` events followed by exactly one
``GenerationDone`` carrying usage and timing. Engines are synchronous and single-request: the
core serialises calls to one engine and runs them off the event loop.

A generation whose caller went away is stopped twice over: the core closes the iterator after
the step in progress, and it cancels the generation's ``Cancellation`` at once, which an engine
uses to cut short a step that would otherwise run on (llama.cpp aborts its prompt evaluation,
vLLM aborts the request, the OpenAI engine closes its HTTP stream).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ragfleet.domain import Usage


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    # Cut by the core's RepetitionGuard: the model had fallen into a loop.
    REPETITION = "repetition"


class EngineKind(enum.StrEnum):
    """Which backend serves a model: ``llama_cpp`` (GGUF on CPU, the default), ``vllm`` (GPU),
    ``openai`` (any OpenAI-compatible endpoint); ``fake`` is deterministic and loads nothing."""

    LLAMA_CPP = "llama_cpp"
    VLLM = "vllm"
    OPENAI = "openai"
    FAKE = "fake"


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """``max_tokens`` is the resolved limit (never 0); ``stop`` ends generation, not emitted."""

    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenDelta:
    text: str


@dataclass(frozen=True)
class GenerationDone:
    finish_reason: FinishReason
    usage: Usage


GenerationEvent = TokenDelta | GenerationDone


class Cancellation:
    """Set once, from any thread, when the caller of a generation went away. Engines poll
    ``cancelled`` from their own thread or register a callback with ``on_cancel``."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        # Guards the callbacks against a cancel that races a registration.
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        """Marks the generation cancelled and runs the callbacks (each once, in this thread)."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Runs ``callback`` on cancel; at once when the generation is already cancelled."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()


class LLMEngine(Protocol):
    """A loaded model that generates chat completions."""

    @property
    def context_window(self) -> int:
        """Tokens available to prompt plus completion."""
        ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens the chat-templated prompt for ``messages`` takes."""
        ...

    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        cancellation: Cancellation | None = None,
    ) -> Generator[GenerationEvent, None, None]:
        """Yields token deltas, then one GenerationDone. Closing the iterator stops generating;
        ``cancellation`` stops the step in progress too (the iterator then ends early)."""
        ...


@dataclass
class UsageMeter:
    """Measures time to first token and throughput of one generation."""

    clock: Callable[[], float] = time.perf_counter
    _started: float = field(init=False, default=0.0)
    _first_token: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._started = self.clock()

    def token(self) -> None:
        if self._first_token is None:
            self._first_token = self.clock()

    def finish(self, prompt_tokens: int, completion_tokens: int) -> Usage:
        """Throughput counts decoding only: tokens after the first over the time after it."""
        now = self.clock()
        first = self._first_token if self._first_token is not None else now
        decode_s = now - first
        tokens_per_second = (completion_tokens - 1) / decode_s if completion_tokens > 1 else 0.0
        if decode_s <= 0:
            tokens_per_second = 0.0
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            time_to_first_token_ms=(first - self._started) * 1000.0,
            total_ms=(now - self._started) * 1000.0,
            tokens_per_second=tokens_per_second,
        )
