"""Chat prompt formats for models whose tokenizer carries no chat template of its own.

llama.cpp always uses the GGUF's own template and vLLM the tokenizer's when it has one; these
are the fallbacks, chosen per model with ``chat_family``. The leading BOS token is left out:
the tokenizer adds it when it encodes the prompt.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from ragfleet.runtime.errors import InvalidInput
from ragfleet_generator.engine import ChatMessage, Role


class ChatFamily(enum.StrEnum):
    """``mistral``: Mistral-Instruct's ``[INST]`` turns, a system message folded into the first
    user turn; ``llama2``: Llama-2-chat's ``[INST]`` turns with a ``<<SYS>>`` block."""

    MISTRAL = "mistral"
    LLAMA2 = "llama2"


def _turns(messages: Sequence[ChatMessage]) -> tuple[str, list[tuple[str, str | None]]]:
    """Splits messages into the system text and (user, assistant reply or None) pairs; the
    conversation must alternate user and assistant and end with a user message."""
    system = "\n\n".join(m.content for m in messages if m.role is Role.SYSTEM)
    dialogue = [m for m in messages if m.role is not Role.SYSTEM]
    turns: list[tuple[str, str | None]] = []
    for i, message in enumerate(dialogue):
        expected = Role.USER if i % 2 == 0 else Role.ASSISTANT
        if message.role is not expected:
            raise InvalidInput(
                f"messages: this model's chat format needs user and assistant messages to "
                f"alternate, starting with user; message {i} is {message.role}"
            )
        if expected is Role.USER:
            turns.append((message.content, None))
        else:
            turns[-1] = (turns[-1][0], message.content)
    if not turns or turns[-1][1] is not None:
        raise InvalidInput("messages: the last non-system message must be from the user")
    return system, turns


def _render_inst(turns: list[tuple[str, str | None]]) -> str:
    parts: list[str] = []
    for i, (user, reply) in enumerate(turns):
        parts.append(f"{'' if i == 0 else '<s>'}[INST] {user.strip()} [/INST]")
        if reply is not None:
            parts.append(f" {reply.strip()}</s>")
    return "".join(parts)


def render_mistral(messages: Sequence[ChatMessage]) -> str:
    system, turns = _turns(messages)
    if system:
        turns[0] = (f"{system}\n\n{turns[0][0]}", turns[0][1])
    return _render_inst(turns)


def render_llama2(messages: Sequence[ChatMessage]) -> str:
    system, turns = _turns(messages)
    if system:
        turns[0] = (f"<<SYS>>\n{system}\n<</SYS>>\n\n{turns[0][0]}", turns[0][1])
    return _render_inst(turns)


CHAT_RENDERERS: dict[ChatFamily, Callable[[Sequence[ChatMessage]], str]] = {
    ChatFamily.MISTRAL: render_mistral,
    ChatFamily.LLAMA2: render_llama2,
}
