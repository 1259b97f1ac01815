"""Embedder training data: triplets from judgments and mined negatives, batches without
repeated passages, and config validation."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from ragfleet.chunking import Document
from ragfleet.runtime.errors import InvalidInput
from ragfleet_tools.eval.beir import BeirDataset
from ragfleet_tools.training.embedder import (
    EmbedderTrainingConfig,
    Triplet,
    batches,
    build_triplets,
    train_embedder,
)

pytestmark = pytest.mark.unit

DATASET = BeirDataset(
    name="toy",
    split="train",
    corpus={f"d{i}": Document(source=f"d{i}", title=f"T{i}", text=f"body {i}") for i in range(6)},
    queries={"q1": "first", "q2": "second", "q3": "all judged"},
    qrels={"q1": {"d0": 1, "d1": 1, "d5": 0}, "q2": {"d2": 1}, "q3": {"d0": 1, "d1": 1}},
    fingerprint="x",
)


def rank(queries: Mapping[str, str], k: int) -> Mapping[str, Sequence[str]]:
    tops = {"q3": ["d0", "d1"]}
    return {q: tops.get(q, [f"d{i}" for i in range(6)])[:k] for q in queries}


def test_each_judged_positive_gets_one_unjudged_negative_from_the_top() -> None:
    triplets = build_triplets(DATASET, rank, mine_depth=4, seed=3)
    # q3's whole top is judged relevant: no negative in reach, so it is skipped.
    assert sorted((t.query, t.positive) for t in triplets) == [
        ("first", "T0\nbody 0"),
        ("first", "T1\nbody 1"),
        ("second", "T2\nbody 2"),
    ]
    for triplet in triplets:
        number = int(triplet.negative.split()[-1])
        assert number < 4
        if triplet.query == "first":
            assert number not in (0, 1, 5)
        else:
            assert number != 2
    assert triplets == build_triplets(DATASET, rank, mine_depth=4, seed=3)


def test_a_batch_never_holds_the_same_passage_twice() -> None:
    triplets = [Triplet(f"q{i}", f"p{i % 3}", f"n{i}") for i in range(9)] + [
        Triplet("x", "p0", "p1")
    ]
    out = batches(triplets, 4, random.Random(0))
    assert sorted(t.query for b in out for t in b) == sorted(t.query for t in triplets)
    for batch in out:
        assert len(batch) <= 4
        texts = [text for t in batch for text in (t.positive, t.negative)]
        assert len(texts) == len(set(texts))


def test_bad_mining_depth_and_empty_training_sets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="mine_depth"):
        build_triplets(DATASET, rank, mine_depth=1)
    with pytest.raises(InvalidInput, match="triplets"):
        train_embedder([], tmp_path / "out")


@pytest.mark.parametrize(
    "overrides",
    [{"epochs": 0}, {"batch_size": 1}, {"learning_rate": 1.5}, {"max_length": 8}, {"scale": 0}],
)
def test_out_of_range_hyper_parameters_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(InvalidInput, match=next(iter(overrides))):
        EmbedderTrainingConfig(**overrides)  # type: ignore[arg-type]


def test_the_shared_loop_takes_one_step_per_batch_and_lowers_the_loss() -> None:
    import torch

    from ragfleet_tools.training.loop import optimise

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.tensor([3.0]))
    epochs = [[1.0, 2.0, 3.0]] * 20

    result = optimise(
        [weight],
        epochs,
        lambda x: ((weight * x - x) ** 2).sum(),
        learning_rate=0.1,
        warmup_fraction=0.1,
        event="toy_training",
    )
    assert result.steps == 60
    assert abs(weight.item() - 1.0) < 0.5
    assert 0 <= result.final_loss < 1.0
