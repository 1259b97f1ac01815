"""Reranker training data: groups from judgments and mined negatives, and config validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from ragfleet.chunking import Document
from ragfleet.runtime.errors import InvalidInput
from ragfleet_tools.eval.beir import BeirDataset
from ragfleet_tools.training.reranker import (
    TrainingConfig,
    TrainingGroup,
    build_groups,
    train_cross_encoder,
)

pytestmark = pytest.mark.unit

CORPUS = {
    f"d{i}": Document(source=f"d{i}", title=f"Title {i}", text=f"body {i}") for i in range(10)
}
DATASET = BeirDataset(
    name="toy",
    split="train",
    corpus=CORPUS,
    queries={"q1": "first query", "q2": "second query"},
    qrels={"q1": {"d0": 1, "d1": 1, "d9": 0}, "q2": {"d2": 1}},
    fingerprint="x",
)


def ranker(calls: list[dict[str, str]]):  # type: ignore[no-untyped-def]
    def rank(queries: Mapping[str, str], k: int) -> Mapping[str, Sequence[str]]:
        calls.append(dict(queries))
        return {q: [f"d{i}" for i in range(10)][:k] for q in queries}

    return rank


def test_each_judged_positive_gets_a_group_of_unjudged_negatives() -> None:
    calls: list[dict[str, str]] = []
    groups = build_groups(DATASET, ranker(calls), negatives_per_query=3, mine_depth=8)
    assert calls == [{"q1": "first query", "q2": "second query"}]
    assert len(groups) == 3
    by_positive = {g.passages[0]: g for g in groups}
    assert set(by_positive) == {"Title 0\nbody 0", "Title 1\nbody 1", "Title 2\nbody 2"}
    for group in groups:
        assert len(group.passages) == 4
        assert len(set(group.passages)) == 4
    q1_negatives = {p for g in groups if g.query == "first query" for p in g.passages[1:]}
    # Judged documents (even grade 0) of q1 are never its negatives; all come from the top 8.
    assert not q1_negatives & {"Title 0\nbody 0", "Title 1\nbody 1"}
    assert all(int(p.split()[1]) < 8 for p in q1_negatives)


def test_title_groups_use_bodies_and_never_the_document_itself() -> None:
    calls: list[dict[str, str]] = []
    groups = build_groups(
        DATASET, ranker(calls), negatives_per_query=2, mine_depth=5, title_groups=3, seed=1
    )
    titled = [g for g in groups if g.query.startswith("Title")]
    assert len(titled) == 3
    for group in titled:
        number = group.query.split()[1]
        assert group.passages[0] == f"body {number}"
        assert f"body {number}" not in group.passages[1:]
        assert all(p.startswith("body") for p in group.passages)
    assert len(calls) == 2


def test_groups_are_the_same_for_the_same_seed() -> None:
    first = build_groups(DATASET, ranker([]), negatives_per_query=2, title_groups=2, seed=5)
    again = build_groups(DATASET, ranker([]), negatives_per_query=2, title_groups=2, seed=5)
    assert first == again


@pytest.mark.parametrize(("negatives", "depth"), [(0, 30), (5, 5)])
def test_bad_mining_parameters_are_refused(negatives: int, depth: int) -> None:
    with pytest.raises(InvalidInput, match="negatives_per_query"):
        build_groups(DATASET, ranker([]), negatives_per_query=negatives, mine_depth=depth)


@pytest.mark.parametrize(
    "overrides",
    [{"epochs": 0}, {"learning_rate": 0.0}, {"max_length": 8}, {"groups_per_batch": 0}],
)
def test_out_of_range_hyper_parameters_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(InvalidInput, match=next(iter(overrides))):
        TrainingConfig(**overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "groups",
    [
        [],
        [TrainingGroup("q", ("only one",))],
        [TrainingGroup("q", ("a", "b")), TrainingGroup("q", ("a", "b", "c"))],
    ],
)
def test_malformed_groups_are_refused_before_any_model_loads(
    groups: list[TrainingGroup], tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="groups"):
        train_cross_encoder(groups, tmp_path / "out")
