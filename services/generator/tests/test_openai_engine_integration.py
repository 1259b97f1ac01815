"""OpenAIEngine against a real OpenAI-compatible server: llama-cpp-python's own server
(``python -m llama_cpp.server``) on a free port, serving the packaged Qwen2.5-Coder-0.5B GGUF.
Covers streaming, usage, max_tokens, stop sequences, the core's checks on top, and the mapping
of the server's failures (bad request, unknown model, unreachable, bad key file)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ragfleet.runtime.errors import FailedPrecondition, InvalidInput, ModelLoadError, Unavailable
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
from ragfleet_generator.models import QWEN25_CODER_05B, assemble_model
from ragfleet_generator.openai_engine import OpenAIEngine, read_api_key

pytestmark = pytest.mark.integration

ALIAS = "qwen-remote"
N_CTX = 2048
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = assemble_model(QWEN25_CODER_05B, Path("var/models").resolve())
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(model), "--model_alias", ALIAS,
                "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(N_CTX), "--n_threads", "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def engine(base_url: str) -> OpenAIEngine:
    return OpenAIEngine.connect(
        base_url, ALIAS, "EMPTY", context_window=N_CTX, timeout_s=60, connect_timeout_s=2
    )


def _generate(engine: OpenAIEngine, text: str, **params: object) -> list[GenerationEvent]:
    sampling = SamplingParams(**{"max_tokens": 48, "temperature": 0.0, **params})  # type: ignore[arg-type]
    return list(engine.generate([ChatMessage(Role.USER, text)], sampling))


def test_streams_a_grounded_answer_with_usage(engine: OpenAIEngine) -> None:
    question = (
        "Using only this context: 'The ragfleet gateway listens on port 50050.' "
        "Which port does the gateway listen on?"
    )
    events = _generate(engine, question)
    deltas = [e.text for e in events if isinstance(e, TokenDelta)]
    assert len(deltas) > 1
    assert "50050" in "".join(deltas)
    done = events[-1]
    assert isinstance(done, GenerationDone)
    assert done.finish_reason == "stop"
    assert done.usage.prompt_tokens > 10
    assert 0 < done.usage.completion_tokens <= 48
    assert done.usage.time_to_first_token_ms > 0
    assert done.usage.tokens_per_second > 0


def test_max_tokens_cuts_with_finish_reason_length(engine: OpenAIEngine) -> None:
    events = _generate(engine, "Count from 1 to 50, separated by spaces.", max_tokens=5)
    done = events[-1]
    assert isinstance(done, GenerationDone)
    assert done.finish_reason == "length"
    assert done.usage.completion_tokens == 5


def test_stop_sequences_end_the_stream(engine: OpenAIEngine) -> None:
    events = _generate(engine, "Count from 1 to 20, separated by spaces.", stop=("7",))
    text = "".join(e.text for e in events if isinstance(e, TokenDelta))
    assert "6" in text
    assert "7" not in text


def test_the_core_validates_before_calling_the_server(engine: OpenAIEngine) -> None:
    limits = GenerationLimits(
        max_output_tokens=256,
        default_max_tokens=32,
        max_messages=4,
        max_message_chars=50_000,
        max_stop_sequences=2,
    )
    core = GeneratorCore([ServedModel(ALIAS, EngineKind.OPENAI, engine)], ALIAS, limits)
    request = GenerationRequest(messages=[MessageInput("user", "word " * 3000)], model=ALIAS)

    async def run() -> None:
        async for _ in core.generate(request):
            pass

    with pytest.raises(InvalidInput, match=f"context window of {N_CTX}"):
        asyncio.run(run())


def test_a_wrong_endpoint_is_a_failed_precondition(base_url: str) -> None:
    engine = OpenAIEngine.connect(f"{base_url}/nope", ALIAS, "EMPTY", 2048, 60, 2)
    with pytest.raises(FailedPrecondition, match="answered 404"):
        _generate(engine, "hi")


def test_an_unreachable_server_is_unavailable() -> None:
    engine = OpenAIEngine.connect(f"http://127.0.0.1:{_free_port()}/v1", ALIAS, "EMPTY", 2048, 5, 1)
    with pytest.raises(Unavailable, match="unreachable"):
        _generate(engine, "hi")


def test_api_keys_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-file\n")
    assert read_api_key("MY_KEY", None, {"MY_KEY": "sk-env"}) == "sk-env"
    assert read_api_key(None, key_file, {}) == "sk-file"
    assert read_api_key(None, None, {}) == "EMPTY"
    with pytest.raises(ModelLoadError, match="MY_KEY") as missing:
        read_api_key("MY_KEY", None, {})
    assert "sk-" not in missing.value.message
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_api_key(None, tmp_path / "absent", {})
