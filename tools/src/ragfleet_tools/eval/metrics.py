"""nDCG@10, Recall@100 and MRR@10 of a ranked run against judgments, TREC-style.

``ir-measures`` computes them through ``pytrec_eval`` (trec_eval's own C code), the
implementation behind BEIR's and Anserini's published numbers, so ours compare with theirs.
One difference from trec_eval's default, on purpose: the mean is over every judged query, and a
query the system returned nothing for scores 0 (trec_eval silently skips it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ir_measures
from ir_measures import RR, R, nDCG

from ragfleet_tools.eval.beir import Qrels

_MEASURES = {"ndcg_at_10": nDCG @ 10, "recall_at_100": R @ 100, "mrr_at_10": RR @ 10}
HEADERS = {"ndcg_at_10": "nDCG@10", "recall_at_100": "Recall@100", "mrr_at_10": "MRR@10"}

Run = Mapping[str, Sequence[str]]
"""Query id -> document ids, best first."""


@dataclass(frozen=True)
class RetrievalMetrics:
    """Means over ``queries`` judged queries."""

    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "ndcg_at_10": self.ndcg_at_10,
            "recall_at_100": self.recall_at_100,
            "mrr_at_10": self.mrr_at_10,
            "queries": self.queries,
        }


def evaluate_run(qrels: Qrels, run: Run) -> RetrievalMetrics:
    """Scores ``run`` against ``qrels``. The ranking is the list order: scores handed to
    trec_eval are derived from positions, so its tie-breaking never reorders documents."""
    scored = {
        query_id: {doc_id: float(len(ranking) - i) for i, doc_id in enumerate(ranking)}
        for query_id, ranking in run.items()
        if query_id in qrels and ranking
    }
    totals = dict.fromkeys(_MEASURES, 0.0)
    by_measure = {measure: key for key, measure in _MEASURES.items()}
    if scored:
        judged = {query_id: dict(qrels[query_id]) for query_id in scored}
        for metric in ir_measures.iter_calc(list(_MEASURES.values()), judged, scored):
            totals[by_measure[metric.measure]] += metric.value
    count = len(qrels)
    if count == 0:
        return RetrievalMetrics(0.0, 0.0, 0.0, 0)
    return RetrievalMetrics(
        ndcg_at_10=totals["ndcg_at_10"] / count,
        recall_at_100=totals["recall_at_100"] / count,
        mrr_at_10=totals["mrr_at_10"] / count,
        queries=count,
    )
