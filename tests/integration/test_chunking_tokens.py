"""Token-aware chunking with the embedding model's real tokenizer (all-MiniLM-L6-v2)."""

from __future__ import annotations

import pytest

from ragfleet.chunking import (
    ChunkingConfig,
    ChunkingStrategy,
    Document,
    DocumentChunker,
    load_embedder_tokenizer,
)

pytestmark = pytest.mark.integration

SENTENCE = "Retrieval augmented generation grounds answers in indexed documents. "


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_embedder_tokenizer()


def test_chunks_fit_the_size_in_model_tokens_with_overlap(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunker = DocumentChunker(ChunkingConfig(ChunkingStrategy.TOKENS, 64, 16), tokenizer=tokenizer)
    chunks = chunker.chunk(Document(source="notes.txt", text=SENTENCE * 60))
    lengths = [len(tokenizer.tokenize(c.search_text)) for c in chunks]
    assert len(chunks) >= 10
    assert max(lengths) <= 64 and min(lengths[:-1]) >= 40
    # Characters would be a different unit: the same text in 64-character chunks is many more.
    by_chars = DocumentChunker(ChunkingConfig(ChunkingStrategy.CHARACTERS, 64, 16)).chunk(
        Document(source="notes.txt", text=SENTENCE * 60)
    )
    assert len(by_chars) > 3 * len(chunks)
    first_words = chunks[1].text.split()[:3]
    assert " ".join(first_words) in chunks[0].text  # overlap


def test_section_path_and_title_count_towards_the_token_budget(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "# Operations\n\n## Shutdown and draining\n\n" + SENTENCE * 40
    chunker = DocumentChunker(ChunkingConfig(ChunkingStrategy.TOKENS, 48, 0), tokenizer=tokenizer)
    chunks = chunker.chunk(Document(source="ops.md", text=text, title="Runbook"))
    assert {c.section for c in chunks} == {"Operations > Shutdown and draining"}
    assert all(c.text.startswith("Operations > Shutdown and draining\n\n") for c in chunks)
    assert all(len(tokenizer.tokenize(c.search_text)) <= 48 for c in chunks)
