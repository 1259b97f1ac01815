"""``LLMEngine`` on llama-cpp-python: a GGUF model on CPU, prompted with the GGUF's own chat
template (``tokenizer.chat_template`` in the file's metadata).

Cancellation: between tokens the core closes the stream; the prompt evaluation before the
first token (seconds to minutes for a long prompt on CPU) is one step, so while it runs the
engine installs llama.cpp's abort callback, which ends ``llama_decode`` at the next graph node
once the generation is cancelled. The callback is removed with the first token: it costs a
call into Python per graph node, and token steps are short.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_types import ChatCompletionRequestMessage

from ragfleet.runtime.errors import ModelLoadError
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

# llama-cpp-python's name for the handler built from the GGUF's tokenizer.chat_template.
_GGUF_CHAT_FORMAT = "chat_template.default"


class LlamaCppEngine:
    """One loaded GGUF model. Not thread-safe: callers run one generation at a time."""

    def __init__(self, llm: Llama, formatter: Jinja2ChatFormatter) -> None:
        self._llm = llm
        self._formatter = formatter

    @classmethod
    def load(cls, model_path: Path, n_ctx: int, n_threads: int) -> LlamaCppEngine:
        """Loads ``model_path`` and runs one short generation, so the first request does not pay
        for paging the weights in (seconds on a cold start). Raises ModelLoadError when the file
        cannot be loaded or has no chat template."""
        try:
            llm = Llama(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                chat_format=_GGUF_CHAT_FORMAT,
                verbose=False,
            )
        except ValueError as exc:
            raise ModelLoadError(f"cannot load {model_path}: {exc}") from exc
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelLoadError(f"{model_path} has no tokenizer.chat_template in its metadata")
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(llm, llm.token_eos()),
            bos_token=_token_text(llm, llm.token_bos()),
        )
        engine = cls(llm, formatter)
        for _ in engine.generate(
            [ChatMessage(Role.USER, "Hi")], SamplingParams(max_tokens=1, temperature=0.0)
        ):
            pass
        return engine

    @property
    def context_window(self) -> int:
        return self._llm.n_ctx()

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        rendered = self._formatter(messages=_to_llama_messages(messages))
        # The template already writes the special tokens, so none are added here (as
        # llama-cpp-python does when it formats a chat prompt).
        return len(self._llm.tokenize(rendered.prompt.encode(), add_bos=False, special=True))

    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        cancellation: Cancellation | None = None,
    ) -> Generator[GenerationEvent, None, None]:
        meter = UsageMeter()
        prompt_tokens = self.count_prompt_tokens(messages)
        stream: Iterator[Any] = self._llm.create_chat_completion(  # type: ignore[assignment]
            messages=_to_llama_messages(messages),
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            stop=list(params.stop) or None,
            stream=True,
        )
        pieces: list[str] = []
        finish = FinishReason.STOP
        try:
            with self._abortable(cancellation):
                try:
                    first = next(stream, None)
                except RuntimeError:
                    # llama_decode reports an abort as an error code.
                    if cancellation is not None and cancellation.cancelled:
                        return
                    raise
            chunks = () if first is None else itertools.chain([first], stream)
            for chunk in chunks:
                choice = chunk["choices"][0]
                content = choice["delta"].get("content")
                if content:
                    meter.token()
                    pieces.append(content)
                    yield TokenDelta(content)
                if choice.get("finish_reason") == FinishReason.LENGTH:
                    finish = FinishReason.LENGTH
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        # Stream chunks carry no usage; the completion is counted as the tokens of its text.
        completion_tokens = len(
            self._llm.tokenize("".join(pieces).encode(), add_bos=False, special=False)
        )
        yield GenerationDone(finish, meter.finish(prompt_tokens, completion_tokens))

    @contextmanager
    def _abortable(self, cancellation: Cancellation | None) -> Iterator[None]:
        """``llama_decode`` calls in the block end early once ``cancellation`` is cancelled."""
        if cancellation is None:
            yield
            return

        def aborted(_: Any) -> bool:
            return cancellation.cancelled

        # The ctypes callback must stay referenced while llama.cpp holds it.
        callback = llama_cpp.ggml_abort_callback(aborted)
        llama_cpp.llama_set_abort_callback(self._llm.ctx, callback, None)
        try:
            yield
        finally:
            llama_cpp.llama_set_abort_callback(self._llm.ctx, llama_cpp.ggml_abort_callback(), None)


def _token_text(llm: Llama, token: int) -> str:
    return "" if token < 0 else llm.detokenize([token], special=True).decode()


def _to_llama_messages(messages: Sequence[ChatMessage]) -> list[ChatCompletionRequestMessage]:
    return [
        cast(ChatCompletionRequestMessage, {"role": str(m.role), "content": m.content})
        for m in messages
    ]
