"""A deterministic engine for tests and model-free deployments (``RAGFLEET_GENERATOR_ENGINE=fake``).

Tokens are whitespace-separated words. The prompt is ``"<role>: <content>"`` per message; the
reply is ``"echo:"`` followed by the words of the last user message, cut at ``max_tokens`` or at
the first stop sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence

from ragfleet_generator.engine import (
    Cancellation,
    ChatMessage,
    FinishReason,
    GenerationDone,
    GenerationEvent,
    Role,
    SamplingParams,
    TokenDelta,
    UsageMeter,
)


class FakeEngine:
    """Satisfies ``LLMEngine`` without a model; ``clock`` makes timings reproducible."""

    def __init__(
        self, context_window: int = 4096, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._context_window = context_window
        self._clock = clock

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(f"{m.role}: {m.content}".split()) for m in messages)

    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        cancellation: Cancellation | None = None,
    ) -> Generator[GenerationEvent, None, None]:
        meter = UsageMeter(self._clock)
        prompt_tokens = self.count_prompt_tokens(messages)
        question = next((m.content for m in reversed(messages) if m.role is Role.USER), "")
        words = ["echo:", *question.split()]
        emitted: list[str] = []
        finish = FinishReason.STOP
        for word in words:
            if cancellation is not None and cancellation.cancelled:
                return
            if len(emitted) == params.max_tokens:
                finish = FinishReason.LENGTH
                break
            if any(stop in " ".join([*emitted, word]) for stop in params.stop):
                break
            emitted.append(word)
            meter.token()
            yield TokenDelta(word if len(emitted) == 1 else f" {word}")
        yield GenerationDone(finish, meter.finish(prompt_tokens, len(emitted)))
