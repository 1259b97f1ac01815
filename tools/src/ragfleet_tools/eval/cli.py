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

eval_app = typer.Typer(help="Evaluate retrieval quality offline.", no_args_is_help=True)

DEFAULT_CACHE = Path("var/eval-cache")


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
