"""``ragfleet eval``: offline evaluation commands."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ragfleet.runtime.errors import RagfleetError
from ragfleet.runtime.logging import configure_logging

eval_app = typer.Typer(help="Evaluate retrieval and answer quality offline.", no_args_is_help=True)

DEFAULT_CACHE = Path("var/eval-cache")

# How eval answers and eval gate pick questions (AnswerSet.sample).
Seed = Annotated[int, typer.Option(help="which questions --limit picks")]
Offset = Annotated[
    int,
    typer.Option(
        min=0,
        help="skip the first N questions of the order: tune with --offset 100, report on "
        "--limit 100, and the two never share a question",
    ),
]


@eval_app.command()
def retrieval(
    dataset: Annotated[
        Path, typer.Option(help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    ],
    split: Annotated[str, typer.Option(help="the qrels file to score against")] = "test",
    config: Annotated[
        Path | None,
        typer.Option(
            help="a TOML or YAML file of configurations (default: bm25, dense, two hybrids)"
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="write a Markdown report here and a PNG chart beside it")
    ] = None,
    cache_dir: Annotated[
        Path, typer.Option(help="built indexes are cached here per dataset, model and chunking")
    ] = DEFAULT_CACHE,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
) -> None:
    """nDCG@10, Recall@100 and MRR@10 of each configuration, run in-process on the fleet's
    components (embedded index, embedding model, fusion)."""
    from ragfleet_tools.eval.beir import BeirDataset
    from ragfleet_tools.eval.config import load_configs
    from ragfleet_tools.eval.report import markdown_table, write_report
    from ragfleet_tools.eval.retrieval import EmbedderEncoder, RetrievalEvaluator

    # The index's own logs go to stderr, and only warnings: stdout carries the result.
    configure_logging("WARNING", fmt="console")

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    try:
        configs = load_configs(config)
        data = BeirDataset.load(dataset, split)
        progress(f"{data.name} {split}: {len(data.corpus)} documents, {len(data.queries)} queries")
        encoder = EmbedderEncoder.from_env()
        evaluator = RetrievalEvaluator(
            data, encoder, cache_dir, tokenizer=encoder.tokenizer, progress=progress
        )
        try:
            evaluation = evaluator.evaluate(configs)
        finally:
            evaluator.close()
    except RagfleetError as exc:
        typer.secho(exc.message, err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    if report is not None:
        command = shlex.join(["ragfleet", *sys.argv[1:]])
        chart = write_report(evaluation, report, command)
        progress(f"report: {report} and {chart}")
    if as_json:
        typer.echo(json.dumps(evaluation.as_json(), indent=2))
    else:
        typer.echo(markdown_table(evaluation), nl=False)


@eval_app.command()
def answers(
    dataset: Annotated[
        Path,
        typer.Option(
            help="a BEIR folder whose queries.jsonl rows carry metadata.answers and "
            "metadata.answerable, with qrels/<split>.tsv (e.g. clapnq/derived), or ClapNQ's own "
            "*_answerable.jsonl and *_unanswerable.jsonl (clapnq/dev)"
        ),
    ],
    split: Annotated[
        str, typer.Option(help="the qrels file naming the answering passages")
    ] = "dev",
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="ask this many questions, answerable and unanswerable in the set's ratio "
            "(default: all)",
        ),
    ] = None,
    seed: Seed = 0,
    offset: Offset = 0,
    timeout: Annotated[float, typer.Option(help="seconds per question")] = 300.0,
    report: Annotated[
        Path | None,
        typer.Option(help="write a Markdown report here and a PNG chart of the metrics beside it"),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="the configuration (its key, printed by an earlier run) to compare with, "
            "question by question"
        ),
    ] = None,
    sweep: Annotated[
        Path | None,
        typer.Option(
            help="a TOML file: a [baseline], [[config]] tables and a [grid] of gateway settings; "
            "every configuration is compared with the baseline question by question"
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of a running gateway to ask over gRPC instead of the in-process fleet"
        ),
    ] = None,
    ingest: Annotated[
        bool, typer.Option(help="with --gateway: ingest the corpus through it first")
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="RAGFLEET_API_KEY",
            help="with --gateway: sent as authorization: Bearer <key>",
            show_default=False,
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(
            help="names the configuration (with --gateway it keys the cache instead of the address)"
        ),
    ] = None,
    judge_url: Annotated[
        str | None,
        typer.Option(help="an OpenAI-compatible endpoint (…/v1) to grade the answers"),
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option(help="the judge's model name at --judge-url")
    ] = None,
    judge_api_key: Annotated[
        str | None,
        typer.Option(envvar="RAGFLEET_JUDGE_API_KEY", help="the judge's key", show_default=False),
    ] = None,
    cache_dir: Annotated[
        Path, typer.Option(help="the corpus index, the answers and the verdicts are kept here")
    ] = DEFAULT_CACHE,
) -> None:
    """Answer quality of the whole system: every question through the gateway's ask, on the
    fleet's own components in this process (RAGFLEET_<SERVICE>_* settings apply) or on a running
    gateway (--gateway), scored against reference answers and judged passages (and by an LLM
    judge with --judge-url) with 95% bootstrap intervals. Answers and verdicts are cached per
    question and configuration: a rerun or a larger --limit resumes."""
    import asyncio

    from ragfleet_tools.eval.answers_run import AnswersOptions, run_answers
    from ragfleet_tools.eval.report import write_answers_chart

    configure_logging("WARNING", fmt="console")

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    options = AnswersOptions(
        dataset=dataset,
        split=split,
        limit=limit,
        seed=seed,
        offset=offset,
        timeout_s=timeout,
        cache_dir=cache_dir,
        baseline=baseline,
        sweep=sweep,
        gateway=gateway,
        ingest=ingest,
        api_key=api_key,
        label=label,
        judge_url=judge_url,
        judge_model=judge_model,
        judge_api_key=judge_api_key,
    )
    try:
        scored = asyncio.run(run_answers(options, progress))
    except RagfleetError as exc:
        typer.secho(exc.message, err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    table = "\n".join(s.table for s in scored)
    if report is not None:
        command = shlex.join(["ragfleet", *sys.argv[1:]])
        report.parent.mkdir(parents=True, exist_ok=True)
        chart = report.with_suffix(".png")
        write_answers_chart(
            [(s.name, s.metrics) for s in scored], chart, f"{dataset.name} {split}: answers"
        )
        report.write_text(
            f"{table}\n![metrics with 95% intervals]({chart.name})\n\nCommand: `{command}`\n",
            encoding="utf-8",
        )
        progress(f"report: {report} and {chart}")
    typer.echo(table, nl=False)


@eval_app.command()
def gate(
    dataset: Annotated[
        Path,
        typer.Option(
            help="an answer set with answerable and unanswerable questions (the layouts "
            "eval answers reads)"
        ),
    ],
    split: Annotated[str, typer.Option(help="the qrels file of a BEIR-style set")] = "dev",
    max_refused: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.99,
            help="the share of answerable questions the chosen threshold may refuse",
        ),
    ] = 0.15,
    limit: Annotated[
        int | None, typer.Option(min=1, help="use this many questions (default: all)")
    ] = None,
    seed: Seed = 0,
    offset: Offset = 0,
    cache_dir: Annotated[
        Path, typer.Option(help="the set's index is cached here, shared with eval answers")
    ] = DEFAULT_CACHE,
    as_json: Annotated[bool, typer.Option("--json", help="print the measures as JSON")] = False,
) -> None:
    """How well the relevance gate (RAGFLEET_GATEWAY_MIN_DENSE_SCORE) separates answerable from
    unanswerable questions on this corpus and embedding model, and the threshold that refuses at
    most --max-refused of the answerable ones. Retrieval only: no model is asked."""
    import asyncio

    from ragfleet_tools.eval.answers import AnswerSet
    from ragfleet_tools.eval.gate import GateScores, best_scores, markdown
    from ragfleet_tools.eval.gate import report as gate_report

    configure_logging("WARNING", fmt="console")

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    try:
        data = AnswerSet.load(dataset, split)
        questions = data.sample(limit, seed, offset)
        progress(f"{data.name} {split}: scoring {len(questions)} questions")
        scores = GateScores.of(asyncio.run(best_scores(data, questions, cache_dir, progress)))
        result = gate_report(scores, max_refused)
    except RagfleetError as exc:
        typer.secho(exc.message, err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2) if as_json else markdown(result), nl=False)
