"""Prompt building and citation parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragfleet.domain import Chunk, Hit
from ragfleet_gateway.domain import Source
from ragfleet_gateway.prompt import (
    PromptBuilder,
    attribute_citations,
    cited_numbers,
    resolve_citations,
)
from ragfleet_gateway.settings import DEFAULT_PROMPT_TEMPLATE, GatewaySettings

pytestmark = pytest.mark.unit


def sources(n: int) -> list[Source]:
    return [
        Source(
            i,
            Hit(
                Chunk(
                    id=f"c{i}", text=f"text {i}", source=f"s{i}.md", title=f"T{i}", section="A > B"
                ),
                1.0,
            ),
        )
        for i in range(1, n + 1)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No citations here.", []),
        ("Fact [2]. Another [1].", [2, 1]),
        ("Both [1, 3] and again [3][2].", [1, 3, 2]),
        ("Out of range [0] and [4] and [12].", []),
        ("Not a citation [a] or [1.5] but [ 2 ]", []),
    ],
)
def test_cited_numbers(text: str, expected: list[int]) -> None:
    assert cited_numbers(text, 3) == expected


def test_citations_resolve_to_the_numbered_chunks() -> None:
    cited = resolve_citations("See [2].", sources(3))
    assert [(c.number, c.chunk_id, c.source, c.title, c.section) for c in cited] == [
        (2, "c2", "s2.md", "T2", "A > B")
    ]


def test_prompt_numbers_the_sources_and_carries_the_question() -> None:
    builder = PromptBuilder(DEFAULT_PROMPT_TEMPLATE, "system!", source_max_chars=100)
    messages = builder.messages("Why {braces}?", sources(2))
    assert [m.role for m in messages] == ["system", "user"]
    user = messages[1].content
    assert "[1] T1 — A > B\ntext 1" in user and "[2] T2 — A > B\ntext 2" in user
    assert "Question: Why {braces}?" in user
    assert messages[0].content == "system!"


def test_template_file_wins_and_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("Q: {question}\n{sources}")
    settings = GatewaySettings(prompt_template_file=path)
    assert settings.user_prompt_template() == "Q: {question}\n{sources}"
    path.write_text("no placeholders")
    with pytest.raises(ValueError, match="placeholder"):
        GatewaySettings(prompt_template_file=path)
    with pytest.raises(ValueError, match="placeholders"):
        GatewaySettings(prompt_template="{sources} {question} {other}")


def hits(*texts: str) -> list[Hit]:
    return [Hit(Chunk(id=f"c{i}", text=t, source=f"s{i}.md"), 1.0) for i, t in enumerate(texts, 1)]


@pytest.mark.parametrize(
    ("lengths", "budget", "shown"),
    [
        ((300, 300, 300), 1000, 3),  # all fit
        ((300, 300, 300), 800, 3),  # the third is shortened to 200
        ((300, 300, 300), 700, 2),  # the third would be 100 characters: left out
        ((300, 50, 300), 600, 3),  # a short passage fits whole
        ((1500,), 100, 1),  # the first passage is always shown
    ],
)
def test_sources_fit_the_context_budget(lengths: tuple[int, ...], budget: int, shown: int) -> None:
    builder = PromptBuilder("{sources}\n{question}", "", 1000, context_budget_chars=budget)
    texts = [" ".join(["word"] * (n // 5)) for n in lengths]
    sources = builder.fit(hits(*texts))
    assert [s.number for s in sources] == list(range(1, shown + 1))
    user = builder.messages("q", sources)[-1].content
    assert len(user) <= budget + shown * 40


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # no marker: attributed to the passage that holds the fact
        ("The gateway listens on port 50050.", ["s2.md"]),
        # a wrong marker is replaced by the supporting passage
        ("The gateway listens on port 50050 [1].", ["s2.md"]),
        # a right marker is kept
        ("It listens on port 50050 [2]. Chunks use sha256 ids [3].", ["s2.md", "s3.md"]),
        # nothing in the sources supports it
        ("Paris is the capital of France.", []),
    ],
)
def test_citations_are_the_passages_that_support_each_sentence(
    answer: str, expected: list[str]
) -> None:
    passages = hits(
        "The embedder runs all-MiniLM-L6-v2 on the CPU.",
        "| gateway | gRPC | 50050 | RAGFLEET_GATEWAY_PORT |",
        "Chunk ids are deterministic: sha256 of tenant, source and text.",
    )
    sources = [Source(i, h) for i, h in enumerate(passages, 1)]
    cited = attribute_citations(answer, "Which port does the gateway listen on?", sources)
    assert [c.source for c in cited] == expected
