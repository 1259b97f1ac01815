"""``ragfleet eval gate``: how well the gateway's relevance gate tells the questions a corpus
answers from those it does not, and the threshold to set for a refusal rate you accept.

The gate is ``RAGFLEET_GATEWAY_MIN_DENSE_SCORE``: below it, the dense search's best cosine
similarity means nothing relevant was found and the gateway declines without asking a model.
Cosine scales depend on the embedding model *and* the corpus (this project's docs answer its
questions at 0.41-0.61, ClapNQ's passages at a median of 0.70), so one default cannot serve
every deployment: this command measures the scale on a labelled answer set (the layouts
``ragfleet eval answers`` reads) and picks the highest threshold that refuses at most
``--max-refused`` of its answerable questions. No model is asked: retrieval only, through the
gateway's own ``retrieve`` on the fleet's components, on the index ``eval answers`` keeps for
the set (built here when absent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import InvalidInput
from ragfleet_gateway.domain import RetrievalRequest
from ragfleet_tools.eval.answers import AnswerSet, Question, bootstrap, ingest, resamples

THRESHOLDS = (0.3, 0.45, 0.5, 0.55, 0.6, 0.65)
"""The thresholds every report shows, beside the chosen one."""


@dataclass(frozen=True)
class GateScores:
    """The best dense score of each answerable and each unanswerable question."""

    answerable: np.ndarray
    unanswerable: np.ndarray

    @classmethod
    def of(cls, scored: Sequence[tuple[bool, float]]) -> GateScores:
        answerable = np.array([s for ok, s in scored if ok], dtype=np.float64)
        unanswerable = np.array([s for ok, s in scored if not ok], dtype=np.float64)
        if answerable.size == 0 or unanswerable.size == 0:
            raise InvalidInput(
                "dataset: the gate needs answerable and unanswerable questions; these "
                f"questions hold {answerable.size} and {unanswerable.size}"
            )
        return cls(answerable, unanswerable)

    def auc(self) -> tuple[float, float, float]:
        """The chance that an answerable question outscores an unanswerable one, with a 95%
        bootstrap interval (each kind resampled on its own)."""

        def auc(a: np.ndarray, u: np.ndarray) -> float:
            return float((a[:, None] > u[None, :]).mean() + 0.5 * (a[:, None] == u[None, :]).mean())

        a_rows = resamples(self.answerable.size, seed=1)
        u_rows = resamples(self.unanswerable.size, seed=2)
        draws = [
            auc(self.answerable[a], self.unanswerable[u])
            for a, u in zip(a_rows[:500], u_rows[:500], strict=True)
        ]
        low, high = np.percentile(draws, [2.5, 97.5])
        return auc(self.answerable, self.unanswerable), float(low), float(high)

    def calibrate(self, max_refused: float) -> float:
        """The highest threshold that refuses at most ``max_refused`` of the answerable
        questions (a question is refused when its score is below the threshold): the most
        unanswerable questions declined for that price."""
        if not 0.0 <= max_refused < 1.0:
            raise InvalidInput(f"--max-refused: must be in [0, 1), got {max_refused}")
        ordered = np.sort(self.answerable)
        allowed = int(np.floor(max_refused * ordered.size + 1e-9))
        return float(ordered[allowed])

    def at(self, threshold: float) -> dict[str, tuple[float, float, float]]:
        """The share of answerable questions refused and of unanswerable ones declined at
        ``threshold``, each with its 95% bootstrap interval."""
        return {
            "answerable refused": bootstrap((self.answerable < threshold).tolist()),
            "unanswerable declined": bootstrap((self.unanswerable < threshold).tolist()),
        }


async def best_scores(
    data: AnswerSet,
    questions: Sequence[Question],
    cache_dir: Path,
    progress: Callable[[str], None],
) -> list[tuple[bool, float]]:
    """Each question's answerability and the best dense score the gateway's retrieval finds for
    it (0 when the dense side found nothing)."""
    from ragfleet_tools.eval.local_fleet import LocalFleet

    folder = cache_dir / "answers" / f"{data.name}-{data.fingerprint}"
    async with LocalFleet.open(folder / "index", generate=False) as fleet:
        if (await fleet.retriever.stats()).sources < len(data.corpus):
            await ingest(fleet.pipeline, data, progress)
        scored = []
        for question in questions:
            found = await fleet.pipeline.retrieve(
                question.text, RetrievalRequest(), Deadline.after(60)
            )
            scored.append((question.answerable, found.best_dense_score or 0.0))
    return scored


def report(
    scores: GateScores, max_refused: float, thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, Any]:
    """The gate's measures as JSON: AUC, the chosen threshold and every threshold's rates."""
    auc, low, high = scores.auc()
    chosen = scores.calibrate(max_refused)
    rows = []
    for threshold in sorted({*thresholds, chosen}):
        rates = scores.at(threshold)
        rows.append(
            {
                "threshold": threshold,
                "chosen": threshold == chosen,
                **{name: list(values) for name, values in rates.items()},
            }
        )
    return {
        "answerable": int(scores.answerable.size),
        "unanswerable": int(scores.unanswerable.size),
        "median best score": {
            "answerable": float(np.median(scores.answerable)),
            "unanswerable": float(np.median(scores.unanswerable)),
        },
        "auc": [auc, low, high],
        "max_refused": max_refused,
        "threshold": chosen,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    median = result["median best score"]
    auc, low, high = result["auc"]
    lines = [
        f"{result['answerable']} answerable questions (median best score "
        f"{median['answerable']:.3f}), {result['unanswerable']} unanswerable "
        f"({median['unanswerable']:.3f}); AUC {auc:.3f} ({low:.3f}-{high:.3f})",
        "",
        "| MIN_DENSE_SCORE | answerable refused | 95% CI | unanswerable declined | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        refused, declined = row["answerable refused"], row["unanswerable declined"]
        name = f"**{row['threshold']:.3f}** (chosen)" if row["chosen"] else f"{row['threshold']:g}"
        lines.append(
            f"| {name} | {refused[0]:.3f} | {refused[1]:.3f}-{refused[2]:.3f} "
            f"| {declined[0]:.3f} | {declined[1]:.3f}-{declined[2]:.3f} |"
        )
    lines += [
        "",
        f"The highest threshold refusing at most {result['max_refused']:.0%} of these "
        f"answerable questions: RAGFLEET_GATEWAY_MIN_DENSE_SCORE={result['threshold']:.3f}",
    ]
    return "\n".join(lines) + "\n"
