"""Reciprocal rank fusion and min-max weighted fusion (``ragfleet.fusion``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from ragfleet.fusion import (
    DEFAULT_RRF_K,
    FusedHit,
    FusionMethod,
    ReciprocalRankFusion,
    WeightedFusion,
    fuse,
    make_fuser,
)
from ragfleet.runtime.errors import InvalidInput

pytestmark = pytest.mark.unit

LEXICAL = [("a", 12.0), ("b", 8.0), ("c", 2.0)]
DENSE = [("c", 0.9), ("d", 0.7), ("a", 0.5)]


def test_rrf_sums_reciprocal_ranks_and_reports_both_ranks() -> None:
    fused = ReciprocalRankFusion()(LEXICAL, DENSE)
    k = DEFAULT_RRF_K
    expected = {
        "a": 1 / (k + 1) + 1 / (k + 3),
        "c": 1 / (k + 3) + 1 / (k + 1),
        "b": 1 / (k + 2),
        "d": 1 / (k + 2),
    }
    assert {hit.id: hit.score for hit in fused} == pytest.approx(expected)
    # a and c tie on score; both have best rank 1, so the id breaks the tie. b and d likewise.
    assert [hit.id for hit in fused] == ["a", "c", "b", "d"]
    assert fused[0] == FusedHit("a", pytest.approx(expected["a"]), 1, 3)
    assert fused[3] == FusedHit("d", pytest.approx(expected["d"]), 0, 2)


def test_rrf_constant_changes_how_much_the_top_rank_dominates() -> None:
    lexical = [("x", 1.0), ("y", 0.5), ("z", 0.1)]
    dense = [("y", 1.0), ("z", 0.5), ("x", 0.1)]
    # With a tiny constant, first place in one list beats second place in both.
    assert ReciprocalRankFusion(k=1)(lexical, dense)[0].id == "y"
    assert ReciprocalRankFusion(k=1)(lexical, [])[0].id == "x"


def test_weighted_fusion_normalises_each_list_min_max() -> None:
    fused = WeightedFusion(dense_weight=0.5)(LEXICAL, DENSE)
    scores = {hit.id: hit.score for hit in fused}
    # lexical: a=1, b=0.6, c=0; dense: c=1, d=0.5, a=0.
    assert scores == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.5, "d": 0.25})
    assert [hit.id for hit in fused] == ["a", "c", "b", "d"]
    assert {hit.id: (hit.lexical_rank, hit.dense_rank) for hit in fused} == {
        "a": (1, 3),
        "b": (2, 0),
        "c": (3, 1),
        "d": (0, 2),
    }


@pytest.mark.parametrize(("weight", "first"), [(0.0, "a"), (1.0, "c")])
def test_weight_extremes_follow_one_list(weight: float, first: str) -> None:
    assert WeightedFusion(dense_weight=weight)(LEXICAL, DENSE)[0].id == first


def test_constant_scores_normalise_to_one_and_empty_lists_are_fine() -> None:
    fused = WeightedFusion(0.25)([("a", 3.0), ("b", 3.0)], [])
    assert [(h.id, h.score) for h in fused] == [("a", 0.75), ("b", 0.75)]
    assert WeightedFusion()([], []) == []
    assert ReciprocalRankFusion()([], []) == []


def test_limit_keeps_the_best() -> None:
    assert [h.id for h in fuse("rrf", LEXICAL, DENSE, limit=2)] == ["a", "c"]


def test_inputs_are_not_mutated() -> None:
    lexical, dense = list(LEXICAL), list(DENSE)
    fuse(FusionMethod.WEIGHTED, lexical, dense)
    assert lexical == LEXICAL
    assert dense == DENSE


def test_dispatch_table_covers_every_method() -> None:
    assert isinstance(make_fuser(FusionMethod.RRF, rrf_k=10), ReciprocalRankFusion)
    assert isinstance(make_fuser("weighted", dense_weight=0.3), WeightedFusion)
    for method in FusionMethod:
        assert fuse(method, LEXICAL, DENSE)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: ReciprocalRankFusion(k=0), "rrf_k"),
        (lambda: WeightedFusion(dense_weight=1.5), "dense_weight"),
        (lambda: WeightedFusion(dense_weight=-0.1), "dense_weight"),
        (lambda: WeightedFusion(dense_weight=math.nan), "dense_weight"),
        (lambda: make_fuser("borda"), "fusion"),
        (lambda: fuse("rrf", [("a", 1.0), ("a", 0.5)], []), "lexical[1].id"),
        (lambda: fuse("rrf", [], [("", 1.0)]), "dense[0].id"),
        (lambda: fuse("weighted", [("a", math.inf)], []), "lexical[0].score"),
        (lambda: fuse("rrf", LEXICAL, DENSE, limit=0), "limit"),
    ],
)
def test_invalid_arguments_name_the_field(call: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        call()
    assert raised.value.message.startswith(f"{field}:")
