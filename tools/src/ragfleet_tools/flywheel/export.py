"""``ragfleet flywheel export``: the answers users rated, as evaluation and training data.

One folder, read by three commands:

- ``corpus.jsonl``: every passage shown for an exported answer (``_id`` is the chunk id);
- ``queries.jsonl``: the questions that have a reference, ``_id`` the answer id, with
  ``metadata.answers``, ``metadata.answerable``, ``rating``, ``model`` and ``split``
  (``ragfleet eval answers --dataset``, through ``AnswerSet.load``);
- ``qrels/train.tsv`` and ``qrels/dev.tsv``: (question, cited passage) pairs of well-rated
  answers (``ragfleet train embedder --split train``; evaluate on ``dev``);
- ``router.jsonl``: ``{question, target}`` rows, 1 when the cheap model's answer was good
  enough, 0 when the strong model was needed (``ragfleet train router --data``);
- ``README.md``: these rules and the counts.

The rules, per answer (an answer rated several times is judged by its latest rating; its
reference is its latest non-empty correction):

- reference answer: the correction when there is one; else, rated 4 or 5, the answer itself
  (citation markers removed). A correction that is the no-answer text (``--no-answer-text``, the
  gateway's ``no_answer_text``) says the documents do not answer the question: it is exported as
  unanswerable. So is a decline rated 4 or 5 (the system was right to decline). Answers rated 3,
  or rated 1-2 without a correction, have no reference and are left out of ``queries.jsonl``
  (the README counts them: they are the ones worth correcting);
- relevance: the passages a 4- or 5-rated answer cites are relevant to its question; a declined
  answer and one whose correction says "unanswerable" give none. Which split a question is in
  follows a hash of its answer id (80% train, 20% dev), so re-exporting never moves a question;
- routing, with ``--cheap-model NAME``: the cheap model's own answers rated 4-5 are 1, rated
  1-2 are 0 (3: left out). Another model's answer is 0 only when the cascade router escalated
  to it (``route`` "cascade: escalated...", the cheap model's answer failed the check) and the
  user rated it 4-5: the strong model was needed and did the job. Other answers of a strong
  model are left out: their rating says nothing about whether the cheap model would have done.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ragfleet.flywheel.records import AnswerRecord, Feedback
from ragfleet.flywheel.store import Export, FeedbackStore
from ragfleet.runtime.errors import InvalidInput

GOOD, BAD = 4, 2
"""Ratings at or above GOOD vouch for an answer; at or below BAD condemn it."""
DEV_PERCENT = 20
# Citation markers as the gateway's prompt asks for them: [1], [2, 3].
_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_EXPORT_FILES = ("corpus.jsonl", "queries.jsonl", "qrels", "router.jsonl", "README.md")


def default_no_answer_text() -> str:
    """The gateway's default ``no_answer_text``, so an export matches an unconfigured fleet."""
    from ragfleet_gateway.settings import GatewaySettings

    default = GatewaySettings.model_fields["no_answer_text"].default
    return str(default)


@dataclass(frozen=True, slots=True)
class Verdict:
    rating: int
    """The latest rating."""
    correction: str
    """The latest non-empty correction ("" when none)."""


def verdict(feedback: Sequence[Feedback]) -> Verdict:
    """What the users said about one answer, from its feedback, oldest first."""
    if not feedback:
        raise InvalidInput("feedback: an exported answer has at least one")
    corrections = [f.correction.strip() for f in feedback if f.correction.strip()]
    return Verdict(feedback[-1].rating, corrections[-1] if corrections else "")


@dataclass(frozen=True, slots=True)
class Reference:
    answerable: bool
    answers: tuple[str, ...]


def is_no_answer(text: str, no_answer_text: str) -> bool:
    """Whether ``text`` declines with ``no_answer_text``, ignoring case, full stops, spacing
    and citation markers (the gateway's own refusal test)."""
    from ragfleet_gateway.prompt import is_refusal

    return is_refusal(text, no_answer_text)


def reference(answer: AnswerRecord, said: Verdict, no_answer_text: str) -> Reference | None:
    """The question's reference answer under the module's rules; None when there is none."""
    if said.correction:
        if is_no_answer(said.correction, no_answer_text):
            return Reference(answerable=False, answers=())
        return Reference(answerable=True, answers=(said.correction,))
    if said.rating < GOOD:
        return None
    if not answer.answered:
        return Reference(answerable=False, answers=())
    text = _CITATION.sub("", answer.answer).strip()
    return Reference(answerable=True, answers=(text,)) if text else None


def relevant_chunks(answer: AnswerRecord, said: Verdict, ref: Reference | None) -> list[str]:
    """Chunk ids of the passages a well-rated answer with an answerable reference cites; none
    otherwise (so every judged question is in ``queries.jsonl``)."""
    if said.rating < GOOD or not answer.answered or ref is None or not ref.answerable:
        return []
    by_number = {s.number: s.chunk_id for s in answer.sources}
    return list(dict.fromkeys(by_number[n] for n in answer.cited if n in by_number))


def split_of(answer_id: str) -> str:
    """``train`` or ``dev``, fixed by the answer id (80/20)."""
    bucket = int(hashlib.sha256(answer_id.encode()).hexdigest()[:8], 16) % 100
    return "dev" if bucket < DEV_PERCENT else "train"


def router_target(answer: AnswerRecord, said: Verdict, cheap_model: str) -> int | None:
    """1: the cheap model's answer was good enough; 0: the strong model was needed; None: the
    feedback says neither."""
    if answer.model == cheap_model:
        if said.rating >= GOOD:
            return 1
        return 0 if said.rating <= BAD else None
    policy, _, reason = answer.route.partition(": ")
    if policy == "cascade" and reason.startswith("escalated") and said.rating >= GOOD:
        return 0
    return None


@dataclass
class ExportData:
    """What an export writes, before it is written."""

    corpus: dict[str, dict[str, str]] = field(default_factory=dict)
    queries: list[dict[str, Any]] = field(default_factory=list)
    qrels: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: {"train": [], "dev": []}
    )
    router: list[dict[str, Any]] | None = None
    answers: int = 0
    without_reference: int = 0
    ratings: Counter[int] = field(default_factory=Counter)


def build_export(
    rows: Iterable[tuple[AnswerRecord, list[Feedback]]],
    *,
    cheap_model: str | None,
    no_answer_text: str,
) -> ExportData:
    """Applies the module's rules to exported answers (oldest first)."""
    data = ExportData(router=[] if cheap_model else None)
    for answer, feedback in rows:
        said = verdict(feedback)
        data.answers += 1
        data.ratings[said.rating] += 1
        for source in answer.sources:
            data.corpus[source.chunk_id] = {
                "_id": source.chunk_id,
                "title": source.title,
                "text": source.text,
            }
        ref = reference(answer, said, no_answer_text)
        split = split_of(answer.answer_id)
        if ref is None:
            data.without_reference += 1
        else:
            data.queries.append(
                {
                    "_id": answer.answer_id,
                    "text": answer.question,
                    "metadata": {
                        "answers": list(ref.answers),
                        "answerable": ref.answerable,
                        "rating": said.rating,
                        "model": answer.model,
                        "split": split,
                    },
                }
            )
        chunks = relevant_chunks(answer, said, ref)
        data.qrels[split] += [(answer.answer_id, chunk) for chunk in chunks]
        if cheap_model and data.router is not None:
            target = router_target(answer, said, cheap_model)
            if target is not None:
                data.router.append({"question": answer.question, "target": target})
    return data


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_qrels(path: Path, pairs: Sequence[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(["query-id", "corpus-id", "score"])
        writer.writerows((query, chunk, 1) for query, chunk in pairs)


@dataclass(frozen=True, slots=True)
class ExportSummary:
    folder: Path
    answers: int
    """Answers with feedback in the store (under the filters)."""
    queries: int
    answerable: int
    unanswerable: int
    without_reference: int
    corpus: int
    train_pairs: int
    dev_pairs: int
    router_rows: int | None
    """None when no cheap model was named (no router.jsonl)."""
    router_cheap: int = 0
    ratings: dict[int, int] = field(default_factory=dict)

    def describe(self) -> str:
        router = (
            "router.jsonl not written (pass --cheap-model NAME to label routing examples)"
            if self.router_rows is None
            else f"router.jsonl: {self.router_rows} rows ({self.router_cheap} cheap-was-enough, "
            f"{self.router_rows - self.router_cheap} needed-the-strong-model)"
        )
        return (
            f"exported {self.answers} rated answers to {self.folder}\n"
            f"queries.jsonl: {self.queries} questions ({self.answerable} answerable, "
            f"{self.unanswerable} unanswerable); {self.without_reference} rated answers have "
            "no reference (rated 3, or 1-2 without a correction)\n"
            f"corpus.jsonl: {self.corpus} passages\n"
            f"qrels: {self.train_pairs} train pairs, {self.dev_pairs} dev pairs\n"
            f"{router}"
        )


def write_export(data: ExportData, out: Path, *, filters: str = "") -> ExportSummary:
    """Writes ``data`` as the export folder ``out``, replacing an earlier export there as a
    whole (built beside it, then moved into place). Raises ``InvalidInput`` when ``out`` holds
    anything but an earlier export."""
    if out.exists() and (
        not out.is_dir() or any(p.name not in _EXPORT_FILES for p in out.iterdir())
    ):
        raise InvalidInput(
            f"--out: {out} holds files an export did not write; name a new or empty folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    answerable = sum(1 for q in data.queries if q["metadata"]["answerable"])
    router_rows = None if data.router is None else len(data.router)
    summary = ExportSummary(
        folder=out,
        answers=data.answers,
        queries=len(data.queries),
        answerable=answerable,
        unanswerable=len(data.queries) - answerable,
        without_reference=data.without_reference,
        corpus=len(data.corpus),
        train_pairs=len(data.qrels["train"]),
        dev_pairs=len(data.qrels["dev"]),
        router_rows=router_rows,
        router_cheap=sum(r["target"] for r in data.router or ()),
        ratings=dict(sorted(data.ratings.items())),
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write_jsonl(staging / "corpus.jsonl", data.corpus.values())
        _write_jsonl(staging / "queries.jsonl", data.queries)
        (staging / "qrels").mkdir()
        for split, pairs in data.qrels.items():
            _write_qrels(staging / "qrels" / f"{split}.tsv", pairs)
        if data.router is not None:
            _write_jsonl(staging / "router.jsonl", data.router)
        (staging / "README.md").write_text(readme(summary, filters), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def readme(summary: ExportSummary, filters: str) -> str:
    """The export's README: what each file is, the rules that made it and the counts."""
    ratings = ", ".join(f"{r}: {n}" for r, n in summary.ratings.items()) or "none"
    router = (
        "Not written: the export was not told which model is the cheap one (`--cheap-model`)."
        if summary.router_rows is None
        else f"{summary.router_rows} rows, {summary.router_cheap} with target 1."
    )
    empty = (
        "\n**No question has a reference answer yet**: `ragfleet eval answers` needs at least "
        "one; rate answers 4-5 or give corrections.\n"
        if not summary.queries
        else ""
    )
    return f"""# Feedback export

Answers users rated, exported by `ragfleet flywheel export`{filters}: {summary.answers} rated
answers (latest rating per answer: {ratings}).
{empty}
- `corpus.jsonl`: every passage shown for an exported answer (`_id` = chunk id, `title`,
  `text`): {summary.corpus} passages.
- `queries.jsonl`: the questions that have a reference (`_id` = answer id; `metadata.answers`,
  `metadata.answerable`, `rating`, `model`, `split`): {summary.queries}
  ({summary.answerable} answerable, {summary.unanswerable} unanswerable).
- `qrels/train.tsv`, `qrels/dev.tsv`: (question, cited passage) pairs of answers rated 4-5:
  {summary.train_pairs} train, {summary.dev_pairs} dev.
- `router.jsonl`: `{{question, target}}` rows, 1 = the cheap model's answer was good enough,
  0 = the strong model was needed. {router}

{summary.without_reference} rated answers have no reference (rated 3, or 1-2 without a
correction) and are not in `queries.jsonl`: correcting them is the cheapest way to grow the set.

## Use

- `ragfleet eval answers --dataset THIS_FOLDER`: every question in `queries.jsonl` (both
  splits: the answer set does not filter by split), judged passages from `qrels/dev.tsv`.
- `ragfleet train embedder --dataset THIS_FOLDER --split train`, then
  `ragfleet eval retrieval` on `--split dev` for held-out numbers.
- `ragfleet train router --data THIS_FOLDER/router.jsonl`.

## Rules

- An answer rated several times counts with its latest rating; its reference is its latest
  non-empty correction.
- Reference answer: the correction; else, for an answer rated 4-5, the answer itself without
  its citation markers. A correction that is the no-answer text, or a decline rated 4-5, makes
  the question unanswerable.
- Relevant passages: those a 4-5-rated answer cites. The split (80% train, 20% dev) follows a
  hash of the answer id, so a question never changes split between exports.
- Routing: the cheap model's answers rated 4-5 are 1 and rated 1-2 are 0; another model's
  answer is 0 when the cascade escalated to it from the cheap model and it was rated 4-5;
  other answers of other models are left out.
"""


async def export_store(
    store: FeedbackStore,
    out: Path,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    cheap_model: str | None = None,
    no_answer_text: str | None = None,
) -> ExportSummary:
    """Reads the rated answers of ``store`` (of ``tenant``, given at or after ``since``) and
    writes the export folder ``out``."""
    rows: Export = await store.export(tenant, since)
    data = build_export(
        rows,
        cheap_model=cheap_model or None,
        no_answer_text=default_no_answer_text() if no_answer_text is None else no_answer_text,
    )
    filters = "".join(
        [
            f" for tenant `{tenant}`" if tenant else "",
            f" since {since.isoformat()}" if since else "",
        ]
    )
    return write_export(data, out, filters=filters)
