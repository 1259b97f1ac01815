"""Tunes hybrid fusion (RRF k, weighted fusion's dense weight) and candidate depth on a TRAIN
split, then writes the configuration files that `ragfleet eval retrieval` scores on the test split:
``--out`` (whole documents) and ``<out>-chunking.toml`` (the same with token chunks too).

Each grid point is one `RetrievalConfig` run by `ragfleet_tools.eval` on the fleet's components (the
retriever's embedded index, the embedder's model, `ragfleet.fusion`); the winner per fusion
method is the best train nDCG@10 (ties: the shallower depth). Test qrels are never read here.
Not a timed test: it prints the grid and writes a TOML file.

    .venv/bin/python benchmarks/tune_retrieval.py \
        --dataset ../shared/datasets/scifact --split train --out benchmarks/configs/scifact.toml
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ragfleet.domain import SearchMode
from ragfleet.fusion import FusionMethod
from ragfleet.runtime.logging import configure_logging
from ragfleet_tools.eval.beir import BeirDataset
from ragfleet_tools.eval.config import RetrievalConfig
from ragfleet_tools.eval.retrieval import EmbedderEncoder, RetrievalEvaluator

DEPTHS = (50, 100, 200)
RRF_KS = (10, 20, 40, 60, 100)
DENSE_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7)
# Whole documents against token chunks of two sizes (MiniLM reads at most 256 tokens).
CHUNKINGS = (
    ("whole", '"none"'),
    ("tok128", '{ strategy = "tokens", size = 128, overlap = 32 }'),
    ("tok250", '{ strategy = "tokens", size = 250, overlap = 50 }'),
)


def grid() -> list[RetrievalConfig]:
    configs = []
    for depth in DEPTHS:
        configs += [
            RetrievalConfig(
                f"rrf-k{k}-d{depth}", fusion=FusionMethod.RRF, rrf_k=k, candidate_k=depth
            )
            for k in RRF_KS
        ]
        configs += [
            RetrievalConfig(
                f"weighted-w{w}-d{depth}",
                fusion=FusionMethod.WEIGHTED,
                dense_weight=w,
                candidate_k=depth,
            )
            for w in DENSE_WEIGHTS
        ]
    return configs


def best(results: list[tuple[RetrievalConfig, float]], fusion: FusionMethod) -> RetrievalConfig:
    ranked = [(c, s) for c, s in results if c.fusion is fusion]
    return max(ranked, key=lambda cs: (round(cs[1], 4), -cs[0].candidate_k))[0]


def toml(
    rrf: RetrievalConfig,
    weighted: RetrievalConfig,
    source: str,
    chunkings: tuple[tuple[str, str], ...],
) -> str:
    lines = [
        f"# Written by benchmarks/tune_retrieval.py: fusion and depth tuned on {source}.",
        "# Score on the test split with `ragfleet eval retrieval --config <this file>`.",
    ]
    depth = weighted.candidate_k
    for label, chunking in chunkings:
        suffix = "" if label == "whole" else f"-{label}"
        entries = [
            (f"bm25{suffix}", f'mode = "lexical"\ncandidate_k = {depth}'),
            (f"dense{suffix}", f'mode = "dense"\ncandidate_k = {depth}'),
            (
                f"hybrid-rrf{suffix}",
                f'fusion = "rrf"\nrrf_k = {rrf.rrf_k}\ncandidate_k = {rrf.candidate_k}',
            ),
            (
                f"hybrid-weighted{suffix}",
                f'fusion = "weighted"\ndense_weight = {weighted.dense_weight}\n'
                f"candidate_k = {weighted.candidate_k}",
            ),
        ]
        for name, body in entries:
            lines += ["", "[[config]]", f'name = "{name}"', body, f"chunking = {chunking}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/eval-cache"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.split == "test":
        sys.exit("tune on a train or dev split; the test split is for reporting")
    configure_logging("WARNING", fmt="console")
    dataset = BeirDataset.load(args.dataset, args.split)
    encoder = EmbedderEncoder.from_env()
    evaluator = RetrievalEvaluator(
        dataset, encoder, args.cache_dir, tokenizer=encoder.tokenizer, progress=print
    )
    started = time.perf_counter()
    singles = [
        RetrievalConfig("bm25", mode=SearchMode.LEXICAL),
        RetrievalConfig("dense", mode=SearchMode.DENSE),
    ]
    evaluation = evaluator.evaluate([*singles, *grid()])
    evaluator.close()
    scored = [(r.config, r.metrics.ndcg_at_10) for r in evaluation.results[len(singles) :]]
    seconds = [r.seconds for r in evaluation.results]
    print(
        f"\n{len(evaluation.results)} configurations on {dataset.name} {args.split} "
        f"({len(dataset.queries)} queries) in {time.perf_counter() - started:.0f} s; "
        f"per configuration: first {seconds[0]:.1f} s, median "
        f"{sorted(seconds)[len(seconds) // 2]:.2f} s (candidate lists are searched once)"
    )
    print("\n| configuration | nDCG@10 (train) |\n|---|---|")
    for result in evaluation.results:
        print(f"| {result.config.name} | {result.metrics.ndcg_at_10:.4f} |")
    rrf, weighted = best(scored, FusionMethod.RRF), best(scored, FusionMethod.WEIGHTED)
    print(f"\nbest rrf: {rrf.name}; best weighted: {weighted.name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    source = f"{dataset.name} {args.split}"
    args.out.write_text(toml(rrf, weighted, source, CHUNKINGS[:1]))
    chunking = args.out.with_name(f"{args.out.stem}-chunking{args.out.suffix}")
    chunking.write_text(toml(rrf, weighted, source, CHUNKINGS))
    print(f"wrote {args.out} (whole documents) and {chunking} (whole vs token chunks)")


if __name__ == "__main__":
    main()
