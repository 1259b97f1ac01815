"""``ragfleet eval``: offline evaluation commands."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ragfleet.runtime.errors import InvalidInput, RagfleetError
from ragfleet.runtime.logging import configure_logging

eval_app = typer.Typer(help="Evaluate retrieval and answer quality offline.", no_args_is_help=True)

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


@eval_app.command()
def answers(
    dataset: Annotated[
        Path,
        typer.Option(
            help="a BEIR folder whose queries.jsonl rows carry metadata.answers and "
            "metadata.answerable, with qrels/<split>.tsv (e.g. clapnq/derived)"
        ),
    ],
    split: Annotated[
        str, typer.Option(help="the qrels file naming the answering passages")
    ] = "dev",
    limit: Annotated[
        int | None,
        typer.Option(
            min=1, help="ask this many questions, half answerable and half not (default: all)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="which questions --limit picks")] = 0,
    timeout: Annotated[float, typer.Option(help="seconds per question")] = 300.0,
    report: Annotated[Path | None, typer.Option(help="write a Markdown report here")] = None,
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
            help="a TOML file: a [baseline] and [[config]] tables of gateway settings; every "
            "configuration is compared with the baseline question by question"
        ),
    ] = None,
    cache_dir: Annotated[
        Path, typer.Option(help="the corpus index and the answers are kept here")
    ] = DEFAULT_CACHE,
) -> None:
    """Answer quality of the whole system: every question through the gateway's ask, on the
    fleet's own components in this process (RAGFLEET_<SERVICE>_* settings apply), scored
    against reference answers and judged passages with 95% bootstrap intervals. Answers are
    cached per question and configuration: a rerun or a larger --limit resumes."""
    import asyncio

    from ragfleet_gateway.settings import GatewaySettings
    from ragfleet_generator.settings import GeneratorSettings
    from ragfleet_tools.eval import answers as harness
    from ragfleet_tools.eval.local_fleet import LocalFleet
    from ragfleet_tools.eval.sweep import Configuration, load_sweep

    if sweep is not None and baseline is not None:
        typer.secho("--sweep names its own baseline: drop --baseline", err=True, fg="red")
        raise typer.Exit(2)

    configure_logging("WARNING", fmt="console")

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    async def run() -> str:
        data = harness.AnswerSet.load(dataset, split)
        questions = data.sample(limit, seed)
        configurations = (
            load_sweep(sweep) if sweep is not None else [Configuration("", GatewaySettings())]
        )
        model = GeneratorSettings().default_model
        folder = cache_dir / "answers" / f"{data.name}-{data.fingerprint}"
        caches = [
            harness.ResultCache(
                folder / f"{harness.config_key(c.settings, model, data.fingerprint)}.jsonl"
            )
            for c in configurations
        ]
        todo = sum(q.id not in cache.results for cache in caches for q in questions)
        progress(
            f"{data.name} {split}: {len(questions)} questions x {len(caches)} configuration(s), "
            f"{todo} answers to make (model {model})"
        )
        if todo:
            async with LocalFleet.open(folder / "index") as fleet:
                if (await fleet.retriever.stats()).sources < len(data.corpus):
                    await harness.ingest(fleet.pipeline, data, progress)
                started, done = time.monotonic(), 0
                for configuration, cache in zip(configurations, caches, strict=True):
                    pipeline = fleet.pipeline_for(configuration.settings)
                    for question in questions:
                        if question.id in cache.results:
                            continue
                        cache.add(await harness.ask(pipeline, question, timeout))
                        done += 1
                        eta = (time.monotonic() - started) / done * (todo - done)
                        progress(f"asked {done}/{todo}, about {eta / 60:.0f} min left")
        baseline_per: harness.PerQuestion | None = None
        if baseline is not None:
            earlier = harness.ResultCache(folder / f"{baseline}.jsonl")
            if not earlier.results:
                raise InvalidInput(f"baseline: no answers of configuration {baseline} in {folder}")
            asked = [q for q in questions if q.id in earlier.results]
            _, baseline_per = harness.score(asked, earlier.results)
        tables = []
        for configuration, cache in zip(configurations, caches, strict=True):
            results = {q.id: cache.results[q.id] for q in questions}
            metrics, per = harness.score(questions, results)
            differences = harness.paired(per, baseline_per) if baseline_per is not None else []
            if sweep is not None and baseline_per is None:
                baseline_per = per  # the sweep's own baseline comes first
            key = cache.path.stem
            name = f"{configuration.name} ({key})" if configuration.name else key
            header = (
                f"{data.name} {split}, {len(questions)} questions (seed {seed}), model {model}, "
                f"configuration {name}" + (f", against {baseline}" if baseline else "")
            )
            timing = harness.latency(list(results.values()))
            tables.append(harness.markdown(metrics, timing, header, differences))
        return "\n".join(tables)

    try:
        table = asyncio.run(run())
    except RagfleetError as exc:
        typer.secho(exc.message, err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    if report is not None:
        command = shlex.join(["ragfleet", *sys.argv[1:]])
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(f"{table}\nCommand: `{command}`\n", encoding="utf-8")
        progress(f"report: {report}")
    typer.echo(table, nl=False)
