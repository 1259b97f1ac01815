"""Training a cross-encoder on CPU from the all-MiniLM-L6-v2 weights, on a few toy groups: the
saved folder loads by path through ``ragfleet.rerank`` and scores passages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragfleet.rerank import CrossEncoderReranker, load_reranker
from ragfleet_tools.training.reranker import TrainingConfig, TrainingGroup, train_cross_encoder

pytestmark = pytest.mark.integration

GROUPS = [
    TrainingGroup(
        "aspirin reduces heart attack risk",
        ("Aspirin lowered myocardial infarction rates.", "Cats sleep a lot.", "Paris is big."),
    ),
    TrainingGroup(
        "vitamin d deficiency in winter",
        ("Vitamin D levels fall in winter months.", "Rust forms on iron.", "Tides follow moon."),
    ),
]


def test_a_trained_reranker_is_saved_and_loads_by_path(tmp_path: Path) -> None:
    out = tmp_path / "ce"
    report = train_cross_encoder(
        GROUPS, out, config=TrainingConfig(epochs=1, groups_per_batch=2, max_length=32)
    )
    assert (report.groups, report.pairs, report.steps) == (2, 6, 1)
    assert report.final_loss > 0
    assert (out / "config.json").is_file()
    reranker = load_reranker(f"cross-encoder:{out}")
    assert isinstance(reranker, CrossEncoderReranker)
    assert reranker.max_length == 32
    scores = reranker.score("aspirin", ["aspirin and the heart", "cats", "tides"])
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
