"""BEIR-format datasets: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

``corpus.jsonl`` rows are ``{"_id", "title", "text"}``, ``queries.jsonl`` rows ``{"_id", "text"}``
and the qrels file has a header line, then ``query-id <TAB> corpus-id <TAB> score`` rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ragfleet.chunking import Document
from ragfleet.runtime.errors import InvalidInput

DATASETS_ENV = "RAGFLEET_DATASETS_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[4]


def datasets_dir() -> Path:
    """Where third-party evaluation data lives: ``$RAGFLEET_DATASETS_DIR``, else
    ``../shared/datasets`` next to the repository root. It may not exist."""
    override = os.environ.get(DATASETS_ENV)
    return Path(override) if override else (_REPO_ROOT.parent / "shared" / "datasets").resolve()


Qrels = Mapping[str, Mapping[str, int]]
"""Query id -> corpus id -> graded relevance."""


@dataclass(frozen=True)
class BeirDataset:
    """A loaded dataset split: the whole corpus, the queries judged in ``split`` and their
    judgments. ``fingerprint`` changes whenever ``corpus.jsonl`` does (it keys the caches)."""

    name: str
    split: str
    corpus: Mapping[str, Document]
    queries: Mapping[str, str]
    qrels: Qrels
    fingerprint: str

    @classmethod
    def load(cls, path: Path, split: str = "test") -> BeirDataset:
        """Reads the dataset in ``path``. Raises ``InvalidInput`` naming the file when one is
        missing or malformed, or when no judged query of ``split`` is in ``queries.jsonl``."""
        corpus_file, queries_file = path / "corpus.jsonl", path / "queries.jsonl"
        qrels_file = path / "qrels" / f"{split}.tsv"
        for required in (corpus_file, queries_file, qrels_file):
            if not required.is_file():
                splits = sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
                hint = f" (splits here: {', '.join(splits)})" if splits else ""
                raise InvalidInput(f"dataset: {required} does not exist{hint}")
        corpus_bytes = corpus_file.read_bytes()
        corpus = {
            row["_id"]: Document(
                source=row["_id"], text=row.get("text", ""), title=row.get("title", "")
            )
            for row in read_jsonl(corpus_file, corpus_bytes.decode("utf-8"))
        }
        qrels = read_qrels(qrels_file)
        all_queries = {
            row["_id"]: row["text"]
            for row in read_jsonl(queries_file, queries_file.read_text(encoding="utf-8"))
        }
        queries = {qid: all_queries[qid] for qid in qrels if qid in all_queries}
        if not queries:
            raise InvalidInput(f"dataset: no query judged in {qrels_file} is in {queries_file}")
        return cls(
            name=path.resolve().name if path.name != "derived" else path.resolve().parent.name,
            split=split,
            corpus=corpus,
            queries=queries,
            qrels={qid: qrels[qid] for qid in queries},
            fingerprint=hashlib.sha256(corpus_bytes).hexdigest()[:12],
        )


def read_jsonl(path: Path, text: str) -> list[dict[str, str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"dataset: {path} line {number} is not JSON: {exc}") from None
        if not isinstance(row, dict) or not isinstance(row.get("_id"), str):
            raise InvalidInput(f'dataset: {path} line {number} lacks a string "_id"')
        rows.append(row)
    return rows


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader, None)  # header
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                query_id, corpus_id, score = row[0], row[1], int(row[2])
            except (IndexError, ValueError):
                raise InvalidInput(
                    f"dataset: {path} line {number} is not 'query-id<TAB>corpus-id<TAB>score'"
                ) from None
            qrels.setdefault(query_id, {})[corpus_id] = score
    return qrels
