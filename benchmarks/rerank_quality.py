"""Reranking quality and latency on a BEIR split: first stage alone against first stage + reranker.

First-stage runs: BM25 from the retriever's tantivy index alone (no embeddings needed), and the
fleet's default hybrid (weighted fusion 0.5, 100 candidates per side) from the evaluation harness
(``ragfleet_tools.eval``: the retriever's embedded index, the embedder's model,
``ragfleet.fusion``), whose corpus index cache it shares. Each ``--reranker`` (a
``ragfleet.rerank`` spec) rescores the top ``max(--depths)`` documents of each first stage once;
every depth then reorders its own top slice of those scores. nDCG@10, Recall@100 and MRR@10 come
from ``ragfleet_tools.eval.metrics`` (trec_eval). Latency is one ``score`` call per query at
depths 20 and 50, in-process (no gRPC hop), on ``--latency-queries`` queries.

``--serve-generator`` deploys the generator (Qwen2.5-Coder-0.5B, llama.cpp) on a local Ray Serve
with its gRPC proxy on a free port and adds ``llm:<that address>`` to the rerankers: use it with a
small ``--queries`` and ``--depths 10`` (about a second per passage on two CPU cores).

    .venv/bin/python benchmarks/rerank_quality.py --dataset ../shared/datasets/scifact \\
        --reranker cross-encoder:var/rerankers/scifact-minilm --depths 20,50,100
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ragfleet.rerank import Reranker, load_reranker
from ragfleet.runtime.logging import configure_logging
from ragfleet_tools.eval.beir import BeirDataset
from ragfleet_tools.eval.config import RetrievalConfig
from ragfleet_tools.eval.metrics import RetrievalMetrics, evaluate_run
from ragfleet_tools.eval.retrieval import EmbedderEncoder, RetrievalEvaluator
from ragfleet_tools.training.cli import lexical_ranker
from ragfleet_tools.training.reranker import passage_text

RUN_DEPTH = 100
LATENCY_DEPTHS = (20, 50)


def subset(dataset: BeirDataset, count: int | None, seed: int) -> BeirDataset:
    if count is None or count >= len(dataset.queries):
        return dataset
    chosen = sorted(random.Random(seed).sample(sorted(dataset.queries), count))
    return BeirDataset(
        name=dataset.name,
        split=dataset.split,
        corpus=dataset.corpus,
        queries={q: dataset.queries[q] for q in chosen},
        qrels={q: dataset.qrels[q] for q in chosen},
        fingerprint=dataset.fingerprint,
    )


def rerank_runs(
    dataset: BeirDataset,
    run: Mapping[str, Sequence[str]],
    reranker: Reranker,
    depths: Sequence[int],
) -> tuple[dict[int, dict[str, list[str]]], float]:
    """Per depth, the reranked run; and the seconds spent scoring (at the deepest depth)."""
    deepest = max(depths)
    runs: dict[int, dict[str, list[str]]] = {d: {} for d in depths}
    seconds = 0.0
    for query_id, ranking in run.items():
        head = list(ranking[:deepest])
        started = time.perf_counter()
        scores = reranker.score(dataset.queries[query_id], [passage_text(dataset, d) for d in head])
        seconds += time.perf_counter() - started
        for depth in depths:
            order = sorted(range(min(depth, len(head))), key=lambda i: -scores[i])
            runs[depth][query_id] = [head[i] for i in order] + list(ranking[depth:])
    return runs, seconds


def latency_ms(
    dataset: BeirDataset, run: Mapping[str, Sequence[str]], reranker: Reranker, depth: int, n: int
) -> tuple[float, float]:
    """p50 and p95 milliseconds of one ``score`` call over ``depth`` passages."""
    times = []
    for query_id in list(run)[:n]:
        passages = [passage_text(dataset, d) for d in run[query_id][:depth]]
        started = time.perf_counter()
        reranker.score(dataset.queries[query_id], passages)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


@contextlib.contextmanager
def served_generator() -> Iterator[str]:
    """The generator on a local Ray Serve; yields its gRPC proxy address."""
    import ray
    from ray import serve

    from ragfleet_generator.app import deploy
    from ragfleet_generator.settings import GeneratorSettings

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port

    settings = GeneratorSettings(
        port=free_port(), http_port=free_port(), num_cpus=1, model_cache_dir=Path("var/models")
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        deploy(settings)
        yield f"127.0.0.1:{settings.port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def row(name: str, metrics: RetrievalMetrics, extra: str = "") -> str:
    return (
        f"| {name} | {metrics.ndcg_at_10:.4f} | {metrics.recall_at_100:.4f} | "
        f"{metrics.mrr_at_10:.4f} | {extra} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a BEIR folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--reranker", action="append", default=[], help="a ragfleet.rerank spec")
    parser.add_argument("--depths", default="20,50,100", help="comma-separated rerank depths")
    parser.add_argument("--first-stage", default="bm25,hybrid", help="bm25 and/or hybrid")
    parser.add_argument("--queries", type=int, default=None, help="a seeded sample of queries")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-queries", type=int, default=30)
    parser.add_argument("--serve-generator", action="store_true", help="add the LLM scorer")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/eval-cache"))
    parser.add_argument("--report", type=Path, default=None, help="write the Markdown here")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    depths = sorted({int(d) for d in args.depths.split(",")})
    data = subset(BeirDataset.load(args.dataset, args.split), args.queries, args.seed)
    stages = args.first_stage.split(",")
    first: dict[str, Mapping[str, Sequence[str]]] = {}
    if "bm25" in stages:
        folder = args.cache_dir / f"{data.name}-{data.fingerprint}" / "bm25-only"
        first["bm25"] = lexical_ranker(data, folder)(data.queries, RUN_DEPTH)
    if "hybrid" in stages:
        encoder = EmbedderEncoder.from_env()
        evaluator = RetrievalEvaluator(data, encoder, args.cache_dir, tokenizer=encoder.tokenizer)
        try:
            first["hybrid"] = evaluator.run(RetrievalConfig("hybrid"))[0]
        finally:
            evaluator.close()
    lines = [
        f"{data.name} {data.split}, {len(data.queries)} queries",
        "",
        "| configuration | nDCG@10 | Recall@100 | MRR@10 | rerank time |",
        "|---|---|---|---|---|",
    ]
    for name, run in first.items():
        lines.append(row(name, evaluate_run(data.qrels, run)))
    latencies = []
    with contextlib.ExitStack() as stack:
        specs = list(args.reranker)
        if args.serve_generator:
            specs.append(f"llm:{stack.enter_context(served_generator())}")
        for spec in specs:
            reranker = load_reranker(spec)
            label = spec.split(":", 1)[0]
            for name, run in first.items():
                runs, seconds = rerank_runs(data, run, reranker, depths)
                per_query = seconds / len(run) * 1000
                for depth in depths:
                    lines.append(
                        row(
                            f"{name} + {label} @{depth}",
                            evaluate_run(data.qrels, runs[depth]),
                            f"{per_query:.0f} ms/query at depth {max(depths)}",
                        )
                    )
                print("\n".join(lines[-len(depths) :]), flush=True)
            if args.latency_queries:
                run = first.get("hybrid") or next(iter(first.values()))
                for depth in (d for d in LATENCY_DEPTHS if d <= max(depths)):
                    p50, p95 = latency_ms(data, run, reranker, depth, args.latency_queries)
                    latencies.append(
                        f"| {label} | {depth} | {p50:.0f} | {p95:.0f} | "
                        f"{min(args.latency_queries, len(run))} |"
                    )
    if latencies:
        lines += ["", "| reranker | depth | p50 ms | p95 ms | queries |", "|---|---|---|---|---|"]
        lines += latencies
    text = "\n".join(lines)
    print(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
