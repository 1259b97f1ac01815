"""Fusion of a lexical and a dense ranked list into one ranking.

Pure functions, no I/O: the embedded retriever backend, the OpenSearch backend and the gateway all
call these, so every path ranks alike. Inputs are ranked lists of ``(id, score)`` pairs, best
first (the list order is the rank; scores are only read by weighted fusion). The output is a list
of ``FusedHit`` sorted by fused score, best first, carrying each id's 1-based rank in either input
list (0 when absent from that list).

Ties in fused score are broken by the better of the two input ranks, then by id, so results are
deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ragfleet.runtime.errors import InvalidInput

# Cormack, Clarke and Buettcher (SIGIR 2009) chose 60: large enough that a document ranked first
# in one list alone does not outweigh one ranked well in both, and results are insensitive to
# values between roughly 10 and 100. OpenSearch's and Elasticsearch's RRF use the same default.
DEFAULT_RRF_K = 60
# Weighted fusion's default share of the dense list. 0.5 scores best where the dense model is as
# good as BM25, but sinks below BM25 where it is much weaker (a held-out biomedical set: 0.543
# against BM25's 0.591). benchmarks/fusion_study.py measured it on SciFact train and ClapNQ, each
# also with a dense side made weak on purpose: 0.3 stayed above BM25 on every one of those rows
# (0.5 fell below on four) and gave up at most 0.014 nDCG@10 where the dense side is strong.
DEFAULT_DENSE_WEIGHT = 0.3

RankedList = Sequence[tuple[str, float]]


class FusionMethod(StrEnum):
    RRF = "rrf"
    """Reciprocal rank fusion: sum of ``1 / (k + rank)`` over the lists an id appears in."""
    WEIGHTED = "weighted"
    """Min-max normalise each list's scores to [0, 1], then ``w * dense + (1 - w) * lexical``."""


@dataclass(frozen=True, slots=True)
class FusedHit:
    id: str
    score: float
    lexical_rank: int
    """1-based rank in the lexical list; 0 when the id is absent from it."""
    dense_rank: int
    """1-based rank in the dense list; 0 when the id is absent from it."""


def _ranks(name: str, hits: RankedList, *, check_scores: bool) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for position, (hit_id, score) in enumerate(hits):
        if not isinstance(hit_id, str) or not hit_id:
            raise InvalidInput(f"{name}[{position}].id: must be a non-empty string")
        if hit_id in ranks:
            raise InvalidInput(
                f"{name}[{position}].id: {hit_id!r} already appears at rank {ranks[hit_id]}"
            )
        if check_scores and not math.isfinite(score):
            raise InvalidInput(f"{name}[{position}].score: must be finite, got {score}")
        ranks[hit_id] = position + 1
    return ranks


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise InvalidInput(f"limit: must be at least 1 when set, got {limit}")


def _ranked(
    scores: Mapping[str, float],
    lexical_ranks: Mapping[str, int],
    dense_ranks: Mapping[str, int],
    limit: int | None,
) -> list[FusedHit]:
    def best_rank(hit_id: str) -> int:
        present = [r for r in (lexical_ranks.get(hit_id, 0), dense_ranks.get(hit_id, 0)) if r]
        return min(present)

    order = sorted(scores, key=lambda hit_id: (-scores[hit_id], best_rank(hit_id), hit_id))
    if limit is not None:
        order = order[:limit]
    return [
        FusedHit(
            id=hit_id,
            score=scores[hit_id],
            lexical_rank=lexical_ranks.get(hit_id, 0),
            dense_rank=dense_ranks.get(hit_id, 0),
        )
        for hit_id in order
    ]


@dataclass(frozen=True, slots=True)
class ReciprocalRankFusion:
    """Reciprocal rank fusion with rank constant ``k`` (at least 1, default 60)."""

    k: int = DEFAULT_RRF_K

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InvalidInput(f"rrf_k: must be an integer of at least 1, got {self.k!r}")

    def __call__(
        self, lexical: RankedList, dense: RankedList, limit: int | None = None
    ) -> list[FusedHit]:
        _check_limit(limit)
        lexical_ranks = _ranks("lexical", lexical, check_scores=False)
        dense_ranks = _ranks("dense", dense, check_scores=False)
        scores: dict[str, float] = {}
        for ranks in (lexical_ranks, dense_ranks):
            for hit_id, rank in ranks.items():
                scores[hit_id] = scores.get(hit_id, 0.0) + 1.0 / (self.k + rank)
        return _ranked(scores, lexical_ranks, dense_ranks, limit)


@dataclass(frozen=True, slots=True)
class WeightedFusion:
    """Min-max normalised weighted sum; ``dense_weight`` in [0, 1] (default
    ``DEFAULT_DENSE_WEIGHT``).

    Each list's scores are scaled to [0, 1] by its own minimum and maximum (a list whose scores
    are all equal scales to 1.0); an id absent from a list contributes 0 for that list.
    """

    dense_weight: float = DEFAULT_DENSE_WEIGHT

    def __post_init__(self) -> None:
        weight = self.dense_weight
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not 0.0 <= weight <= 1.0
        ):
            raise InvalidInput(f"dense_weight: must be a number in [0, 1], got {weight!r}")

    def __call__(
        self, lexical: RankedList, dense: RankedList, limit: int | None = None
    ) -> list[FusedHit]:
        _check_limit(limit)
        lexical_ranks = _ranks("lexical", lexical, check_scores=True)
        dense_ranks = _ranks("dense", dense, check_scores=True)
        scores: dict[str, float] = {}
        for hits, weight in ((lexical, 1.0 - self.dense_weight), (dense, self.dense_weight)):
            for hit_id, normalised in _min_max(hits).items():
                scores[hit_id] = scores.get(hit_id, 0.0) + weight * normalised
        return _ranked(scores, lexical_ranks, dense_ranks, limit)


def _min_max(hits: RankedList) -> dict[str, float]:
    if not hits:
        return {}
    low = min(score for _, score in hits)
    span = max(score for _, score in hits) - low
    if span == 0.0:
        return {hit_id: 1.0 for hit_id, _ in hits}
    return {hit_id: (score - low) / span for hit_id, score in hits}


Fuser = Callable[[RankedList, RankedList, int | None], list[FusedHit]]

_FUSERS: Mapping[FusionMethod, Callable[[int, float], Fuser]] = {
    FusionMethod.RRF: lambda rrf_k, _dense_weight: ReciprocalRankFusion(k=rrf_k),
    FusionMethod.WEIGHTED: lambda _rrf_k, dense_weight: WeightedFusion(dense_weight=dense_weight),
}


def make_fuser(
    method: FusionMethod | str,
    *,
    rrf_k: int = DEFAULT_RRF_K,
    dense_weight: float = DEFAULT_DENSE_WEIGHT,
) -> Fuser:
    """The fuser for ``method`` (a ``FusionMethod`` or its value); only the parameter that method
    uses is validated. Raises ``InvalidInput`` naming ``fusion`` for an unknown method."""
    try:
        chosen = FusionMethod(method)
    except ValueError:
        known = ", ".join(m.value for m in FusionMethod)
        raise InvalidInput(f"fusion: unknown method {method!r}; expected one of {known}") from None
    return _FUSERS[chosen](rrf_k, dense_weight)


def check_options(rrf_k: int | None = None, dense_weight: float | None = None) -> None:
    """Raises ``InvalidInput`` naming ``rrf_k`` or ``dense_weight`` when either is out of range;
    None stands for the default. The rule every front end applies before a search."""
    if rrf_k is not None:
        ReciprocalRankFusion(rrf_k)
    if dense_weight is not None:
        WeightedFusion(dense_weight)


def fuse(
    method: FusionMethod | str,
    lexical: RankedList,
    dense: RankedList,
    *,
    rrf_k: int = DEFAULT_RRF_K,
    dense_weight: float = DEFAULT_DENSE_WEIGHT,
    limit: int | None = None,
) -> list[FusedHit]:
    """Fuses ``lexical`` and ``dense`` with ``method``; keeps the best ``limit`` when set."""
    return make_fuser(method, rrf_k=rrf_k, dense_weight=dense_weight)(lexical, dense, limit)
