"""Embedder core Rerank: validation naming field and limit, the missing-reranker precondition,
readiness, and scores in passage order (with a deterministic word-overlap reranker)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ragfleet.rerank import OverlapReranker
from ragfleet.runtime.errors import FailedPrecondition, InvalidInput, Unavailable
from ragfleet_embedder.core import NO_RERANKER, Embedder
from ragfleet_embedder.fakes import FakeEmbeddingModel
from ragfleet_embedder.settings import EmbedderSettings

pytestmark = pytest.mark.unit

SETTINGS = EmbedderSettings(max_text_chars=20, max_rerank_passages=3, max_batch_wait_ms=0.0)


class RecordingReranker(OverlapReranker):
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        self.calls.append((query, list(passages)))
        return super().score(query, passages)


async def loaded(reranker: RecordingReranker | None) -> Embedder:
    embedder = Embedder(
        SETTINGS,
        FakeEmbeddingModel,
        (lambda: reranker) if reranker is not None else None,
        reranker_name="fake-ce",
    )
    await embedder.load()
    return embedder


async def test_scores_come_back_in_passage_order() -> None:
    reranker = RecordingReranker()
    embedder = await loaded(reranker)
    try:
        result = await embedder.rerank("red apple", ["green pear", "red apple", "apple pie"])
    finally:
        await embedder.close()
    assert result.scores == [0.0, 1.0, 0.5]
    assert result.model == "fake-ce"
    assert reranker.calls == [("red apple", ["green pear", "red apple", "apple pie"])]
    assert embedder.model_info().reranker == "fake-ce"


@pytest.mark.parametrize(
    ("query", "passages", "message"),
    [
        ("", ["a"], r"query: must not be empty"),
        ("  \t", ["a"], r"query: must not be empty"),
        ("q" * 21, ["a"], r"query: has 21 characters; the limit is 20 \(max_text_chars\)"),
        ("q", [], r"passages: must hold at least one passage"),
        ("q", ["a"] * 4, r"passages: holds 4 passages; the limit is 3 \(max_rerank_passages\)"),
        ("q", ["a", " "], r"passages\[1\]: is empty or whitespace only"),
        ("q", ["p" * 21], r"passages\[0\]: has 21 characters; the limit is 20 \(max_text_chars\)"),
    ],
)
async def test_bad_input_is_rejected_naming_field_and_limit(
    query: str, passages: list[str], message: str
) -> None:
    reranker = RecordingReranker()
    embedder = await loaded(reranker)
    try:
        with pytest.raises(InvalidInput, match=message):
            await embedder.rerank(query, passages)
    finally:
        await embedder.close()
    assert reranker.calls == []


async def test_without_a_reranker_the_error_says_how_to_get_one() -> None:
    embedder = await loaded(None)
    try:
        with pytest.raises(FailedPrecondition) as caught:
            await embedder.rerank("q", ["a"])
        assert embedder.model_info().reranker == ""
    finally:
        await embedder.close()
    assert caught.value.message == NO_RERANKER
    assert "ragfleet train reranker" in NO_RERANKER
    assert "RAGFLEET_EMBEDDER_RERANKER_PATH" in NO_RERANKER


async def test_nothing_is_reranked_before_loading() -> None:
    embedder = Embedder(SETTINGS, FakeEmbeddingModel, RecordingReranker)
    with pytest.raises(Unavailable):
        await embedder.rerank("q", ["a"])


def test_reranker_settings_come_from_prefixed_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAGFLEET_EMBEDDER_RERANKER_PATH", "/models/ce")
    monkeypatch.setenv("RAGFLEET_EMBEDDER_MAX_RERANK_PASSAGES", "50")
    settings = EmbedderSettings()
    assert str(settings.reranker_path) == "/models/ce"
    assert settings.max_rerank_passages == 50
