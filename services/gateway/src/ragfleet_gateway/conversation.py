"""Follow-up questions made standalone for retrieval.

"And how do I change it?" retrieves nothing useful on its own. With a history, the question is
rewritten before the search: by the model that would answer it (a short prompt, a few tokens,
``rewrite_timeout_s`` at most), and, when that is switched off, fails, runs out of time or
writes something unusable, by a rule that costs nothing: a question that refers back (a
pronoun such as "it" or "they", or an opening such as "and" or "what about") is searched
together with the previous question; any other question is searched as asked. The answering
model still sees the original question, after the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence

from ragfleet.domain import ChatMessage, GenerationParams, TokenEvent
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import InvalidInput, RagfleetError
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway.domain import QueryRewrite, RewriteMethod
from ragfleet_gateway.fallback import ChainLink
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.validation import check_question

log = get_logger(__name__)

_REFERS_BACK = re.compile(
    r"\b(it|its|they|them|their|theirs|this|that|these|those|he|him|his|she|her|hers)\b",
    re.IGNORECASE,
)
_CONTINUES = re.compile(r"^\W*(and|also|but|so|what about|how about)\b", re.IGNORECASE)
# The previous question as the rule repeats it: a question, not a pasted document.
_RULE_CONTEXT_CHARS = 500
# What the model reads to rewrite: the last few messages, each cut short. The rewrite's prompt
# is read before retrieval starts, so its length is added to every follow-up's latency.
_MODEL_CONTEXT_MESSAGES = 4
_MODEL_CONTEXT_CHARS = 300
_SYSTEM = (
    "Rewrite the user's last question so that it can be understood without the conversation: "
    "replace pronouns and vague references with what they refer to. Reply with the rewritten "
    "question only."
)
_LABEL = re.compile(r"^\s*(standalone|rewritten)?\s*question\s*:\s*", re.IGNORECASE)


def refers_back(question: str) -> bool:
    """Whether ``question`` reads as a follow-up: a pronoun that points back, or an opening
    that continues the conversation."""
    return bool(_REFERS_BACK.search(question) or _CONTINUES.search(question))


def rule_rewrite(question: str, history: Sequence[ChatMessage], reason: str) -> QueryRewrite:
    """The cheap rewrite: the previous user question, then ``question``, when ``question``
    refers back; otherwise ``question`` itself."""
    previous = next((m.content.strip() for m in reversed(history) if m.role == "user"), "")
    if not previous or not refers_back(question):
        return QueryRewrite(question, RewriteMethod.NONE, reason)
    return QueryRewrite(f"{previous[-_RULE_CONTEXT_CHARS:]} {question}", RewriteMethod.RULE, reason)


def rewrite_prompt(question: str, history: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The conversation as a transcript in one user message: given as real turns, a small
    model answers the last question instead of rewriting it."""
    lines = [
        f"{'User' if m.role == 'user' else 'Assistant'}: "
        f"{' '.join(m.content.split())[:_MODEL_CONTEXT_CHARS]}"
        for m in history[-_MODEL_CONTEXT_MESSAGES:]
    ]
    transcript = "\n".join(lines)
    user = f"Conversation:\n{transcript}\n\nLast question: {question}\n\nStandalone question:"
    return [ChatMessage("system", _SYSTEM), ChatMessage("user", user)]


def clean_rewrite(text: str) -> str:
    """The model's reply as a question: its first line, without a label or quotes."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    return _LABEL.sub("", line).strip().strip("\"'`").strip()


class FollowupRewriter:
    """Rewrites a follow-up into a standalone question (see the module)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings

    async def rewrite(
        self,
        question: str,
        history: Sequence[ChatMessage],
        link: ChainLink,
        deadline: Deadline,
    ) -> QueryRewrite:
        """``link`` is the model that would answer; it rewrites within ``rewrite_timeout_s``
        (and the deadline), else the rule does."""
        if not self.settings.rewrite_with_model:
            return rule_rewrite(question, history, "model rewrite is switched off")
        limit = min(self.settings.rewrite_timeout_s, deadline.remaining())
        try:
            async with asyncio.timeout(limit):
                text = await self._generate(question, history, link, deadline)
            query = check_question(clean_rewrite(text), self.settings, field="rewrite")
        except TimeoutError:
            return rule_rewrite(question, history, f"the model did not rewrite within {limit:g} s")
        except InvalidInput as exc:
            return rule_rewrite(question, history, f"the model's rewrite was unusable: {exc}")
        except RagfleetError as exc:
            log.warning("rewrite_failed", model=link.name, error=exc.message)
            return rule_rewrite(question, history, f"the model failed: {exc.message}")
        return QueryRewrite(query, RewriteMethod.MODEL)

    async def _generate(
        self,
        question: str,
        history: Sequence[ChatMessage],
        link: ChainLink,
        deadline: Deadline,
    ) -> str:
        params = GenerationParams(
            model=link.name,
            messages=rewrite_prompt(question, history),
            max_tokens=self.settings.rewrite_max_tokens,
            temperature=0.0,
            stop=("\n",),
        )
        parts: list[str] = []
        async with contextlib.aclosing(link.generator.generate(params, deadline)) as events:
            async for event in events:
                if isinstance(event, TokenEvent):
                    parts.append(event.text)
        return "".join(parts)
