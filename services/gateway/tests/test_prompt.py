"""Prompt building and citation parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragfleet_gateway.domain import Chunk, Hit, Source
from ragfleet_gateway.prompt import PromptBuilder, cited_numbers, resolve_citations
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
