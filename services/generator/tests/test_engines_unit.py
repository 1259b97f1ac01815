"""Chat formats, OpenAI error mapping and VllmEngine's streaming logic with a fake vLLM engine
(no vLLM, no server, no model)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from ragfleet.runtime.errors import (
    FailedPrecondition,
    InvalidInput,
    ModelLoadError,
    RagfleetError,
    Unavailable,
)
from ragfleet_generator.chat_templates import ChatFamily, render_llama2, render_mistral
from ragfleet_generator.engine import (
    Cancellation,
    ChatMessage,
    GenerationDone,
    Role,
    SamplingParams,
    TokenDelta,
)
from ragfleet_generator.openai_engine import map_openai_error
from ragfleet_generator.vllm_engine import EngineLoop, VllmEngine, make_prompt_renderer

pytestmark = pytest.mark.unit

CONVERSATION = [
    ChatMessage(Role.SYSTEM, "Be brief."),
    ChatMessage(Role.USER, "Hi"),
    ChatMessage(Role.ASSISTANT, "Hello."),
    ChatMessage(Role.USER, "Port?"),
]


def test_mistral_format_folds_the_system_message_into_the_first_turn() -> None:
    assert render_mistral(CONVERSATION) == (
        "[INST] Be brief.\n\nHi [/INST] Hello.</s><s>[INST] Port? [/INST]"
    )


def test_llama2_format_has_a_sys_block() -> None:
    assert render_llama2(CONVERSATION) == (
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello.</s><s>[INST] Port? [/INST]"
    )


@pytest.mark.parametrize(
    "messages",
    [
        [ChatMessage(Role.ASSISTANT, "x")],
        [ChatMessage(Role.USER, "a"), ChatMessage(Role.USER, "b")],
        [ChatMessage(Role.USER, "a"), ChatMessage(Role.ASSISTANT, "b")],
    ],
)
def test_inst_formats_need_alternating_turns_ending_with_user(
    messages: list[ChatMessage],
) -> None:
    with pytest.raises(InvalidInput, match="messages"):
        render_mistral(messages)


def _status_error(status: int) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://llm/v1/chat/completions")
    response = httpx.Response(status, request=request, json={"error": {"message": "nope"}})
    return openai.APIStatusError("nope", response=response, body=None)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidInput),
        (422, InvalidInput),
        (401, FailedPrecondition),
        (403, FailedPrecondition),
        (404, FailedPrecondition),
        (429, Unavailable),
        (500, Unavailable),
        (503, Unavailable),
    ],
)
def test_openai_status_errors_map_to_domain_errors(status: int, error: type[RagfleetError]) -> None:
    mapped = map_openai_error(_status_error(status), "llm")
    assert type(mapped) is error
    assert f"answered {status}" in mapped.message


def test_openai_connection_failures_are_unavailable() -> None:
    request = httpx.Request("POST", "http://llm/v1/chat/completions")
    assert isinstance(map_openai_error(openai.APITimeoutError(request), "llm"), Unavailable)
    assert isinstance(
        map_openai_error(openai.APIConnectionError(request=request), "llm"), Unavailable
    )


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class FakeOutput:
    prompt_token_ids: list[int] | None
    outputs: list[FakeCompletion]


class FakeTokenizer:
    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        return " ".join(f"<{m['role']}> {m['content']}" for m in conversation) + " <assistant>"


class FakeAsyncEngine:
    """Streams one word per delta, as vLLM does with RequestOutputKind.DELTA."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    async def generate(
        self, prompt: str, sampling_params: Any, request_id: str
    ) -> AsyncIterator[FakeOutput]:
        words = ["The", " port", " is", " 50050."][: sampling_params.max_tokens]
        try:
            for i, word in enumerate(words):
                last = i == len(words) - 1
                reason = None
                if last:
                    reason = "length" if len(words) == sampling_params.max_tokens else "stop"
                yield FakeOutput(
                    list(range(len(prompt.split()))) if i == 0 else None,
                    [FakeCompletion(word, [i], reason)],
                )
        finally:
            self.closed.append(request_id)

    def shutdown(self) -> None:
        pass


class StallingAsyncEngine(FakeAsyncEngine):
    """Streams one delta, then waits for ever (a long prefill or a stuck request)."""

    async def generate(
        self, prompt: str, sampling_params: Any, request_id: str
    ) -> AsyncIterator[FakeOutput]:
        try:
            yield FakeOutput([0], [FakeCompletion("The", [0], None)])
            await asyncio.sleep(3600)
        finally:
            self.closed.append(request_id)


@pytest.fixture
def fake_vllm() -> tuple[VllmEngine, FakeAsyncEngine]:
    fake = FakeAsyncEngine()
    tokenizer = FakeTokenizer("{{ messages }}")
    engine = VllmEngine(
        fake, EngineLoop(), tokenizer, make_prompt_renderer(tokenizer, None), lambda p: p, 4096
    )
    return engine, fake


def test_vllm_engine_streams_deltas_then_usage(
    fake_vllm: tuple[VllmEngine, FakeAsyncEngine],
) -> None:
    engine, _ = fake_vllm
    messages: Sequence[ChatMessage] = [ChatMessage(Role.USER, "which port")]
    events = list(engine.generate(messages, SamplingParams(max_tokens=16, temperature=0.0)))
    assert "".join(e.text for e in events if isinstance(e, TokenDelta)) == "The port is 50050."
    done = events[-1]
    assert isinstance(done, GenerationDone)
    assert done.finish_reason == "stop"
    assert done.usage.prompt_tokens == engine.count_prompt_tokens(messages) == 4
    assert done.usage.completion_tokens == 4
    engine.close()


def test_vllm_engine_reports_length_and_aborts_a_closed_stream(
    fake_vllm: tuple[VllmEngine, FakeAsyncEngine],
) -> None:
    engine, fake = fake_vllm
    messages = [ChatMessage(Role.USER, "which port")]
    events = list(engine.generate(messages, SamplingParams(max_tokens=2, temperature=0.0)))
    done = events[-1]
    assert isinstance(done, GenerationDone)
    assert (done.finish_reason, done.usage.completion_tokens) == ("length", 2)
    stream = engine.generate(messages, SamplingParams(max_tokens=16, temperature=0.0))
    assert next(stream) == TokenDelta("The")
    stream.close()
    assert len(fake.closed) == 2
    engine.close()


def test_vllm_prompt_falls_back_to_the_family_format() -> None:
    render = make_prompt_renderer(FakeTokenizer(None), ChatFamily.MISTRAL)
    assert render([ChatMessage(Role.USER, "Hi")]) == "[INST] Hi [/INST]"
    with pytest.raises(ModelLoadError, match="chat_family"):
        make_prompt_renderer(FakeTokenizer(None), None)


def test_vllm_engine_cancelled_mid_wait_aborts_the_request_at_once() -> None:
    fake = StallingAsyncEngine()
    tokenizer = FakeTokenizer("{{ messages }}")
    engine = VllmEngine(
        fake, EngineLoop(), tokenizer, make_prompt_renderer(tokenizer, None), lambda p: p, 4096
    )
    cancellation = Cancellation()
    stream = engine.generate(
        [ChatMessage(Role.USER, "which port")],
        SamplingParams(max_tokens=16, temperature=0.0),
        cancellation,
    )
    assert next(stream) == TokenDelta("The")
    threading.Timer(0.2, cancellation.cancel).start()
    start = time.monotonic()
    assert list(stream) == []
    assert time.monotonic() - start < 2.0
    assert len(fake.closed) == 1
    engine.close()
