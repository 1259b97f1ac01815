"""Splits one qrels split of a BEIR folder into a fitting part and a held-out part, so that
hyper-parameters of a model trained on that split (epochs, fusion weights) can be chosen on
queries it never saw, without touching the test split.

Writes a BEIR folder at ``--out`` whose corpus and queries are symbolic links to the original
files (nothing is copied) and whose ``qrels/`` holds ``<split>-fit.tsv`` and
``<split>-dev.tsv``, a seeded random ``--holdout`` share of the judged queries:

    .venv/bin/python benchmarks/holdout_split.py --dataset ../shared/datasets/scifact \\
        --split train --holdout 0.2 --out var/datasets/scifact-holdout
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a BEIR folder")
    parser.add_argument("--split", default="train")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of queries held out")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not 0 < args.holdout < 1:
        parser.error(f"--holdout must be in (0, 1), got {args.holdout}")
    source = args.dataset.resolve()
    with (source / "qrels" / f"{args.split}.tsv").open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file, delimiter="\t")
        header = next(reader)
        rows = [row for row in reader if row]
    queries = sorted({row[0] for row in rows})
    held = set(random.Random(args.seed).sample(queries, round(len(queries) * args.holdout)))
    (args.out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        link = args.out / name
        link.unlink(missing_ok=True)
        link.symlink_to(source / name)
    for part, keep in (("fit", False), ("dev", True)):
        with (args.out / "qrels" / f"{args.split}-{part}.tsv").open(
            "w", newline="", encoding="utf-8"
        ) as file:
            writer = csv.writer(file, delimiter="\t", lineterminator="\n")
            writer.writerow(header)
            writer.writerows(row for row in rows if (row[0] in held) == keep)
    print(f"{args.out}: {len(queries) - len(held)} queries to fit on, {len(held)} held out")


if __name__ == "__main__":
    main()
