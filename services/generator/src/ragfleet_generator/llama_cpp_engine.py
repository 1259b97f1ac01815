"""``LLMEngine`` on llama-cpp-python: a GGUF model on CPU, prompted with the GGUF's own chat
template (``tokenizer.chat_template`` in the file's metadata)."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_types import ChatCompletionRequestMessage

from ragfleet.runtime.errors import ModelLoadError
from ragfleet_generator.engine import (
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
        self, messages: Sequence[ChatMessage], params: SamplingParams
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
            for chunk in stream:
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


def _token_text(llm: Llama, token: int) -> str:
    return "" if token < 0 else llm.detokenize([token], special=True).decode()


def _to_llama_messages(messages: Sequence[ChatMessage]) -> list[ChatCompletionRequestMessage]:
    return [
        cast(ChatCompletionRequestMessage, {"role": str(m.role), "content": m.content})
        for m in messages
    ]
