"""``ragfleet train reranker``: mine hard negatives with the project's retrieval, then fine-tune."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ragfleet.runtime.errors import RagfleetError
from ragfleet_tools.training.reranker import (
    Ranker,
    TrainingConfig,
    build_groups,
    train_cross_encoder,
)

if TYPE_CHECKING:
    from ragfleet_tools.eval.beir import BeirDataset

train_app = typer.Typer(help="Train ragfleet's own models (CPU, offline).", no_args_is_help=True)

DEFAULT_CACHE = Path("var/eval-cache")


def hybrid_ranker(dataset: BeirDataset, cache_dir: Path) -> Ranker:
    """Ranks any query texts over ``dataset``'s corpus with the evaluation harness's hybrid
    configuration (the fleet's defaults: BM25 + MiniLM, weighted fusion 0.5), reusing its cached
    corpus index."""
    from ragfleet_tools.eval.config import RetrievalConfig
    from ragfleet_tools.eval.retrieval import EmbedderEncoder, RetrievalEvaluator

    encoder = EmbedderEncoder.from_env()

    def rank(queries: Mapping[str, str], k: int) -> Mapping[str, Sequence[str]]:
        asked = dataclasses.replace(dataset, queries=dict(queries), qrels={})
        evaluator = RetrievalEvaluator(
            asked,
            encoder,
            cache_dir,
            tokenizer=encoder.tokenizer,
            progress=lambda m: typer.echo(m, err=True),
        )
        try:
            run, _ = evaluator.run(RetrievalConfig("hybrid", candidate_k=max(k, 100)))
        finally:
            evaluator.close()
        return {query_id: ids[:k] for query_id, ids in run.items()}

    return rank


def lexical_ranker(dataset: BeirDataset, index_dir: Path) -> Ranker:
    """Ranks query texts over ``dataset``'s corpus by BM25 alone (the retriever's tantivy index,
    built in ``index_dir`` in seconds: no embeddings), for mining without the embedding cost."""
    from ragfleet.domain import Chunk
    from ragfleet_retriever.embedded.backend import EmbeddedBackend

    backend = EmbeddedBackend.open(index_dir)
    if backend.stats().chunks != len(dataset.corpus):
        backend.upsert([Chunk(id=i, text=d.text, title=d.title) for i, d in dataset.corpus.items()])

    def rank(queries: Mapping[str, str], k: int) -> Mapping[str, Sequence[str]]:
        return {q: [h.id for h in backend.search_lexical(t, k)] for q, t in queries.items()}

    return rank


class MiningMode(StrEnum):
    HYBRID = "hybrid"
    LEXICAL = "lexical"


@train_app.command("reranker")
def reranker(
    dataset: Annotated[Path, typer.Option(help="a BEIR folder (corpus, queries, qrels/)")],
    out: Annotated[Path, typer.Option(help="folder to save the cross-encoder to")],
    split: Annotated[str, typer.Option(help="qrels split to train on (never test)")] = "train",
    epochs: Annotated[int, typer.Option(min=1, max=20)] = 1,
    negatives: Annotated[int, typer.Option(help="hard negatives per positive", min=1)] = 4,
    mine_depth: Annotated[int, typer.Option(help="hybrid depth negatives come from")] = 30,
    title_groups: Annotated[
        int, typer.Option(help="extra title->body groups from the corpus", min=0)
    ] = 500,
    groups_per_batch: Annotated[int, typer.Option(min=1)] = 4,
    learning_rate: Annotated[float, typer.Option()] = 5e-5,
    max_length: Annotated[int, typer.Option(help="tokens per (query, passage) pair")] = 256,
    seed: Annotated[int, typer.Option()] = 13,
    cache_dir: Annotated[
        Path, typer.Option(help="corpus index cache, shared with 'ragfleet eval retrieval'")
    ] = DEFAULT_CACHE,
    mine_with: Annotated[
        MiningMode, typer.Option(help="hybrid (embeds the corpus once, cached) or lexical")
    ] = MiningMode.HYBRID,
) -> None:
    """Fine-tune a cross-encoder reranker from all-MiniLM-L6-v2 on a BEIR split's judgments,
    with hard negatives from the project's own hybrid retrieval. CPU only."""
    from ragfleet_tools.eval.beir import BeirDataset

    try:
        config = TrainingConfig(
            epochs=epochs,
            groups_per_batch=groups_per_batch,
            learning_rate=learning_rate,
            max_length=max_length,
            seed=seed,
        )
        data = BeirDataset.load(dataset, split)
        typer.echo(f"{data.name} {split}: {len(data.queries)} queries, {len(data.corpus)} docs")
        rank = (
            hybrid_ranker(data, cache_dir)
            if mine_with is MiningMode.HYBRID
            else lexical_ranker(data, cache_dir / f"{data.name}-{data.fingerprint}" / "bm25-only")
        )
        groups = build_groups(
            data,
            rank,
            negatives_per_query=negatives,
            mine_depth=mine_depth,
            title_groups=title_groups,
            seed=seed,
        )
        typer.echo(f"training on {len(groups)} groups of {negatives + 1} passages...")
        report = train_cross_encoder(groups, out, config=config)
    except RagfleetError as err:
        typer.secho(f"{type(err).__name__}: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from err
    typer.echo(
        f"saved {out}: {report.groups} groups, {report.pairs} pairs, {report.steps} steps in "
        f"{report.seconds:.0f} s, final loss {report.final_loss:.3f}"
    )


@train_app.command("embedder")
def embedder(
    dataset: Annotated[Path, typer.Option(help="a BEIR folder (corpus, queries, qrels/)")],
    out: Annotated[Path, typer.Option(help="folder to save the fine-tuned embedder to")],
    split: Annotated[str, typer.Option(help="qrels split to train on (never test)")] = "train",
    epochs: Annotated[int, typer.Option(min=1, max=20)] = 2,
    batch_size: Annotated[int, typer.Option(help="triplets per step", min=2)] = 32,
    learning_rate: Annotated[float, typer.Option()] = 2e-5,
    max_length: Annotated[int, typer.Option(help="tokens per text")] = 256,
    mine_depth: Annotated[int, typer.Option(help="BM25 depth negatives come from")] = 30,
    seed: Annotated[int, typer.Option()] = 13,
    keep_epochs: Annotated[
        bool, typer.Option(help="also save the model after each epoch to OUT/epoch-N")
    ] = False,
    cache_dir: Annotated[
        Path, typer.Option(help="corpus index cache, shared with 'ragfleet eval retrieval'")
    ] = DEFAULT_CACHE,
) -> None:
    """Fine-tune the all-MiniLM-L6-v2 embedder on a BEIR split's judgments with BM25 hard
    negatives and in-batch negatives. CPU only. Serve it with RAGFLEET_EMBEDDER_MODEL_PATH
    (and re-embed what was indexed with the old model)."""
    from ragfleet_tools.eval.beir import BeirDataset
    from ragfleet_tools.training.embedder import (
        EmbedderTrainingConfig,
        build_triplets,
        train_embedder,
    )

    try:
        config = EmbedderTrainingConfig(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_length=max_length,
            seed=seed,
        )
        data = BeirDataset.load(dataset, split)
        typer.echo(f"{data.name} {split}: {len(data.queries)} queries, {len(data.corpus)} docs")
        rank = lexical_ranker(data, cache_dir / f"{data.name}-{data.fingerprint}" / "bm25-only")
        triplets = build_triplets(data, rank, mine_depth=mine_depth, seed=seed)
        typer.echo(f"training on {len(triplets)} (query, positive, hard negative) triplets...")
        report = train_embedder(triplets, out, config=config, keep_epochs=keep_epochs)
    except RagfleetError as err:
        typer.secho(f"{type(err).__name__}: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from err
    typer.echo(
        f"saved {out}: {report.triplets} triplets, {report.steps} steps in "
        f"{report.seconds:.0f} s, final loss {report.final_loss:.3f}"
    )


@train_app.command("router")
def router(
    data: Annotated[
        list[Path],
        typer.Option(help="JSONL rows {question, target}: 0 needs the strong model, 1 the cheap"),
    ],
    out: Annotated[Path, typer.Option(help="the router model's JSON file")],
    test: Annotated[
        Path | None, typer.Option(help="held-out JSONL to report on (never used to tune)")
    ] = None,
    min_strong_recall: Annotated[
        float,
        typer.Option(help="class-0 recall the cross-validated threshold must keep", min=0, max=1),
    ] = 0.6,
    report: Annotated[Path | None, typer.Option(help="write a Markdown report here")] = None,
    seed: Annotated[int, typer.Option()] = 13,
) -> None:
    """Train the gateway's question router (routing classifier): TF-IDF word and character
    n-grams and question features, logistic regression, hyper-parameters and threshold by
    stratified 5-fold cross-validation (best weighted F1 at the minimum class-0 recall). Serve
    it with RAGFLEET_GATEWAY_ROUTING=classifier and RAGFLEET_GATEWAY_ROUTER_MODEL_FILE."""
    from ragfleet_tools.training.router import (
        evaluate_router,
        markdown_report,
        read_routing_data,
        train_router,
    )

    try:
        examples = read_routing_data(data)
        typer.echo(f"{len(examples)} training examples from {len(data)} file(s)")
        model, trained = train_router(
            examples, min_strong_recall, seed=seed, sources=[str(p) for p in data]
        )
        model.save(out)
        held = evaluate_router(model, read_routing_data([test])) if test else None
    except RagfleetError as err:
        typer.secho(f"{type(err).__name__}: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from err
    text = markdown_report(trained, model, held)
    typer.echo(text)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text, encoding="utf-8")
    typer.echo(
        f"saved {out}: {trained.chosen.candidate.name}, threshold {model.threshold:.3f} "
        f"({trained.seconds:.0f} s)"
    )
