"""Core validation and FakeEngine usage accounting (no models, no Ray)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Generator, Sequence

import pytest

from ragfleet.runtime.errors import InvalidInput, NotFound
from ragfleet_generator.core import (
    GenerationLimits,
    GenerationRequest,
    GeneratorCore,
    MessageInput,
    ServedModel,
)
from ragfleet_generator.engine import (
    Cancellation,
    ChatMessage,
    EngineKind,
    FinishReason,
    GenerationDone,
    GenerationEvent,
    Role,
    SamplingParams,
    TokenDelta,
)
from ragfleet_generator.fake_engine import FakeEngine

pytestmark = pytest.mark.unit

LIMITS = GenerationLimits(
    max_output_tokens=64,
    default_max_tokens=16,
    max_messages=4,
    max_message_chars=200,
    max_stop_sequences=2,
)
USER = MessageInput("user", "what is the gateway port")


def ticking_clock(step_s: float = 0.01) -> Callable[[], float]:
    counter = itertools.count()
    return lambda: next(counter) * step_s


def make_core(context_window: int = 4096) -> GeneratorCore:
    engine = FakeEngine(context_window=context_window, clock=ticking_clock())
    return GeneratorCore([ServedModel("tiny", EngineKind.FAKE, engine)], "tiny", LIMITS)


async def collect(core: GeneratorCore, request: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in core.generate(request)]


async def test_streams_deltas_then_done_with_usage() -> None:
    events = await collect(make_core(), GenerationRequest(messages=[USER]))
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert "".join(d.text for d in deltas) == "echo: what is the gateway port"
    done = events[-1]
    assert isinstance(done, GenerationDone)
    assert done.finish_reason is FinishReason.STOP
    assert done.usage.prompt_tokens == 6
    assert done.usage.completion_tokens == len(deltas) == 6


def test_fake_engine_usage_accounting_with_a_fixed_clock() -> None:
    # Clock reads: start 0.00, first token 0.01, finish 0.02 (later tokens read no clock).
    engine = FakeEngine(clock=ticking_clock())
    messages = [ChatMessage(Role.SYSTEM, "be brief"), ChatMessage(Role.USER, "a b c d e f")]
    events = list(engine.generate(messages, SamplingParams(max_tokens=3, temperature=0.0)))
    assert [e.text for e in events if isinstance(e, TokenDelta)] == ["echo:", " a", " b"]
    done = events[-1]
    assert isinstance(done, GenerationDone)
    assert done.finish_reason is FinishReason.LENGTH
    usage = done.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (10, 3)
    assert usage.time_to_first_token_ms == pytest.approx(10.0)
    assert usage.total_ms == pytest.approx(20.0)
    assert usage.tokens_per_second == pytest.approx(2 / 0.01)


async def test_stop_sequence_ends_generation() -> None:
    events = await collect(make_core(), GenerationRequest(messages=[USER], stop=["gateway"]))
    assert "".join(e.text for e in events if isinstance(e, TokenDelta)) == "echo: what is the"


async def test_default_model_and_max_tokens() -> None:
    core = make_core()
    request = GenerationRequest(messages=[USER])
    params = core.validate_params(request, core.resolve_model(""))
    assert params == SamplingParams(max_tokens=16, temperature=0.2, stop=())


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (GenerationRequest(messages=[]), "messages: at least one"),
        (GenerationRequest(messages=[USER] * 5), "messages: at most 4"),
        (GenerationRequest(messages=[MessageInput("robot", "hi")]), "messages[0].role"),
        (GenerationRequest(messages=[USER, MessageInput("user", "  ")]), "messages[1].content"),
        (GenerationRequest(messages=[MessageInput("user", "x" * 201)]), "at most 200 characters"),
        (GenerationRequest(messages=[USER], max_tokens=0), "max_tokens: must be between 1 and 64"),
        (GenerationRequest(messages=[USER], max_tokens=65), "max_tokens: must be between 1 and 64"),
        (GenerationRequest(messages=[USER], temperature=-0.1), "temperature: must be between 0"),
        (GenerationRequest(messages=[USER], temperature=2.5), "temperature: must be between 0"),
        (GenerationRequest(messages=[USER], temperature=float("nan")), "temperature"),
        (GenerationRequest(messages=[USER], stop=["a", "b", "c"]), "stop: at most 2"),
        (GenerationRequest(messages=[USER], stop=[""]), "stop: stop sequences must not be empty"),
    ],
)
async def test_invalid_requests_name_the_field_and_limit(
    request_: GenerationRequest, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await collect(make_core(), request_)
    assert field in caught.value.message


async def test_prompt_that_cannot_fit_the_context_window() -> None:
    core = make_core(context_window=20)
    with pytest.raises(InvalidInput, match="exceeds the context window of 20 tokens"):
        await collect(core, GenerationRequest(messages=[USER], max_tokens=15))


async def test_unknown_model_lists_available_ones() -> None:
    with pytest.raises(NotFound, match="available models: tiny"):
        await collect(make_core(), GenerationRequest(messages=[USER], model="gpt-9"))


def test_list_models_caps_output_by_the_context_window() -> None:
    (info,) = make_core(context_window=40).list_models()
    assert (info.name, info.engine, info.context_length, info.max_output_tokens) == (
        "tiny",
        EngineKind.FAKE,
        40,
        39,
    )


async def test_an_abandoned_stream_releases_the_model() -> None:
    core = make_core()
    stream = core.generate(GenerationRequest(messages=[USER]))
    first: Sequence[GenerationEvent] = [await anext(stream)]
    await stream.aclose()
    assert isinstance(first[0], TokenDelta)
    assert not core.resolve_model("tiny").lock.locked()
    assert len(await collect(core, GenerationRequest(messages=[USER]))) == 7


async def test_a_looping_generation_is_cut_with_finish_reason_repetition() -> None:
    # The fake engine echoes the question: a question that is one phrase over and over loops.
    looping = MessageInput("user", " ".join(f"[{i}]" for i in range(1, 40)))
    request = GenerationRequest(messages=[looping], max_tokens=64)
    events = await collect(make_core(), request)
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    done = events[-1]
    assert isinstance(done, GenerationDone) and done.finish_reason is FinishReason.REPETITION
    assert 10 <= len(deltas) < 20 and done.usage.completion_tokens == len(deltas)


class SlowPromptEngine(FakeEngine):
    """A fake whose first generation spends its first step (a prompt evaluation) waiting for
    its cancellation, 10 s at most; later generations are the fake's own."""

    def __init__(self) -> None:
        super().__init__()
        self.cancellations: list[Cancellation] = []
        self.aborted_after_s: float | None = None

    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        cancellation: Cancellation | None = None,
    ) -> Generator[GenerationEvent, None, None]:
        assert cancellation is not None
        self.cancellations.append(cancellation)
        if len(self.cancellations) == 1:
            aborted = threading.Event()
            cancellation.on_cancel(aborted.set)
            start = time.monotonic()
            if aborted.wait(timeout=10):
                self.aborted_after_s = time.monotonic() - start
                return
        yield from super().generate(messages, params)


async def test_a_cancelled_generation_is_aborted_within_its_step_and_frees_the_model() -> None:
    engine = SlowPromptEngine()
    core = GeneratorCore([ServedModel("tiny", EngineKind.FAKE, engine)], "tiny", LIMITS)
    request = GenerationRequest(messages=[USER])
    caller = asyncio.create_task(collect(core, request))
    await asyncio.sleep(0.2)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    start = time.monotonic()
    events = await asyncio.wait_for(collect(core, request), timeout=5)
    assert time.monotonic() - start < 1.0
    assert engine.aborted_after_s is not None and engine.aborted_after_s < 1.0
    assert isinstance(events[-1], GenerationDone)
    # A generation read to its end is not cancelled.
    assert [c.cancelled for c in engine.cancellations] == [True, False]


def test_cancellation_runs_each_callback_once_even_when_registered_late() -> None:
    cancellation = Cancellation()
    calls: list[str] = []
    cancellation.on_cancel(lambda: calls.append("early"))
    assert not cancellation.cancelled and calls == []
    cancellation.cancel()
    cancellation.cancel()
    cancellation.on_cancel(lambda: calls.append("late"))
    assert cancellation.cancelled and calls == ["early", "late"]
