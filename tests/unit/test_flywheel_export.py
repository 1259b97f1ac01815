"""``ragfleet flywheel export``: a feedback store filled here becomes one folder that the
answer evaluation, the embedder's and the router's training data loaders all read; and the
store's retention and tenant deletion from the command line."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from tests.flywheel_contract import T0, make_answer, make_feedback
from typer.testing import CliRunner

from ragfleet.flywheel.records import AnswerRecord
from ragfleet.flywheel.sqlite_store import SqliteStore
from ragfleet_tools.cli import app
from ragfleet_tools.eval.answers import AnswerSet
from ragfleet_tools.eval.beir import BeirDataset
from ragfleet_tools.flywheel.export import split_of
from ragfleet_tools.training.embedder import build_triplets
from ragfleet_tools.training.router import read_routing_data

pytestmark = pytest.mark.unit

CHEAP, STRONG = "qwen-small", "qwen-large"
_IDS = (f"{n:032x}" for n in itertools.count(1))


def _id(split: str) -> str:
    """The next fixed answer id that falls in ``split``, so the test knows its split."""
    return next(i for i in _IDS if split_of(i) == split)


def _answer(split: str, **fields: object) -> AnswerRecord:
    return dataclasses.replace(make_answer(**fields), answer_id=_id(split))  # type: ignore[arg-type]


@dataclasses.dataclass
class Filled:
    url: str
    ids: dict[str, str]


@pytest.fixture
async def filled(tmp_path: Path) -> Filled:
    """One answer per rule of the export, plus one of another tenant and one unrated."""
    store = SqliteStore(tmp_path / "store" / "feedback.sqlite3")
    cases: dict[str, tuple[AnswerRecord, list[dict[str, object]]]] = {
        "good": (_answer("train", question="How long is the warranty?"), [{"rating": 5}]),
        "good_dev": (
            _answer("dev", question="Can I return it?", chunks=("returns#2",)),
            [{"rating": 4}],
        ),
        "corrected": (
            _answer("train", question="Warranty in the EU?"),
            [{"rating": 2, "correction": "Three years in the EU."}],
        ),
        "unanswerable": (
            _answer("train", question="Who is the CEO?"),
            [{"rating": 1, "correction": "the documents do not say"}],
        ),
        "declined_ok": (
            _answer(
                "train",
                question="What is the moon made of?",
                answer="The documents do not say.",
                answered=False,
                cited=(),
            ),
            [{"rating": 4}],
        ),
        "meh": (_answer("train", question="Is shipping free?"), [{"rating": 3}]),
        "bad": (_answer("train", question="Does it float?"), [{"rating": 1}]),
        "escalated": (
            _answer(
                "train",
                question="Compare the two warranty plans.",
                model=STRONG,
                route="cascade: escalated: declined",
            ),
            [{"rating": 5}],
        ),
        "strong": (_answer("train", question="Explain clause 7.", model=STRONG), [{"rating": 5}]),
        "changed_mind": (
            _answer("train", question="Is it waterproof?"),
            [{"rating": 5}, {"rating": 2, "comment": "actually no"}],
        ),
        "other_tenant": (_answer("train", tenant="globex"), [{"rating": 5}]),
        "unrated": (_answer("train", question="Never rated?"), []),
    }
    for answer, feedback in cases.values():
        await store.record(answer)
        for n, given in enumerate(feedback):
            at = answer.created_at + timedelta(minutes=n + 1)
            await store.add_feedback(make_feedback(answer, created_at=at, **given))  # type: ignore[arg-type]
    await store.close()
    return Filled(f"sqlite:///{store.path}", {name: a.answer_id for name, (a, _) in cases.items()})


def _export(filled: Filled, out: Path, *extra: str) -> str:
    result = CliRunner().invoke(
        app, ["flywheel", "export", "--store", filled.url, "--out", str(out), *extra]
    )
    assert result.exit_code == 0, result.output
    return result.output


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_export_follows_the_rules(filled: Filled, tmp_path: Path) -> None:
    out = tmp_path / "export"
    printed = _export(filled, out, "--tenant", "acme", "--cheap-model", CHEAP)
    ids = {answer_id: name for name, answer_id in filled.ids.items()}
    queries = {ids[str(q["_id"])]: q for q in _rows(out / "queries.jsonl")}
    meta = {name: q["metadata"] for name, q in queries.items()}
    assert sorted(queries) == sorted(
        ["good", "good_dev", "corrected", "unanswerable", "declined_ok", "escalated", "strong"]
    )
    assert meta["good"] == {
        "answers": ["Two years."],  # the answer itself, citation marker removed
        "answerable": True,
        "rating": 5,
        "model": CHEAP,
        "split": "train",
    }
    assert meta["corrected"]["answers"] == ["Three years in the EU."]  # type: ignore[index]
    assert meta["unanswerable"]["answerable"] is False  # type: ignore[index]
    assert meta["declined_ok"] == {
        "answers": [],
        "answerable": False,
        "rating": 4,
        "model": CHEAP,
        "split": "train",
    }
    assert queries["good"]["text"] == "How long is the warranty?"

    train = (out / "qrels" / "train.tsv").read_text().splitlines()
    dev = (out / "qrels" / "dev.tsv").read_text().splitlines()
    assert train[0] == dev[0] == "query-id\tcorpus-id\tscore"
    assert sorted(train[1:]) == sorted(
        f"{filled.ids[name]}\twarranty#0\t1" for name in ("good", "escalated", "strong")
    )
    assert dev[1:] == [f"{filled.ids['good_dev']}\treturns#2\t1"]

    corpus = {str(row["_id"]): row for row in _rows(out / "corpus.jsonl")}
    assert set(corpus) == {"warranty#0", "returns#2"}
    assert corpus["warranty#0"]["title"] == "Warranty"

    router = {str(r["question"]): r["target"] for r in _rows(out / "router.jsonl")}
    assert router == {
        "How long is the warranty?": 1,
        "Can I return it?": 1,
        "Warranty in the EU?": 0,
        "Who is the CEO?": 0,
        "What is the moon made of?": 1,
        "Does it float?": 0,
        "Compare the two warranty plans.": 0,
        "Is it waterproof?": 0,
    }
    readme = (out / "README.md").read_text()
    assert "for tenant `acme`" in readme
    assert (
        "`metadata.answerable`, `rating`, `model`, `split`): 7\n  (5 answerable, 2 unanswerable)"
        in readme
    )
    assert "3 rated answers have no reference" in readme
    assert "10 rated answers to" in printed
    assert "router.jsonl: 8 rows (3 cheap-was-enough, 5 needed-the-strong-model)" in printed


def test_the_folder_loads_in_the_answer_evaluation(filled: Filled, tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export(filled, out, "--tenant", "acme")
    answers = AnswerSet.load(out, "dev")
    by_id = {q.id: q for q in answers.questions}
    assert len(by_id) == 7
    good_dev = by_id[filled.ids["good_dev"]]
    assert good_dev.answerable and good_dev.gold == frozenset({"returns#2"})
    assert good_dev.answers == ("Two years.",)
    assert not by_id[filled.ids["unanswerable"]].answerable
    assert set(answers.corpus) == {"warranty#0", "returns#2"}


def test_the_folder_loads_as_embedder_training_data(filled: Filled, tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export(filled, out, "--tenant", "acme")
    data = BeirDataset.load(out, "train")
    assert set(data.queries) == {filled.ids[n] for n in ("good", "escalated", "strong")}

    def rank(queries: Mapping[str, str], k: int) -> Mapping[str, Sequence[str]]:
        return {q: ["warranty#0", "returns#2"][:k] for q in queries}

    triplets = build_triplets(data, rank, mine_depth=2)
    assert len(triplets) == 3
    assert all("returns#2" in t.negative for t in triplets)


def test_router_rows_load_as_router_training_data(filled: Filled, tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export(filled, out, "--cheap-model", CHEAP)
    examples = read_routing_data([out / "router.jsonl"])
    assert len(examples) == 9  # the other tenant's good answer of the cheap model too


def test_without_a_cheap_model_there_is_no_router_file(filled: Filled, tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export(filled, out, "--cheap-model", CHEAP)
    printed = _export(filled, out, "--since", (T0 + timedelta(days=1)).date().isoformat())
    assert not (out / "router.jsonl").exists()  # the earlier export's is gone
    assert "router.jsonl not written (pass --cheap-model NAME" in printed
    assert "exported 0 rated answers" in printed
    assert "No question has a reference answer yet" in (out / "README.md").read_text()


def test_the_export_never_overwrites_other_files(filled: Filled, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(
        app,
        ["flywheel", "export", "--store", filled.url, "--out", str(tmp_path / "mine")],
    )
    assert result.exit_code == 2
    assert "holds files an export did not write" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_bad_since_or_store_is_a_clear_error(filled: Filled, tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "x")
    bad_since = runner.invoke(
        app, ["flywheel", "export", "--store", filled.url, "--out", out, "--since", "March"]
    )
    assert bad_since.exit_code == 2
    assert "--since: expected an ISO 8601 date" in bad_since.output
    bad_store = runner.invoke(
        app, ["flywheel", "export", "--store", "mysql://u:pw@h/db", "--out", out]
    )
    assert bad_store.exit_code == 2
    assert "accepted: sqlite:///PATH or postgresql://" in bad_store.output
    assert ":pw@" not in bad_store.output


def test_purge_and_delete_tenant_print_what_they_removed(filled: Filled) -> None:
    runner = CliRunner()
    gone = runner.invoke(
        app, ["flywheel", "delete-tenant", "--store", filled.url, "--tenant", "globex"]
    )
    assert gone.exit_code == 0, gone.output
    assert "removed 2 rows (answers and feedback) of tenant globex" in gone.output
    # Every answer was given on 2026-03-01; none is older than 100000 days.
    kept = runner.invoke(
        app, ["flywheel", "purge", "--store", filled.url, "--older-than", "100000"]
    )
    assert kept.exit_code == 0, kept.output
    assert "removed 0 rows" in kept.output
    purged = runner.invoke(app, ["flywheel", "purge", "--store", filled.url, "--older-than", "0"])
    assert "removed 22 rows" in purged.output  # 11 answers, 11 feedback
