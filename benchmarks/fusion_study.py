"""Why hybrid fusion sinks below its better side, and which fusion does not: a study on the
development splits of several datasets.

For each dataset and chunking it takes each query's lexical and dense candidate lists once
(the retriever's embedded index, the embedder's model, as `ragfleet eval retrieval` does), then
scores every fusion function on the same lists, per query, so differences are paired. Besides
the real dense side it builds stressed ones, to stand in for corpora where the dense model is
weak (the held-out biomedical set, where MiniLM scores half of BM25): the dense model shown only
the first N tokens of each passage. A fusion that is robust stays at or above BM25 on every row.

    .venv/bin/python benchmarks/fusion_study.py --report /tmp/fusion.md

Not a timed test: it prints a table per dataset and writes a Markdown report. Test splits are
never read.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ragfleet.chunking import ChunkingConfig, ChunkingStrategy, load_embedder_tokenizer
from ragfleet.fusion import FusionMethod, fuse
from ragfleet.runtime.logging import configure_logging
from ragfleet_embedder.settings import EmbedderSettings
from ragfleet_tools.eval.beir import BeirDataset, datasets_dir
from ragfleet_tools.eval.retrieval import CorpusIndex, EmbedderEncoder, TextEncoder

DEPTH = 100
Ranked = list[tuple[str, float]]


class TruncatedEncoder:
    """The embedder's model shown only the first ``tokens`` word pieces of each passage: a
    deliberately weak dense side."""

    def __init__(self, inner: EmbedderEncoder, tokens: int) -> None:
        self._inner = inner
        self._tokens = tokens
        self._tokenizer = inner.tokenizer()

    @property
    def name(self) -> str:
        return f"{self._inner.name} (first {self._tokens} tokens)"

    @property
    def cache_key(self) -> str:
        return f"{self._inner.cache_key}-first{self._tokens}"

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def encode_queries(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._inner.encode_queries(texts)

    def encode_passages(self, texts: Sequence[str]) -> NDArray[np.float32]:
        cut = []
        for text in texts:
            offsets = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
            cut.append(
                text[: offsets[self._tokens - 1][1]] if len(offsets) > self._tokens else text
            )
        return self._inner.encode_passages(cut)


@dataclass
class Lists:
    """Per judged query: the lexical and dense chunk lists (depth ``DEPTH``) and each chunk's
    document."""

    lexical: dict[str, Ranked]
    dense: dict[str, Ranked]
    document: dict[str, str]


def collect(
    dataset: BeirDataset, index: CorpusIndex, vectors: dict[str, NDArray[np.float32]]
) -> Lists:
    lexical, dense, document = {}, {}, {}
    for query_id, query in dataset.queries.items():
        lexical[query_id] = index.lexical(query_id, query, DEPTH)
        dense[query_id] = index.dense(query_id, vectors[query_id].tolist(), DEPTH)
        ids = [i for i, _ in lexical[query_id]] + [i for i, _ in dense[query_id]]
        for chunk in index.chunks(ids):
            document[chunk.id] = chunk.source
    return Lists(lexical, dense, document)


# --- fusion functions under study: (lexical, dense) -> chunk ids, best first -------------------

Fusion = Callable[[Ranked, Ranked], list[str]]


def lexical_only(lexical: Ranked, _dense: Ranked) -> list[str]:
    return [i for i, _ in lexical]


def dense_only(_lexical: Ranked, dense: Ranked) -> list[str]:
    return [i for i, _ in dense]


def product(method: FusionMethod, **options: float) -> Fusion:
    def run(lexical: Ranked, dense: Ranked) -> list[str]:
        return [h.id for h in fuse(method, lexical, dense, **options)]  # type: ignore[arg-type]

    return run


def _convex(lexical: dict[str, float], dense: dict[str, float], weight: float) -> list[str]:
    scores: dict[str, float] = {}
    for hits, w in ((lexical, 1.0 - weight), (dense, weight)):
        for hit_id, score in hits.items():
            scores[hit_id] = scores.get(hit_id, 0.0) + w * score
    return sorted(scores, key=lambda i: -scores[i])


def theoretical_min_max(weight: float, dense_floor: float) -> Fusion:
    """Bruch, Gai and Ingber (2023), TM2C2: each list scaled by its theoretical minimum (0 for
    BM25, ``dense_floor`` for cosine) and its observed maximum, then a convex combination. A
    dense list whose scores are all alike stays compressed near its top instead of being
    stretched over [0, 1] as min-max does."""

    def scale(hits: Ranked, floor: float) -> dict[str, float]:
        top = max((s for _, s in hits), default=floor + 1.0)
        span = (top - floor) or 1.0
        return {i: max(s - floor, 0.0) / span for i, s in hits}

    def run(lexical: Ranked, dense: Ranked) -> list[str]:
        return _convex(scale(lexical, 0.0), scale(dense, dense_floor), weight)

    return run


def fixed_range(weight: float) -> Fusion:
    """Lexical scaled by its maximum, cosine taken as it is (its range is fixed)."""

    def run(lexical: Ranked, dense: Ranked) -> list[str]:
        top = max((s for _, s in lexical), default=1.0) or 1.0
        return _convex({i: s / top for i, s in lexical}, {i: max(s, 0.0) for i, s in dense}, weight)

    return run


def z_score(weight: float) -> Fusion:
    def norm(hits: Ranked) -> dict[str, float]:
        if not hits:
            return {}
        values = np.array([s for _, s in hits])
        spread = float(values.std()) or 1.0
        return {i: (s - float(values.mean())) / spread for i, s in hits}

    def run(lexical: Ranked, dense: Ranked) -> list[str]:
        low_l = norm(lexical)
        low_d = norm(dense)
        floor = min([*low_l.values(), *low_d.values(), 0.0])
        return _convex(
            {i: s - floor for i, s in low_l.items()},
            {i: s - floor for i, s in low_d.items()},
            weight,
        )

    return run


def agreement_weighted(top: int, low: float, high: float) -> Fusion:
    """Weighted (min-max) fusion whose dense weight grows with the overlap of the two lists'
    first ``top`` ids: lists that disagree mean one side is lost, and BM25 is the side that
    rarely is out of domain."""

    def run(lexical: Ranked, dense: Ranked) -> list[str]:
        a = {i for i, _ in lexical[:top]}
        b = {i for i, _ in dense[:top]}
        overlap = len(a & b) / top if a and b else 0.0
        weight = low + (high - low) * overlap
        return [h.id for h in fuse(FusionMethod.WEIGHTED, lexical, dense, dense_weight=weight)]

    return run


FUSIONS: dict[str, Fusion] = {
    "bm25": lexical_only,
    "dense": dense_only,
    "rrf k=60": product(FusionMethod.RRF, rrf_k=60),
    "rrf k=10": product(FusionMethod.RRF, rrf_k=10),
    **{
        f"minmax w={w}": product(FusionMethod.WEIGHTED, dense_weight=w)
        for w in (0.2, 0.3, 0.4, 0.5)
    },
    **{f"tm2c2 w={w}": theoretical_min_max(w, 0.0) for w in (0.3, 0.4, 0.5, 0.6, 0.7)},
    **{f"tm2c2(-1) w={w}": theoretical_min_max(w, -1.0) for w in (0.5, 0.7, 0.8)},
    **{f"fixed w={w}": fixed_range(w) for w in (0.3, 0.5)},
    **{f"z w={w}": z_score(w) for w in (0.3, 0.5)},
    "agree 0.1-0.5": agreement_weighted(10, 0.1, 0.5),
    "agree 0.2-0.6": agreement_weighted(10, 0.2, 0.6),
}


# --- scoring ------------------------------------------------------------------------------------


def ndcg_at_10(ranking: Sequence[str], judged: Mapping[str, int]) -> float:
    gain = sum(
        (2 ** judged.get(doc, 0) - 1) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:10])
    )
    ideal = sorted(judged.values(), reverse=True)[:10]
    best = sum((2**g - 1) / math.log2(rank + 2) for rank, g in enumerate(ideal))
    return gain / best if best else 0.0


def documents(chunk_ids: Sequence[str], document: dict[str, str]) -> list[str]:
    seen: dict[str, None] = {}
    for chunk_id in chunk_ids:
        seen.setdefault(document[chunk_id], None)
    return list(seen)


def per_query(lists: Lists, dataset: BeirDataset, fusion: Fusion) -> NDArray[np.float64]:
    return np.array(
        [
            ndcg_at_10(
                documents(fusion(lists.lexical[q], lists.dense[q]), lists.document),
                dataset.qrels[q],
            )
            for q in dataset.queries
        ]
    )


def paired_ci(diff: NDArray[np.float64], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = rng.choice(diff, size=(rounds, diff.size), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("var/eval-cache"))
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--stress", type=int, nargs="*", default=[32])
    parser.add_argument("--sample", type=int, default=0, help="judged queries per set (0: all)")
    args = parser.parse_args()
    configure_logging("WARNING")
    root = datasets_dir()
    sets = [("scifact", "train"), ("clapnq/derived", "dev")]
    if not all((root / name).is_dir() for name, _ in sets):
        print(f"skipped: the datasets are not in {root}", file=sys.stderr)
        return 0
    chunkings = [
        ChunkingConfig(ChunkingStrategy.NONE),
        ChunkingConfig(),  # the fleet's ingestion default
    ]
    base = EmbedderEncoder.from_env()
    windowed = EmbedderEncoder(EmbedderSettings(long_text_windows=True))
    encoders: list[TextEncoder] = [
        base,
        windowed,
        *(TruncatedEncoder(base, n) for n in args.stress),
    ]
    rows: list[tuple[str, str, str, dict[str, NDArray[np.float64]]]] = []
    for name, split in sets:
        dataset = BeirDataset.load(root / name, split)
        if args.sample and len(dataset.queries) > args.sample:
            keep = random.Random(0).sample(sorted(dataset.queries), args.sample)
            dataset = BeirDataset(
                dataset.name,
                dataset.split,
                dataset.corpus,
                {q: dataset.queries[q] for q in keep},
                {q: dataset.qrels[q] for q in keep},
                dataset.fingerprint,
            )
        queries = [dataset.queries[q] for q in dataset.queries]
        vectors = dict(zip(dataset.queries, base.encode_queries(queries), strict=True))
        for chunking in chunkings:
            for encoder in encoders:
                if encoder is windowed and chunking.strategy is not ChunkingStrategy.NONE:
                    continue  # chunks fit the model already: windows change nothing
                started = time.perf_counter()
                index = CorpusIndex.open_or_build(
                    dataset,
                    chunking,
                    encoder,
                    args.cache_dir,
                    load_embedder_tokenizer,
                    lambda m: print(f"  {m}", file=sys.stderr),
                )
                lists = collect(dataset, index, vectors)
                index.close()
                scores = {label: per_query(lists, dataset, f) for label, f in FUSIONS.items()}
                label = encoder.name + (" windows" if encoder is windowed else "")
                rows.append((f"{dataset.name} {split}", chunking.label, label, scores))
                print(
                    f"{dataset.name} {chunking.label} {label} "
                    f"({time.perf_counter() - started:.0f} s): "
                    + ", ".join(f"{k} {v.mean():.3f}" for k, v in scores.items()),
                    flush=True,
                )
    report = render(rows)
    print(report)
    if args.report:
        args.report.write_text(report)
    return 0


def render(rows: list[tuple[str, str, str, dict[str, NDArray[np.float64]]]]) -> str:
    labels = list(FUSIONS)
    lines = [
        "| dataset | chunking | dense side | " + " | ".join(labels) + " |",
        "|" + "---|" * (3 + len(labels)),
    ]
    for dataset, chunking, encoder, scores in rows:
        bm25 = scores["bm25"]
        cells = []
        for label in labels:
            value = scores[label]
            if label == "bm25":
                cells.append(f"{value.mean():.3f}")
                continue
            low, high = paired_ci(value - bm25)
            mark = "**" if low > 0 else ("~~" if high < 0 else "")
            cells.append(f"{mark}{value.mean():.3f}{mark}")
        lines.append(f"| {dataset} | {chunking} | {encoder} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "nDCG@10 per configuration; **bold**: above BM25 (paired bootstrap 95% CI of the "
        "difference above 0), ~~struck~~: below it."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
