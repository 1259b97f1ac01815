"""DocumentChunker: section paths, content types, deterministic ids, strategies, validation.

Token-aware sizes (the real tokenizer) are in tests/integration/test_chunking_tokens.py."""

from __future__ import annotations

import pytest

from ragfleet.chunking import (
    ChunkingConfig,
    ChunkingStrategy,
    Document,
    DocumentChunker,
    chunk_id,
    content_type_of,
    html_to_markdown,
)
from ragfleet.runtime.errors import InvalidInput

pytestmark = pytest.mark.unit

MARKDOWN = """# Guide

Intro paragraph.

## Operations

How to operate it.

### Shutdown

On SIGTERM the service flips to NOT_SERVING and drains.

```
# not a heading inside code
```
"""


def test_markdown_sections_become_paths_prepended_to_the_text() -> None:
    chunks = DocumentChunker().chunk(Document(source="docs/guide.md", text=MARKDOWN), "t1")
    assert [c.section for c in chunks] == [
        "Guide",
        "Guide > Operations",
        "Guide > Operations > Shutdown",
    ]
    shutdown = chunks[2]
    assert shutdown.text.startswith("Guide > Operations > Shutdown\n\nOn SIGTERM")
    assert "# not a heading inside code" in shutdown.text
    assert all(c.tenant == "t1" and c.source == "docs/guide.md" for c in chunks)
    assert [c.metadata["chunk_index"] for c in chunks] == ["0", "1", "2"]


def test_ids_are_deterministic_and_depend_on_tenant_source_index_and_text() -> None:
    doc = Document(source="a.md", text=MARKDOWN)
    chunker = DocumentChunker()
    first = [c.id for c in chunker.chunk(doc, "t")]
    assert first == [c.id for c in DocumentChunker().chunk(doc, "t")]
    assert len(set(first)) == len(first) and all(len(i) == 32 for i in first)
    assert first != [c.id for c in chunker.chunk(doc, "other")]
    assert first != [c.id for c in chunker.chunk(Document(source="b.md", text=MARKDOWN), "t")]
    c0 = chunker.chunk(doc, "t")[0]
    assert c0.id == chunk_id("t", "a.md", 0, c0.text)


def test_long_sections_are_split_with_overlap_within_the_size() -> None:
    text = "## Long\n\n" + " ".join(f"word{i}" for i in range(400))
    chunks = DocumentChunker(ChunkingConfig(size=200, overlap=40)).chunk(
        Document(source="l.md", text=text)
    )
    assert len(chunks) > 5
    for c in chunks:
        body = c.text.removeprefix("Long\n\n")
        assert len(body) <= 200 and c.section == "Long"
    assert chunks[0].text.split()[-1] in chunks[1].text  # overlap


def test_html_headings_become_sections_and_tags_are_stripped() -> None:
    html = (
        "<html><head><title>t</title><style>p{color:red}</style></head><body>"
        "<h1>Manual</h1><p>Hello <b>there</b>.</p><h2>Install</h2><div>Run make.</div>"
        "<script>alert(1)</script></body></html>"
    )
    chunks = DocumentChunker().chunk(Document(source="https://x.test/manual.html", text=html))
    assert [(c.section, c.text) for c in chunks] == [
        ("Manual", "Manual\n\nHello there."),
        ("Manual > Install", "Manual > Install\n\nRun make."),
    ]
    assert "alert" not in html_to_markdown(html)


def test_plain_text_has_no_sections() -> None:
    chunks = DocumentChunker().chunk(Document(source="notes.txt", text="# not markdown\n\nplain"))
    assert [(c.section, c.text) for c in chunks] == [("", "# not markdown\n\nplain")]


@pytest.mark.parametrize(
    ("source", "declared", "expected"),
    [
        ("a.md", "", "text/markdown"),
        ("a.MARKDOWN", "", "text/markdown"),
        ("https://x/page.htm?q=1", "", "text/html"),
        ("a.txt", "", "text/plain"),
        ("README", "", "text/plain"),
        ("a.txt", "text/markdown", "text/markdown"),
    ],
)
def test_content_type_is_declared_or_guessed(source: str, declared: str, expected: str) -> None:
    assert content_type_of(Document(source=source, text="x", content_type=declared)) == expected


def test_the_title_and_section_path_share_the_size_budget() -> None:
    text = "## Long\n\n" + " ".join(f"word{i}" for i in range(400))
    chunks = DocumentChunker(ChunkingConfig(size=200, overlap=0)).chunk(
        Document(source="l.md", text=text, title="A Title")
    )
    assert all(c.title == "A Title" and c.section == "Long" for c in chunks)
    assert chunks[0].search_text.startswith("A Title\nLong\n\nword0 ")
    assert all(len(c.search_text) <= 200 + len("\n\n") for c in chunks)


def test_none_keeps_each_document_whole() -> None:
    doc = Document(source="guide.md", text=MARKDOWN, title="Guide")
    chunks = DocumentChunker(ChunkingConfig(ChunkingStrategy.NONE)).chunk(doc)
    assert [(c.text, c.section, c.search_text) for c in chunks] == [
        (MARKDOWN, "", "Guide\n" + MARKDOWN)
    ]
    assert DocumentChunker(ChunkingConfig("none")).chunk(Document(source="e", text=" ")) == []


@pytest.mark.parametrize(
    ("strategy", "size", "overlap", "field"),
    [
        ("sentences", 100, 10, "chunking.strategy"),
        ("characters", 0, 0, "chunking.size"),
        ("characters", 100, 100, "chunking.overlap"),
        ("tokens", 100, -1, "chunking.overlap"),
    ],
)
def test_invalid_configs_name_the_field(strategy: str, size: int, overlap: int, field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        ChunkingConfig(strategy, size, overlap)  # type: ignore[arg-type]


def test_tokens_without_a_tokenizer_is_refused() -> None:
    with pytest.raises(InvalidInput, match="tokenizer"):
        DocumentChunker(ChunkingConfig(ChunkingStrategy.TOKENS, 128, 16))


@pytest.mark.parametrize(
    ("config", "label"),
    [
        (ChunkingConfig(ChunkingStrategy.NONE, 5, 1), "none"),
        (ChunkingConfig(ChunkingStrategy.TOKENS, 128, 16), "tokens-128-16"),
        (ChunkingConfig(), "characters-1000-150"),
    ],
)
def test_labels_are_stable(config: ChunkingConfig, label: str) -> None:
    assert config.label == label
