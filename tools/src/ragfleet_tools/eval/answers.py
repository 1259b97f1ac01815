"""``ragfleet eval answers``: the whole system's answers, scored with confidence intervals.

A dataset is either a BEIR-style folder whose ``queries.jsonl`` rows carry ``metadata.answers``
(reference answers) and ``metadata.answerable``, with ``qrels/<split>.tsv`` naming the passages
that answer each answerable question (the layout of ClapNQ's ``derived/`` set), or ClapNQ's own
``dev/`` folder (``*_answerable.jsonl`` and ``*_unanswerable.jsonl``, each row with its own
passages). The corpus is ingested through the gateway's own ingestion into an index of its own
(kept, keyed by the corpus's fingerprint), each question goes through the gateway's ``ask``
exactly as a user's does (``LocalFleet``, or a running gateway: ``remote``), and every answer is
kept in a JSONL file per configuration, so an interrupted or extended run resumes where it
stopped.

Metrics, each with a bootstrap 95% confidence interval over questions:
- answerable questions: RougeL F1 and Rouge-1 recall against the reference (the best over the
  references; Google's ``rouge-score``, no stemming, as ClapNQ's paper computes them through
  Hugging Face ``evaluate``), RougeL F1 of the answer against the passages it cites (a
  faithfulness proxy), citation precision and recall against the judged passages, and the
  share wrongly refused;
- unanswerable questions: the share declined;
- time to the first token and to the whole answer (percentiles);
- with a gateway price table, the answers' cost: the sum and the mean per question (USD);
- with an LLM judge (``judge``): its faithfulness and correctness scores (1-5) and the share of
  its replies that did not parse.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
from ragfleet_tools.eval.cache import JsonlCache
from ragfleet_tools.eval.judge import SCALES, Judgment

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
        """A BEIR-style folder, or ClapNQ's own files when ``path`` holds ``*_answerable.jsonl``
        (``split`` then names the files: ``clapnq_<split>_answerable.jsonl`` if there is one).
        Raises ``InvalidInput`` naming the file when one is missing or malformed, or when no
        question carries reference answers."""
        if not (path / "queries.jsonl").is_file() and any(path.glob("*_answerable.jsonl")):
            return cls.load_clapnq(path, split)
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

    @classmethod
    def load_clapnq(cls, path: Path, split: str = "dev") -> AnswerSet:
        """ClapNQ's own files: ``<name>_answerable.jsonl`` and ``<name>_unanswerable.jsonl``,
        rows ``{"id", "input", "passages": [{"title", "text"}], "output": [{"answer"}]}``. The
        corpus is the union of every row's passages (an id from each passage's title and text,
        so a passage shared by two questions is one document); the judged passages of an
        answerable question are its own."""
        files = []
        for kind in ("answerable", "unanswerable"):
            named = path / f"clapnq_{split}_{kind}.jsonl"
            found = [named] if named.is_file() else sorted(path.glob(f"*_{kind}.jsonl"))
            if kind == "answerable":
                found = [f for f in found if not f.name.endswith("_unanswerable.jsonl")]
            if len(found) != 1:
                raise InvalidInput(
                    f"dataset: {path} needs exactly one *_{kind}.jsonl file (ClapNQ's layout), "
                    f"found {len(found)}"
                )
            files.append(found[0])
        corpus: dict[str, Document] = {}
        questions = []
        digest = hashlib.sha256()
        for file in files:
            raw = file.read_bytes()
            digest.update(raw)
            for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    qid, text = str(row["id"]), str(row["input"])
                    passages = [(str(p.get("title", "")), str(p["text"])) for p in row["passages"]]
                    outputs = row.get("output") or []
                    answers = tuple(
                        str(o["answer"]) for o in outputs if isinstance(o, dict) and o.get("answer")
                    )
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                    raise InvalidInput(
                        f"dataset: {file} line {number} is not a ClapNQ row "
                        f'("id", "input", "passages" with "text"): {exc}'
                    ) from None
                gold = set()
                for title, passage in passages:
                    pid = "p" + hashlib.sha256(f"{title}\n{passage}".encode()).hexdigest()[:16]
                    corpus[pid] = Document(source=pid, text=passage, title=title)
                    gold.add(pid)
                answerable = bool(answers)
                questions.append(
                    Question(qid, text, answerable, answers, frozenset(gold if answerable else ()))
                )
        if not any(q.answerable for q in questions):
            raise InvalidInput(f"dataset: no row of {files[0]} has a reference answer")
        return cls(path.resolve().parent.name, corpus, questions, digest.hexdigest()[:12])

    def sample(self, limit: int | None, seed: int = 0, offset: int = 0) -> list[Question]:
        """``limit`` questions after the first ``offset`` of the order, stratified: every
        prefix of the order keeps the set's ratio of answerable to unanswerable questions as
        closely as whole questions allow (strict alternation for ClapNQ's 300 and 300), each
        kind in a fixed random order for ``seed``; all of them when ``limit`` is None. A larger
        limit keeps the questions of a smaller one, so cached answers are reused; an offset at
        least as large as another run's limit never shares a question with it (tune on
        ``offset=100``, report on the first 100)."""
        rng = random.Random(seed)
        kinds = [
            [q for q in self.questions if q.answerable],
            [q for q in self.questions if not q.answerable],
        ]
        for kind in kinds:
            rng.shuffle(kind)
        total = sum(len(k) for k in kinds)
        taken = [0, 0]
        order: list[Question] = []
        for position in range(1, total + 1):
            # The kind furthest behind its share of the first `position` questions goes next
            # (answerable first on a tie).
            behind = [
                len(kind) * position / total - taken[i] if taken[i] < len(kind) else -1.0
                for i, kind in enumerate(kinds)
            ]
            pick = 0 if behind[0] >= behind[1] else 1
            order.append(kinds[pick][taken[pick]])
            taken[pick] += 1
        return order[offset:] if limit is None else order[offset : offset + limit]


@dataclass(frozen=True)
class Result:
    """One question's answer, as cached. ``cost_usd`` is None when the gateway had no price
    table (and in rows cached before answers carried a cost); ``scores`` are the shown
    sources' retrieval scores and ``finish_reason`` the answering model's (empty in older rows,
    and ``finish_reason`` over gRPC, which does not carry it)."""

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
    cost_usd: float | None = None
    scores: list[float] = field(default_factory=list)
    finish_reason: str = ""


class AnswerRecorder:
    """Times one streamed answer and turns its events into a ``Result``: the clock starts at
    construction, the first token (or restart) event marks the time to first token."""

    def __init__(self, question: Question) -> None:
        self.question = question
        self._start = time.perf_counter()
        self._first_token: float | None = None
        self._shown: list[str] = []
        self._scores: list[float] = []
        self._texts: dict[int, str] = {}

    def sources(self, shown: Iterable[tuple[int, str, str, float]]) -> None:
        """The passages shown, as (number, source, text, retrieval score)."""
        items = list(shown)
        self._shown = [source for _, source, _, _ in items]
        self._scores = [score for _, _, _, score in items]
        self._texts = {number: text for number, _, text, _ in items}

    def token(self) -> None:
        if self._first_token is None:
            self._first_token = time.perf_counter()

    def finish(
        self,
        text: str,
        answered: bool,
        citations: Iterable[tuple[int, str]],
        model: str,
        usage: tuple[int, int],
        degraded: Iterable[str],
        cost_usd: float | None = None,
        finish_reason: str = "",
    ) -> Result:
        """The answer's ``citations`` as (number, source), ``usage`` as (prompt tokens,
        completion tokens) and ``cost_usd`` as the gateway priced it (None: not priced)."""
        now = time.perf_counter()
        cited = list(citations)
        return Result(
            id=self.question.id,
            answer=text,
            answered=answered,
            cited=[source for _, source in cited],
            cited_text="\n".join(self._texts.get(number, "") for number, _ in cited),
            shown=self._shown,
            model=model,
            ttft_ms=((self._first_token or now) - self._start) * 1000,
            total_ms=(now - self._start) * 1000,
            prompt_tokens=usage[0],
            completion_tokens=usage[1],
            degraded=list(degraded),
            cost_usd=cost_usd,
            scores=self._scores,
            finish_reason=finish_reason,
        )


async def ask(pipeline: RagPipeline, question: Question, timeout_s: float) -> Result:
    """One question through the pipeline's ``ask``, as the gRPC and REST front ends call it."""
    recorder = AnswerRecorder(question)
    async for event in pipeline.ask(AskRequest(question.text), Deadline.after(timeout_s)):
        if isinstance(event, SourcesEvent):
            recorder.sources(
                (s.number, s.hit.chunk.source, s.hit.chunk.text, s.hit.score) for s in event.sources
            )
        elif isinstance(event, TokenEvent | RestartEvent):
            recorder.token()
        elif isinstance(event, AnswerEvent):
            answer = event.answer
            return recorder.finish(
                answer.text,
                answer.answered,
                ((c.number, c.source) for c in answer.citations),
                answer.model,
                (answer.usage.prompt_tokens, answer.usage.completion_tokens),
                answer.degraded_reasons,
                answer.cost_usd,
                answer.finish_reason,
            )
    raise RuntimeError("the answer stream ended without an answer")


def config_key(settings: GatewaySettings, model: str, fingerprint: str) -> str:
    """What an answer depends on: the gateway's settings, the model and the corpus. Settings
    that do not change answers are left out, so answers cached before they existed stay valid:
    the price table (answers cached before it was set stay unpriced), where answers are recorded,
    and the routing settings while routing is off."""
    unused = {"prices", "prices_file", "feedback_store", "feedback_spool_dir"}
    if settings.routing == "none":
        unused |= {"routing", "routing_cheap_model", "routing_strong_model", "routing_threshold"}
        unused |= {"router_model_file"}
    gateway = settings.model_dump(mode="json", exclude=unused)
    blob = json.dumps(
        {"gateway": gateway, "model": model, "corpus": fingerprint},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class ResultCache(JsonlCache[Result]):
    """Answers of one configuration, one JSON line each, appended as they come."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, Result)

    @property
    def results(self) -> dict[str, Result]:
        return self.rows


# --- metrics -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    low: float
    high: float
    n: int


def resamples(size: int, seed: int = 0) -> np.ndarray:
    """The bootstrap's resamples of ``size`` items: ``BOOTSTRAP_SAMPLES`` rows of indices drawn
    with replacement, the same for the same seed, for statistics that are not a mean (a
    weighted F1) or that pair several arrays over the same questions."""
    return np.random.default_rng(seed).integers(0, size, (BOOTSTRAP_SAMPLES, size))


def bootstrap(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """The mean of ``values`` and its 95% percentile bootstrap interval."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = data[resamples(data.size, seed)].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(data.mean()), float(low), float(high)


_SCORER = rouge_scorer.RougeScorer(["rougeL", "rouge1"], use_stemmer=False)


PerQuestion = dict[str, dict[str, float]]
"""Metric name -> question id -> value, for the questions the metric applies to."""


JUDGE_UNPARSEABLE = "judge unparseable"


def judge_metric(scale: str) -> str:
    return f"judge {scale} (1-5)"


def score(
    questions: Sequence[Question],
    results: Mapping[str, Result],
    judgments: Mapping[str, Judgment] | None = None,
) -> tuple[list[Metric], PerQuestion]:
    """Every metric with its interval, and the per-question values they came from. With
    ``judgments``, the judge's mean scores over the replies that parsed, and the share that
    did not (over the questions judged)."""
    names = [
        "RougeL F1 vs reference",
        "Rouge-1 recall vs reference",
        "RougeL F1 vs cited passages",
        "citation precision",
        "citation recall",
        "answerable refused",
        "unanswerable declined",
    ]
    if judgments is not None:
        names += [judge_metric(scale) for scale in SCALES] + [JUDGE_UNPARSEABLE]
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
        judgment = (judgments or {}).get(qid)
        if judgment is not None:
            per[JUDGE_UNPARSEABLE][qid] = float(judgment.scores is None)
            for scale, value in (judgment.scores or {}).items():
                per[judge_metric(scale)][qid] = float(value)
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


def cost(results: Sequence[Result]) -> dict[str, float]:
    """The answers' cost in USD: the sum and the mean per question over the answers that carry
    one, and how many do; empty when none does (the gateway had no price table)."""
    priced = [r.cost_usd for r in results if r.cost_usd is not None]
    if not priced:
        return {}
    return {
        "sum USD": float(sum(priced)),
        "mean USD per question": float(sum(priced) / len(priced)),
        "questions priced": float(len(priced)),
    }


def markdown(
    metrics: Sequence[Metric],
    timing: Mapping[str, float],
    header: str,
    differences: Sequence[Metric] = (),
    spent: Mapping[str, float] | None = None,
) -> str:
    """The report's tables; ``spent`` (``cost``'s figures) adds the cost table when given."""
    lines = [header, "", "| metric | value | 95% CI | n |", "|---|---|---|---|"]
    for m in metrics:
        lines.append(f"| {m.name} | {m.value:.3f} | {m.low:.3f} to {m.high:.3f} | {m.n} |")
    if differences:
        lines += ["", "| against the baseline | difference | 95% CI | n |", "|---|---|---|---|"]
        for d in differences:
            lines.append(f"| {d.name} | {d.value:+.3f} | {d.low:+.3f} to {d.high:+.3f} | {d.n} |")
    lines += ["", "| latency | ms |", "|---|---|"]
    lines += [f"| {name} | {value:.0f} |" for name, value in timing.items()]
    if spent:
        lines += ["", "| cost | value |", "|---|---|"]
        lines += [
            f"| {name} | {value:.0f} |"
            if name == "questions priced"
            else f"| {name} | {value:.6f} |"
            for name, value in spent.items()
        ]
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
