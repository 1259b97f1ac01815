"""How well the gateway's relevance gate (``MIN_DENSE_SCORE``: the dense search's best cosine
similarity) tells answerable questions from unanswerable ones on an answer set, and what each
threshold would refuse and decline. No model is asked: this is retrieval only, through the
gateway's own ``retrieve`` on the fleet's components (``LocalFleet``), on the index that
``ragfleet eval answers`` keeps for the set (built here when absent). Do not run it while an
``eval answers`` run uses the same index.

    .venv/bin/python benchmarks/relevance_gate.py --dataset ../shared/datasets/clapnq/derived
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np

from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.logging import configure_logging
from ragfleet_gateway.domain import RetrievalRequest
from ragfleet_tools.eval.answers import AnswerSet, ingest
from ragfleet_tools.eval.cli import DEFAULT_CACHE
from ragfleet_tools.eval.local_fleet import LocalFleet

THRESHOLDS = (0.3, 0.45, 0.5, 0.55, 0.6, 0.65)


async def best_scores(data: AnswerSet, cache_dir: Path) -> list[tuple[bool, float]]:
    folder = cache_dir / "answers" / f"{data.name}-{data.fingerprint}"
    async with LocalFleet.open(folder / "index", generate=False) as fleet:
        if (await fleet.retriever.stats()).sources < len(data.corpus):
            await ingest(fleet.pipeline, data, print)
        scores = []
        for question in data.questions:
            found = await fleet.pipeline.retrieve(
                question.text, RetrievalRequest(), Deadline.after(60)
            )
            scores.append((question.answerable, found.best_dense_score or 0.0))
    return scores


def table(scores: list[tuple[bool, float]]) -> str:
    answerable = np.array([s for ok, s in scores if ok])
    unanswerable = np.array([s for ok, s in scores if not ok])
    auc = float((answerable[:, None] > unanswerable[None, :]).mean())
    lines = [
        f"{len(answerable)} answerable (median best score {np.median(answerable):.2f}), "
        f"{len(unanswerable)} unanswerable (median {np.median(unanswerable):.2f}); AUC {auc:.2f}",
        "",
        "| MIN_DENSE_SCORE | " + " | ".join(f"{t:g}" for t in THRESHOLDS) + " |",
        "|---|" + "---|" * len(THRESHOLDS),
        "| answerable refused | "
        + " | ".join(f"{(answerable < t).mean():.2f}" for t in THRESHOLDS)
        + " |",
        "| unanswerable declined | "
        + " | ".join(f"{(unanswerable < t).mean():.2f}" for t in THRESHOLDS)
        + " |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    configure_logging("WARNING", fmt="console")
    data = AnswerSet.load(args.dataset, args.split)
    print(table(asyncio.run(best_scores(data, args.cache_dir))), end="")


if __name__ == "__main__":
    main()
