"""``ragfleet eval answers``: the whole system's answers, scored with confidence intervals.

A dataset is a BEIR-style folder whose ``queries.jsonl`` rows carry ``metadata.answers``
(reference answers) and ``metadata.answerable``, with ``qrels/<split>.tsv`` naming the passages
that answer each answerable question (the layout of ClapNQ's ``derived/`` set). The corpus is
ingested through the gateway's own ingestion into an index of its own (kept, keyed by the
corpus's fingerprint), each question goes through the gateway's ``ask`` exactly as a user's does
(``LocalFleet``), and every answer is kept in a JSONL file per configuration, so an interrupted or
extended run resumes where it stopped.

Metrics, each with a bootstrap 95% confidence interval over questions:
- answerable questions: RougeL F1 and Rouge-1 recall against the reference (the best over the
  references; Google's ``rouge-score``, no stemming, as ClapNQ's paper computes them through
  Hugging Face ``evaluate``), RougeL F1 of the answer against the passages it cites (a
  faithfulness proxy), citation precision and recall against the judged passages, and the
  share wrongly refused;
- unanswerable questions: the share declined;
- time to the first token and to the whole answer (percentiles).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rouge_score import rouge_scorer

from ragfleet.chunking import Document
from ragfleet.domain import TokenEvent
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import InvalidInput
from ragfleet_gateway.domain import AnswerEvent, AskRequest, RestartEvent, SourcesEvent
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_tools.eval.beir import read_jsonl, read_qrels

BOOTSTRAP_SAMPLES = 2000
_INGEST_BATCH = 64


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answerable: bool
    answers: tuple[str, ...]
    gold: frozenset[str]
    """Corpus ids of the passages that answer it (empty for unanswerable questions)."""


@dataclass(frozen=True)
class AnswerSet:
    name: str
    corpus: Mapping[str, Document]
    questions: Sequence[Question]
    fingerprint: str

    @classmethod
    def load(cls, path: Path, split: str = "dev") -> AnswerSet:
        """Raises ``InvalidInput`` naming the file when one is missing or malformed, or when no
        question carries reference answers."""
        corpus_file, queries_file = path / "corpus.jsonl", path / "queries.jsonl"
        qrels_file = path / "qrels" / f"{split}.tsv"
        for required in (corpus_file, queries_file, qrels_file):
            if not required.is_file():
                raise InvalidInput(f"dataset: {required} does not exist")
        corpus_bytes = corpus_file.read_bytes()
        corpus = {
            row["_id"]: Document(
                source=row["_id"], text=row.get("text", ""), title=row.get("title", "")
            )
            for row in read_jsonl(corpus_file, corpus_bytes.decode("utf-8"))
        }
        qrels = read_qrels(qrels_file)
        questions = []
        for row in read_jsonl(queries_file, queries_file.read_text(encoding="utf-8")):
            meta: Any = row.get("metadata") or {}
            if "answerable" not in meta:
                continue
            answers = tuple(a for a in meta.get("answers") or () if isinstance(a, str) and a)
            answerable = bool(meta["answerable"])
            if answerable and not answers:
                raise InvalidInput(
                    f"dataset: {queries_file}: question {row['_id']} is answerable but has no "
                    "metadata.answers"
                )
            gold = frozenset(c for c, score in qrels.get(row["_id"], {}).items() if score > 0)
            questions.append(Question(row["_id"], row["text"], answerable, answers, gold))
        if not questions:
            raise InvalidInput(
                f"dataset: no row of {queries_file} has metadata.answerable and metadata.answers "
                "(an answer set needs reference answers)"
            )
        name = path.resolve().parent.name if path.name == "derived" else path.resolve().name
        return cls(name, corpus, questions, hashlib.sha256(corpus_bytes).hexdigest()[:12])

    def sample(self, limit: int | None, seed: int = 0) -> list[Question]:
        """``limit`` questions, half answerable and half not (as far as each kind goes), in a
        fixed random order for ``seed``; all of them when ``limit`` is None. A larger limit
        keeps the questions of a smaller one, so cached answers are reused."""
        rng = random.Random(seed)
        kinds = [
            [q for q in self.questions if q.answerable],
            [q for q in self.questions if not q.answerable],
        ]
        for kind in kinds:
            rng.shuffle(kind)
        mixed = [q for pair in zip(*kinds, strict=False) for q in pair]
        longer = max(kinds, key=len)
        mixed += longer[min(len(k) for k in kinds) :]
        return mixed if limit is None else mixed[:limit]


@dataclass(frozen=True)
class Result:
    """One question's answer, as cached."""

    id: str
    answer: str
    answered: bool
    cited: list[str]
    cited_text: str
    shown: list[str]
    model: str
    ttft_ms: float
    total_ms: float
    prompt_tokens: int
    completion_tokens: int
    degraded: list[str]


async def ask(pipeline: RagPipeline, question: Question, timeout_s: float) -> Result:
    """One question through the pipeline's ``ask``, as the gRPC and REST front ends call it."""
    start = time.perf_counter()
    first_token: float | None = None
    shown: list[str] = []
    texts: dict[int, str] = {}
    async for event in pipeline.ask(AskRequest(question.text), Deadline.after(timeout_s)):
        if isinstance(event, SourcesEvent):
            shown = [s.hit.chunk.source for s in event.sources]
            texts = {s.number: s.hit.chunk.text for s in event.sources}
        elif isinstance(event, TokenEvent | RestartEvent) and first_token is None:
            first_token = time.perf_counter()
        elif isinstance(event, AnswerEvent):
            answer = event.answer
            total = (time.perf_counter() - start) * 1000
            return Result(
                id=question.id,
                answer=answer.text,
                answered=answer.answered,
                cited=[c.source for c in answer.citations],
                cited_text="\n".join(texts.get(c.number, "") for c in answer.citations),
                shown=shown,
                model=answer.model,
                ttft_ms=((first_token or time.perf_counter()) - start) * 1000,
                total_ms=total,
                prompt_tokens=answer.usage.prompt_tokens,
                completion_tokens=answer.usage.completion_tokens,
                degraded=list(answer.degraded_reasons),
            )
    raise RuntimeError("the answer stream ended without an answer")


def config_key(settings: GatewaySettings, model: str, fingerprint: str) -> str:
    """What an answer depends on: the gateway's settings, the model and the corpus."""
    blob = json.dumps(
        {"gateway": settings.model_dump(mode="json"), "model": model, "corpus": fingerprint},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class ResultCache:
    """Answers of one configuration, one JSON line each, appended as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, Result] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.results[row["id"]] = Result(**row)
                except (json.JSONDecodeError, KeyError, TypeError):
                    # A line cut short by an interrupted run: that question is asked again.
                    continue

    def add(self, result: Result) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            # Starts on a fresh line even after a line an interrupted run cut short.
            if handle.tell() and not self.path.read_bytes().endswith(b"\n"):
                handle.write("\n")
            handle.write(json.dumps(dataclasses.asdict(result)) + "\n")
        self.results[result.id] = result


# --- metrics -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    low: float
    high: float
    n: int


def bootstrap(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """The mean of ``values`` and its 95% percentile bootstrap interval."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, (BOOTSTRAP_SAMPLES, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(data.mean()), float(low), float(high)


_SCORER = rouge_scorer.RougeScorer(["rougeL", "rouge1"], use_stemmer=False)


PerQuestion = dict[str, dict[str, float]]
"""Metric name -> question id -> value, for the questions the metric applies to."""


def score(
    questions: Sequence[Question], results: Mapping[str, Result]
) -> tuple[list[Metric], PerQuestion]:
    """Every metric with its interval, and the per-question values they came from."""
    names = (
        "RougeL F1 vs reference",
        "Rouge-1 recall vs reference",
        "RougeL F1 vs cited passages",
        "citation precision",
        "citation recall",
        "answerable refused",
        "unanswerable declined",
    )
    per: PerQuestion = {name: {} for name in names}
    for question in questions:
        qid, result = question.id, results[question.id]
        if not question.answerable:
            per["unanswerable declined"][qid] = float(not result.answered)
            continue
        per["answerable refused"][qid] = float(not result.answered)
        scores = [_SCORER.score(ref, result.answer) for ref in question.answers]
        per["RougeL F1 vs reference"][qid] = max(s["rougeL"].fmeasure for s in scores)
        per["Rouge-1 recall vs reference"][qid] = max(s["rouge1"].recall for s in scores)
        if result.cited:
            cited = set(result.cited)
            per["citation precision"][qid] = len(cited & question.gold) / len(cited)
            per["RougeL F1 vs cited passages"][qid] = _SCORER.score(
                result.cited_text, result.answer
            )["rougeL"].fmeasure
        if result.answered and question.gold:
            per["citation recall"][qid] = float(bool(set(result.cited) & question.gold))
    metrics = [Metric(n, *bootstrap(list(v.values())), len(v)) for n, v in per.items()]
    return metrics, per


def paired(current: PerQuestion, baseline: PerQuestion) -> list[Metric]:
    """Per metric, the mean difference current - baseline over the questions both measured,
    with its 95% bootstrap interval (paired: the same questions, so question difficulty
    cancels out)."""
    differences = []
    for name, values in current.items():
        shared = sorted(set(values) & set(baseline.get(name, {})))
        deltas = [values[q] - baseline[name][q] for q in shared]
        differences.append(Metric(name, *bootstrap(deltas), len(deltas)))
    return differences


def latency(results: Sequence[Result]) -> dict[str, float]:
    ttft = [r.ttft_ms for r in results]
    total = [r.total_ms for r in results]
    return {
        "ttft p50 ms": float(np.percentile(ttft, 50)) if ttft else float("nan"),
        "ttft p95 ms": float(np.percentile(ttft, 95)) if ttft else float("nan"),
        "total p50 ms": float(np.percentile(total, 50)) if total else float("nan"),
        "total p95 ms": float(np.percentile(total, 95)) if total else float("nan"),
    }


def markdown(
    metrics: Sequence[Metric],
    timing: Mapping[str, float],
    header: str,
    differences: Sequence[Metric] = (),
) -> str:
    lines = [header, "", "| metric | value | 95% CI | n |", "|---|---|---|---|"]
    for m in metrics:
        lines.append(f"| {m.name} | {m.value:.3f} | {m.low:.3f} to {m.high:.3f} | {m.n} |")
    if differences:
        lines += ["", "| against the baseline | difference | 95% CI | n |", "|---|---|---|---|"]
        for d in differences:
            lines.append(f"| {d.name} | {d.value:+.3f} | {d.low:+.3f} to {d.high:+.3f} | {d.n} |")
    lines += ["", "| latency | ms |", "|---|---|"]
    lines += [f"| {name} | {value:.0f} |" for name, value in timing.items()]
    return "\n".join(lines) + "\n"


async def ingest(
    pipeline: RagPipeline, answer_set: AnswerSet, progress: Callable[[str], None]
) -> None:
    """The corpus through the gateway's ingestion (each passage replaces its earlier copy)."""
    documents = list(answer_set.corpus.values())
    for start in range(0, len(documents), _INGEST_BATCH):
        batch = documents[start : start + _INGEST_BATCH]
        await pipeline.ingest(batch, "", Deadline.after(600))
        progress(f"ingested {min(start + _INGEST_BATCH, len(documents))}/{len(documents)}")
