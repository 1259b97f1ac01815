"""``ragfleet eval retrieval --json`` on a tiny BEIR folder with the real embedding model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragfleet_tools.cli.main import app

pytestmark = pytest.mark.integration

CORPUS = [
    {"_id": "d1", "title": "Fruit", "text": "apple banana cherry date elderberry fig grape"},
    {"_id": "d2", "title": "", "text": "apple"},
    {"_id": "d3", "title": "", "text": "cherry"},
    {"_id": "d4", "title": "Cats", "text": "Cats are small domesticated carnivorous mammals."},
]
QUERIES = [{"_id": "q1", "text": "apple"}, {"_id": "q2", "text": "a pet feline"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td2\t1\nq1\td3\t1\nq2\td4\t1\n"


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in CORPUS) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in QUERIES) + "\n")
    (root / "qrels" / "test.tsv").write_text(QRELS)
    return root


def test_json_output_has_every_default_configuration(beir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["eval", "retrieval", "--dataset", str(beir), "--cache-dir", str(tmp_path), "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["dataset"], report["split"]) == (beir.name, "test")
    assert report["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    by_name = {r["name"]: r for r in report["results"]}
    assert list(by_name) == ["bm25", "dense", "hybrid-rrf", "hybrid-weighted"]
    # BM25: q1 finds d2 first but never d3; "a pet feline" shares no word with the corpus.
    q1_ndcg = 1 / (1 + 1 / math.log2(3))
    assert by_name["bm25"]["metrics"] == {
        "ndcg_at_10": pytest.approx(q1_ndcg / 2),
        "recall_at_100": pytest.approx(0.25),
        "mrr_at_10": pytest.approx(0.5),
        "queries": 2,
    }
    # The real model puts the cat passage first for "a pet feline".
    dense = by_name["dense"]["metrics"]
    assert dense["recall_at_100"] == 1.0 and dense["mrr_at_10"] == pytest.approx(1.0)
    assert (
        by_name["hybrid-weighted"]["metrics"]["ndcg_at_10"]
        > by_name["bm25"]["metrics"]["ndcg_at_10"]
    )


def test_bad_input_exits_2_naming_the_problem(beir: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[config]]\nname = "x"\ncandidate_k = 0\n')
    result = CliRunner().invoke(
        app, ["eval", "retrieval", "--dataset", str(beir), "--config", str(config)]
    )
    assert result.exit_code == 2
    assert "config[0].candidate_k: must be an integer in [1, 1000]" in result.output
    result = CliRunner().invoke(
        app, ["eval", "retrieval", "--dataset", str(beir), "--split", "train"]
    )
    assert result.exit_code == 2 and "qrels/train.tsv does not exist" in result.output


GATE_CORPUS = [
    {"_id": "p1", "title": "Forecasting", "text": "Seasonal forecasting averages past years."},
    {"_id": "p2", "title": "Cats", "text": "Russian Blue cats have a soft, silver-tipped coat."},
    {"_id": "p3", "title": "Rivers", "text": "The Danube flows through ten countries."},
]
GATE_QUERIES = [
    ("a1", "how does seasonal forecasting use averages", True),
    ("a2", "what coat does the russian blue cat have", True),
    ("a3", "which countries does the danube flow through", True),
    ("u1", "what is the boiling point of tungsten", False),
    ("u2", "who won the 1998 chess olympiad", False),
]


def test_gate_scores_a_set_with_the_real_model(tmp_path: Path) -> None:
    root = tmp_path / "gate-set"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in GATE_CORPUS) + "\n")
    rows = [
        {"_id": i, "text": t, "metadata": {"answerable": ok, "answers": ["x"] if ok else []}}
        for i, t, ok in GATE_QUERIES
    ]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\na1\tp1\t1\n")
    command = ["eval", "gate", "--dataset", str(root), "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(app, [*command, "--max-refused", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["answerable"], report["unanswerable"]) == (3, 2)
    # The real model finds the passage answering each answerable question far above the
    # best match of a question the corpus never mentions.
    assert report["auc"][0] == 1.0
    chosen = next(row for row in report["rows"] if row["chosen"])
    assert chosen["answerable refused"][0] == 0.0
    assert chosen["unanswerable declined"][0] == 1.0
    again = CliRunner().invoke(app, command)  # the index is reused
    assert again.exit_code == 0, again.output
    assert "RAGFLEET_GATEWAY_MIN_DENSE_SCORE=" in again.stdout
