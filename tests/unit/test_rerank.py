"""ragfleet.rerank: spec parsing, the overlap scorer, and the LLM scorer with a scripted judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragfleet.rerank import (
    LLM_SYSTEM_PROMPT,
    CrossEncoderReranker,
    LlmRelevanceReranker,
    OverlapReranker,
    RerankerKind,
    load_reranker,
)
from ragfleet.runtime.errors import InvalidInput, ModelLoadError

pytestmark = pytest.mark.unit


def test_overlap_scores_the_share_of_query_words_in_order() -> None:
    scores = OverlapReranker().score("Red apple pie", ["an apple", "red APPLE pie!", "pears"])
    assert scores == pytest.approx([1 / 3, 1.0, 0.0])
    assert OverlapReranker().score("?!", ["anything"]) == [0.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cross-encoder", r"reranker: 'cross-encoder' is not '<kind>:<argument>'"),
        (
            "bm25:x",
            r"reranker: unknown kind 'bm25'; expected one of cross-encoder:, llm:, overlap:",
        ),
        ("cross-encoder:", r"reranker: 'cross-encoder:' needs a folder"),
        ("llm:", r"reranker: 'llm:' needs the generator's address"),
        ("overlap:x", r"reranker: 'overlap:' takes no argument"),
    ],
)
def test_bad_specs_name_the_field(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        load_reranker(spec)


def test_specs_build_the_kind_they_name() -> None:
    assert isinstance(load_reranker("overlap:"), OverlapReranker)
    assert isinstance(load_reranker(" LLM : 127.0.0.1:9000/qwen"), LlmRelevanceReranker)
    assert {k.value for k in RerankerKind} == {"cross-encoder", "llm", "overlap"}


def test_a_cross_encoder_folder_without_a_model_says_how_to_train_one(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="ragfleet train reranker"):
        load_reranker(f"cross-encoder:{tmp_path}")


def test_the_llm_scorer_asks_once_per_passage_and_reads_yes_or_no() -> None:
    prompts: list[tuple[str, str]] = []
    replies = iter([" Yes.", "no", "YES", "maybe"])

    def judge(system: str, user: str) -> str:
        prompts.append((system, user))
        return next(replies)

    reranker = LlmRelevanceReranker(judge, max_passage_chars=10)
    scores = reranker.score("does x cause y", ["p1", "p2", "0123456789ABCDEF", "p4"])
    assert scores == [1.0, 0.0, 1.0, 0.0]
    assert [system for system, _ in prompts] == [LLM_SYSTEM_PROMPT] * 4
    assert "Query: does x cause y" in prompts[0][1]
    assert "0123456789" in prompts[2][1] and "ABCDEF" not in prompts[2][1]


def test_the_llm_scorer_validates_its_limit() -> None:
    with pytest.raises(InvalidInput, match="max_passage_chars"):
        LlmRelevanceReranker(lambda s, u: "yes", max_passage_chars=0)


def test_a_hub_id_is_fetched_only_when_downloads_are_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sentence_transformers

    calls: list[tuple[str, bool]] = []

    class RecordingCrossEncoder:
        max_length = 64

        def __init__(self, name: str, *, local_files_only: bool, **_: object) -> None:
            calls.append((name, local_files_only))

    monkeypatch.setattr(sentence_transformers, "CrossEncoder", RecordingCrossEncoder)
    hub_id = Path("cross-encoder/ms-marco-MiniLM-L6-v2")
    with pytest.raises(ModelLoadError, match="no cross-encoder in"):
        CrossEncoderReranker.load(hub_id)
    assert calls == []
    CrossEncoderReranker.load(hub_id, allow_download=True)
    assert calls == [(str(hub_id), False)]
    # An existing local folder is never read as a hub id, downloads allowed or not.
    with pytest.raises(ModelLoadError, match="no cross-encoder in"):
        CrossEncoderReranker.load(tmp_path, allow_download=True)
    (tmp_path / "config.json").write_text("{}")
    CrossEncoderReranker.load(tmp_path, allow_download=True)
    assert calls[-1] == (str(tmp_path), True)
