"""One ``ragfleet eval answers`` run: pick the questions, ask what is not cached yet (in-process
fleet or a running gateway), have the judge grade what it has not graded yet, and score every
configuration, each against the baseline question by question."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ragfleet.runtime.errors import InvalidInput
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_tools.eval import answers as harness
from ragfleet_tools.eval.cache import JsonlCache
from ragfleet_tools.eval.judge import Judge, Judgment
from ragfleet_tools.eval.sweep import load_sweep


@dataclass(frozen=True)
class AnswersOptions:
    dataset: Path
    split: str = "dev"
    limit: int | None = None
    seed: int = 0
    offset: int = 0
    timeout_s: float = 300.0
    cache_dir: Path = Path("var/eval-cache")
    baseline: str | None = None
    sweep: Path | None = None
    gateway: str | None = None
    """A running gateway's address; None: the fleet in this process."""
    ingest: bool = False
    api_key: str | None = None
    label: str | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key: str | None = None


@dataclass(frozen=True)
class ScoredConfiguration:
    name: str
    """The configuration's name and cache key, e.g. ``top-3 (1a15c2d7cd30)``."""
    metrics: list[harness.Metric]
    differences: list[harness.Metric]
    table: str
    """Its Markdown tables."""


@dataclass(frozen=True)
class _Configuration:
    name: str
    key: str
    settings: GatewaySettings


def _progress_bar(total: int, what: str) -> tqdm[None]:
    return tqdm(total=total, desc=what, unit="q", file=sys.stderr, dynamic_ncols=True)


async def run_answers(
    options: AnswersOptions, progress: Callable[[str], None]
) -> list[ScoredConfiguration]:
    """Raises ``InvalidInput``/``Unavailable`` naming the file, option or address at fault;
    every answer and verdict made before a failure stays cached."""
    if options.sweep is not None and options.baseline is not None:
        raise InvalidInput("--sweep names its own baseline: drop --baseline")
    if options.gateway is not None and options.sweep is not None:
        raise InvalidInput(
            "--sweep sets the in-process gateway's settings; a running gateway (--gateway) "
            "is one configuration: compare runs with --label and --baseline instead"
        )
    if (options.judge_url is None) != (options.judge_model is None):
        raise InvalidInput("--judge-url and --judge-model go together")
    data = harness.AnswerSet.load(options.dataset, options.split)
    questions = data.sample(options.limit, options.seed, options.offset)
    folder = options.cache_dir / "answers" / f"{data.name}-{data.fingerprint}"
    if options.gateway is not None:
        from ragfleet_tools.eval.remote import remote_key

        key = remote_key(options.gateway, options.label, data.fingerprint)
        name = options.label or f"gateway {options.gateway}"
        configurations = [_Configuration(name, key, GatewaySettings())]
        model = "as the gateway reports"
    else:
        from ragfleet_generator.settings import GeneratorSettings
        from ragfleet_tools.eval.sweep import Configuration

        model = GeneratorSettings().default_model
        swept = (
            load_sweep(options.sweep)
            if options.sweep is not None
            else [Configuration(options.label or "", GatewaySettings())]
        )
        configurations = [
            _Configuration(
                c.name, harness.config_key(c.settings, model, data.fingerprint), c.settings
            )
            for c in swept
        ]
    caches = [harness.ResultCache(folder / f"{c.key}.jsonl") for c in configurations]
    todo = sum(q.id not in cache.results for cache in caches for q in questions)
    progress(
        f"{data.name} {options.split}: {len(questions)} questions x {len(caches)} "
        f"configuration(s), {todo} answers to make (model {model})"
    )
    await _answer(options, data, questions, configurations, caches, folder, todo, progress)
    judgments = await _judge(options, questions, configurations, caches, folder)
    return _score(options, data.name, questions, configurations, caches, judgments, model)


async def _answer(
    options: AnswersOptions,
    data: harness.AnswerSet,
    questions: Sequence[harness.Question],
    configurations: Sequence[_Configuration],
    caches: Sequence[harness.ResultCache],
    folder: Path,
    todo: int,
    progress: Callable[[str], None],
) -> None:
    if options.gateway is not None:
        from ragfleet_tools.eval.remote import GatewayAsker

        if not todo and not options.ingest:
            return
        async with GatewayAsker(options.gateway, options.api_key) as gateway:
            if options.ingest:
                await gateway.ingest(data, progress)
            with _progress_bar(todo, "asking") as bar:
                for question in questions:
                    if question.id not in caches[0].results:
                        caches[0].add(await gateway.ask(question, options.timeout_s))
                        bar.update()
        return
    if not todo:
        return
    from ragfleet_tools.eval.local_fleet import LocalFleet

    async with LocalFleet.open(folder / "index") as fleet:
        if (await fleet.retriever.stats()).sources < len(data.corpus):
            await harness.ingest(fleet.pipeline, data, progress)
        with _progress_bar(todo, "asking") as bar:
            for configuration, cache in zip(configurations, caches, strict=True):
                pipeline = fleet.pipeline_for(configuration.settings)
                for question in questions:
                    if question.id not in cache.results:
                        cache.add(await harness.ask(pipeline, question, options.timeout_s))
                        bar.update()


async def _judge(
    options: AnswersOptions,
    questions: Sequence[harness.Question],
    configurations: Sequence[_Configuration],
    caches: Sequence[harness.ResultCache],
    folder: Path,
) -> list[dict[str, Judgment] | None]:
    """Per configuration, the judge's verdicts on its answered, answerable questions (None
    without a judge)."""
    if options.judge_url is None or options.judge_model is None:
        return [None] * len(configurations)
    judge = Judge(options.judge_url, options.judge_model, options.judge_api_key)
    try:
        stores = [
            JsonlCache(folder / "judge" / f"{c.key}-{judge.key}.jsonl", Judgment)
            for c in configurations
        ]
        work = [
            (store, question, cache.results[question.id])
            for store, cache in zip(stores, caches, strict=True)
            for question in questions
            if question.answerable
            and cache.results[question.id].answered
            and question.id not in store.rows
        ]
        with _progress_bar(len(work), "judging") as bar:
            for store, question, result in work:
                store.add(
                    await judge.judge(
                        question.id,
                        question.text,
                        question.answers[0],
                        result.cited_text,
                        result.answer,
                    )
                )
                bar.update()
    finally:
        await judge.close()
    asked = {q.id for q in questions}
    return [{qid: j for qid, j in store.rows.items() if qid in asked} for store in stores]


def _score(
    options: AnswersOptions,
    dataset: str,
    questions: Sequence[harness.Question],
    configurations: Sequence[_Configuration],
    caches: Sequence[harness.ResultCache],
    judgments: Sequence[dict[str, Judgment] | None],
    model: str,
) -> list[ScoredConfiguration]:
    folder = caches[0].path.parent
    baseline_per: harness.PerQuestion | None = None
    if options.baseline is not None:
        earlier = harness.ResultCache(folder / f"{options.baseline}.jsonl")
        if not earlier.results:
            raise InvalidInput(
                f"baseline: no answers of configuration {options.baseline} in {folder}"
            )
        asked = [q for q in questions if q.id in earlier.results]
        _, baseline_per = harness.score(asked, earlier.results)
    scored = []
    for configuration, cache, judged in zip(configurations, caches, judgments, strict=True):
        results = {q.id: cache.results[q.id] for q in questions}
        metrics, per = harness.score(questions, results, judged)
        differences = harness.paired(per, baseline_per) if baseline_per is not None else []
        if options.sweep is not None and baseline_per is None:
            baseline_per = per  # the sweep's own baseline comes first
        name = (
            f"{configuration.name} ({cache.path.stem})" if configuration.name else cache.path.stem
        )
        models = sorted({r.model for r in results.values()}) or [model]
        header = (
            f"{dataset} {options.split}, {len(questions)} questions (seed {options.seed}"
            + (f", after the first {options.offset}" if options.offset else "")
            + "), "
            f"model {', '.join(models)}, configuration {name}"
            + (f", against {options.baseline}" if options.baseline else "")
            + (f", judge {options.judge_model}" if options.judge_model else "")
        )
        timing = harness.latency(list(results.values()))
        spent = harness.cost(list(results.values()))
        table = harness.markdown(metrics, timing, header, differences, spent)
        scored.append(ScoredConfiguration(name, metrics, differences, table))
    return scored
