"""Conversations: follow-ups rewritten for retrieval (model, then the rule), history budgeted
into the prompt, history validated."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import pytest

from ragfleet.domain import ChatMessage, GenerationEvent, GenerationParams
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import InvalidInput, Unavailable
from ragfleet_gateway.breaker import CircuitBreaker
from ragfleet_gateway.conversation import (
    FollowupRewriter,
    clean_rewrite,
    refers_back,
    rewrite_prompt,
    rule_rewrite,
)
from ragfleet_gateway.domain import (
    AnswerEvent,
    AskRequest,
    QueryRewrite,
    RewriteEvent,
    RewriteMethod,
    SourcesEvent,
)
from ragfleet_gateway.fakes import FakeGenerator
from ragfleet_gateway.fallback import ChainLink
from ragfleet_gateway.prompt import fit_history
from ragfleet_gateway.settings import GatewaySettings

from .test_pipeline import collect, indexed

pytestmark = pytest.mark.unit

HISTORY = (
    ChatMessage("user", "What does the service do on SIGTERM?"),
    ChatMessage("assistant", "It drains in-flight calls [1]."),
)


@dataclass
class RewritingGenerator(FakeGenerator):
    """Answers the rewrite prompt with ``rewrite`` and anything else with ``tokens``."""

    rewrite: tuple[str, ...] = ("How long does the SIGTERM drain last?",)

    async def generate(
        self, params: GenerationParams, deadline: Deadline, reserve_s: float = 0.0
    ) -> AsyncGenerator[GenerationEvent, None]:
        if params.messages[0].content.startswith("Rewrite"):
            self.tokens, answer = self.rewrite, self.tokens
            try:
                async for event in super().generate(params, deadline, reserve_s):
                    yield event
            finally:
                self.tokens = answer
            return
        async for event in super().generate(params, deadline, reserve_s):
            yield event


def link(generator: FakeGenerator) -> ChainLink:
    return ChainLink("small", generator, CircuitBreaker(3, 30))


@pytest.mark.parametrize(
    ("question", "follows"),
    [
        ("How long does it last?", True),
        ("And the health check?", True),
        ("what about logs", True),
        ("Which port does the gateway use?", False),
        ("Is the index on disk?", False),
    ],
)
def test_refers_back(question: str, follows: bool) -> None:
    assert refers_back(question) is follows


def test_the_rule_puts_the_previous_question_first_only_for_a_follow_up() -> None:
    rewrite = rule_rewrite("How long does it last?", HISTORY, "off")
    assert rewrite == QueryRewrite(
        "What does the service do on SIGTERM? How long does it last?", RewriteMethod.RULE, "off"
    )
    standalone = rule_rewrite("Which port does REST use?", HISTORY, "off")
    assert standalone.query == "Which port does REST use?"
    assert standalone.method is RewriteMethod.NONE
    lone = rule_rewrite("And it?", (ChatMessage("assistant", "Hello."),), "off")
    assert lone.method is RewriteMethod.NONE


def test_the_rewrite_prompt_is_a_short_transcript() -> None:
    history = tuple(ChatMessage("user", f"question {i} " + "x" * 1000) for i in range(10))
    system, user = rewrite_prompt("And it?", history)
    assert system.role == "system" and user.role == "user"
    assert "question 5" not in user.content and "question 6" in user.content
    assert len(user.content) < 4 * 320 + 200
    assert user.content.endswith("Last question: And it?\n\nStandalone question:")


@pytest.mark.parametrize(
    ("reply", "cleaned"),
    [
        ("How long is the drain?", "How long is the drain?"),
        ('\n Standalone question: "How long is the drain?"\nmore', "How long is the drain?"),
        ("`x`", "x"),
        ("   ", ""),
    ],
)
def test_clean_rewrite(reply: str, cleaned: str) -> None:
    assert clean_rewrite(reply) == cleaned


async def test_the_model_rewrites_a_follow_up() -> None:
    generator = RewritingGenerator()
    rewriter = FollowupRewriter(GatewaySettings(rewrite_max_tokens=20))
    rewrite = await rewriter.rewrite(
        "How long does it last?", HISTORY, link(generator), Deadline.after(5)
    )
    assert rewrite == QueryRewrite("How long does the SIGTERM drain last?", RewriteMethod.MODEL)
    (params,) = generator.requests
    assert params.model == "small" and params.max_tokens == 20 and params.temperature == 0.0
    assert "User: What does the service do on SIGTERM?" in params.messages[-1].content


@pytest.mark.parametrize(
    ("generator", "settings", "reason"),
    [
        (RewritingGenerator(), {"rewrite_with_model": False}, "switched off"),
        (RewritingGenerator(delay_s=5), {"rewrite_timeout_s": 0.1}, "within 0.1 s"),
        (RewritingGenerator(error=Unavailable("generator down")), {}, "failed: generator down"),
        (RewritingGenerator(rewrite=("\n",)), {}, "unusable: rewrite must not be empty"),
        (RewritingGenerator(rewrite=("a\x00b",)), {}, "unusable: rewrite holds"),
    ],
)
async def test_the_rule_stands_in_when_the_model_does_not_rewrite(
    generator: FakeGenerator, settings: dict[str, object], reason: str
) -> None:
    rewriter = FollowupRewriter(GatewaySettings(**settings))  # type: ignore[arg-type]
    rewrite = await rewriter.rewrite(
        "How long does it last?", HISTORY, link(generator), Deadline.after(5)
    )
    assert rewrite.method is RewriteMethod.RULE
    assert rewrite.query == "What does the service do on SIGTERM? How long does it last?"
    assert reason in rewrite.reason


def test_fit_history_keeps_the_newest_messages_that_fit() -> None:
    history = [ChatMessage("user", "a" * 10), ChatMessage("assistant", "b" * 10)] * 3
    assert fit_history(history, 1000) == (history, 0)
    assert fit_history(history, 25) == (history[-2:], 4)
    assert fit_history(history, 9) == ([], 6)
    assert fit_history([], 0) == ([], 0)


async def test_ask_with_history_searches_the_rewrite_and_prompts_with_the_history() -> None:
    generator = RewritingGenerator(tokens=("It drains in-flight calls [1].",))
    pipeline, _, retriever, _ = await indexed(generator=generator, history_budget_chars=40)
    retriever.searches.clear()
    events = await collect(pipeline, AskRequest("How long does it last?", history=HISTORY))
    assert isinstance(events[0], RewriteEvent)
    assert events[0].rewrite.query == "How long does the SIGTERM drain last?"
    assert isinstance(events[1], SourcesEvent)
    assert [s.query for s, _ in retriever.searches] == ["How long does the SIGTERM drain last?"]
    answer = events[-1]
    assert isinstance(answer, AnswerEvent)
    # Only the assistant's message (30 characters) fits the 40-character budget.
    assert answer.answer.history_trimmed == 1
    assert "rewrite" in {t.stage for t in answer.answer.timings}
    prompt = generator.requests[-1].messages
    assert [m.role for m in prompt] == ["system", "assistant", "user"]
    assert prompt[1] == HISTORY[1]
    assert "Question: How long does it last?\n" in prompt[-1].content


async def test_ask_without_history_has_no_rewrite() -> None:
    pipeline, _, _, generator = await indexed()
    events = await collect(pipeline, AskRequest("What happens on SIGTERM?"))
    assert not any(isinstance(e, RewriteEvent) for e in events)
    assert len(generator.requests) == 1


@pytest.mark.parametrize(
    ("history", "field"),
    [
        ((ChatMessage("system", "be brief"),), "history[0].role"),
        ((ChatMessage("user", "  "),), "history[0].content must not be empty"),
        ((ChatMessage("user", "a\x00"),), "history[0].content holds the character U+0000"),
        ((ChatMessage("user", "q"), ChatMessage("assistant", "\ud800")), "history[1].content"),
        ((ChatMessage("user", "x" * 8001),), "the limit is 8000"),
        ((ChatMessage("user", "q"),) * 65, "history has 65 messages; the limit is 64"),
    ],
)
async def test_bad_history_is_refused_before_anything_runs(
    history: tuple[ChatMessage, ...], field: str
) -> None:
    pipeline, _, retriever, _ = await indexed()
    retriever.searches.clear()
    with pytest.raises(InvalidInput) as info:
        pipeline.ask(AskRequest("And it?", history=history), Deadline.after(5))
    assert field in info.value.message
    assert retriever.searches == []
