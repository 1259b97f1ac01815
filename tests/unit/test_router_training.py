"""The question router: the numpy scorer against scikit-learn, the model file, threshold choice,
metrics, training data validation, the CLI, the cascade's check, and the real routing files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from typer.testing import CliRunner

from ragfleet.router_model import RouterModel, escalation_reason, ngrams
from ragfleet.runtime.errors import InvalidInput
from ragfleet_tools.eval.beir import DATASETS_ENV, datasets_dir
from ragfleet_tools.training.cli import train_app
from ragfleet_tools.training.router import (
    Candidate,
    RoutingExample,
    auc,
    choose_threshold,
    classification_metrics,
    evaluate_router,
    fit_classifier,
    read_routing_data,
    train_router,
)

pytestmark = pytest.mark.unit

ROUTING = datasets_dir() / "llm-applications" / "datasets"
TRICKY = [
    "How do I use `ray.data.read_csv()` with  many   spaces?",
    "a I x",  # one-letter words: no word token, short char n-grams
    "Ünïcode wörds, café—naïve; émigré's data_set_v2 [1]",
    "",
    "why why why why does it loop",
]
EASY = ["what is ray", "define an actor", "list the nodes", "show the version", "name a task"]
HARD = [
    "how do I tune `num_gpus` for ray.train with fsdp and deepspeed?",
    "why does my autoscaler not scale down after the job ends",
    "explain the difference between ray.get and ray.wait in async code",
    "compare placement groups strategies for multi node training",
    "how should I debug object spilling with plasma store errors",
]


def synthetic(n: int = 120, seed: int = 0) -> list[RoutingExample]:
    """Hard (class 0) questions are longer and code-like; the words overlap so it is not
    separable."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        strong = i % 4 == 0
        pool = HARD if strong or rng.random() < 0.15 else EASY
        text = f"{rng.choice(pool)} {rng.choice(EASY + HARD).split()[-1]} {i % 7}"
        rows.append(RoutingExample(text, 0 if strong else 1))
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("analyzer", "ngram_range"),
    [
        ("word", (1, 1)),
        ("word", (1, 3)),
        ("word", (2, 2)),
        ("char_wb", (1, 5)),
        ("char_wb", (3, 4)),
    ],
)
def test_ngrams_are_sklearns(analyzer: str, ngram_range: tuple[int, int]) -> None:
    analyse = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range).build_analyzer()
    for text in TRICKY:
        assert sorted(ngrams(text, analyzer, ngram_range)) == sorted(analyse(text))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "candidate",
    [
        Candidate(words=(1, 1), c=1.0),
        Candidate(words=(1, 2), chars=(2, 4), question=True, c=4.0),
        Candidate(words=(1, 3), chars=(1, 5), question=True, c=16.0, balanced=True),
    ],
    ids=lambda c: c.name,
)
def test_numpy_scorer_equals_sklearn(candidate: Candidate, tmp_path: Path) -> None:
    train, held = synthetic(120, seed=1), synthetic(40, seed=2)
    featurizer, classifier = fit_classifier(
        candidate, [e.question for e in train], np.array([e.target for e in train])
    )
    blocks, intercept = featurizer.export(classifier)
    model = RouterModel(blocks, intercept, 0.5)
    model.save(tmp_path / "router.json")
    loaded = RouterModel.load(tmp_path / "router.json")
    questions = [e.question for e in held] + TRICKY
    expected = classifier.predict_proba(featurizer.transform(questions))[:, 0]
    got = np.array([loaded.p_strong(q) for q in questions])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_load_names_the_file_and_the_fault(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"router\.json: not JSON"):
        RouterModel.load(path)
    model = RouterModel([], 0.0, 0.5)
    wrong_version = {**model.to_json(), "version": 99}
    path.write_text(json.dumps(wrong_version), encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"router\.json: version 99"):
        RouterModel.load(path)
    broken = {**model.to_json(), "blocks": [{"kind": "tfidf", "analyzer": "word"}]}
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"router\.json: malformed"):
        RouterModel.load(path)
    path.write_text(json.dumps({"format": "other"}), encoding="utf-8")
    with pytest.raises(InvalidInput, match="not a"):
        RouterModel.load(path)
    with pytest.raises(InvalidInput, match="cannot be read"):
        RouterModel.load(tmp_path / "missing.json")


def test_choose_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    targets = (rng.random(300) > 0.25).astype(np.int64)
    p = np.round(np.clip(0.6 - 0.3 * targets + rng.normal(0, 0.25, 300), 0, 1), 2)
    choice = choose_threshold(targets, p, 0.6)
    best = (-1.0, 0.0)
    for t in np.unique(p):
        predicted = np.where(p >= t, 0, 1)
        if recall_score(targets, predicted, pos_label=0) >= 0.6:
            best = max(best, (f1_score(targets, predicted, average="weighted"), -t))
    assert choice.weighted_f1 == pytest.approx(best[0])
    assert choice.threshold == pytest.approx(-best[1])
    assert choice.strong_recall >= 0.6
    assert auc(targets, p) == pytest.approx(roc_auc_score(1 - targets, p))


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(4)
    targets = (rng.random(200) > 0.2).astype(np.int64)
    predicted = np.where(rng.random(200) > 0.3, targets, 1 - targets)
    metrics = classification_metrics(targets, predicted)
    assert metrics["weighted F1"].value == pytest.approx(
        f1_score(targets, predicted, average="weighted")
    )
    assert metrics["weighted precision"].value == pytest.approx(
        precision_score(targets, predicted, average="weighted")
    )
    assert metrics["recall 0 (strong)"].value == pytest.approx(
        recall_score(targets, predicted, pos_label=0)
    )
    assert metrics["precision 1 (cheap)"].value == pytest.approx(
        precision_score(targets, predicted, pos_label=1)
    )
    for m in metrics.values():
        assert m.low <= m.value <= m.high


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no rows"),
        ('{"target": 1}\n', 'no non-empty string "question"'),
        ('{"question": "q", "target": 2}\n', '"target" must be 0'),
        ('{"question": "q", "target": true}\n', '"target" must be 0'),
        ("[1, 2]\n", 'no non-empty string "question"'),
        ("{oops\n", "line 1: not JSON"),
    ],
)
def test_bad_routing_data_is_invalid_input(content: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInput, match=message) as caught:
        read_routing_data([path])
    assert str(path) in str(caught.value)


def test_a_single_class_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="both classes"):
        train_router([RoutingExample(f"q {i}", 1) for i in range(20)])
    with pytest.raises(InvalidInput, match="at least 5"):
        train_router([RoutingExample(f"q {i}", int(i > 2)) for i in range(20)])


def test_train_router_chooses_by_cross_validation() -> None:
    grid = [Candidate(words=(1, 1), c=1.0), Candidate(words=(1, 2), question=True, c=4.0)]
    model, report = train_router(synthetic(), 0.6, grid=grid, sources=["synthetic"])
    assert report.chosen.choice.strong_recall >= 0.6
    assert report.chosen.choice.weighted_f1 == max(s.choice.weighted_f1 for s in report.scores)
    assert model.threshold == report.chosen.choice.threshold
    assert model.metadata["trained_on"] == ["synthetic"]
    routed, cheap = evaluate_router(model, synthetic(80, seed=9))
    assert cheap["recall 0 (strong)"].value == 0.0
    assert cheap["strong share"].value == 0.0
    assert routed["recall 0 (strong)"].value > 0.5


def test_cli_trains_saves_and_reports(tmp_path: Path) -> None:
    rows = [{"question": e.question, "target": e.target} for e in synthetic()]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", rows[:40])
    out, report = tmp_path / "router.json", tmp_path / "report.md"
    options = {"--data": data, "--out": out, "--test": test, "--report": report}
    arguments = ["router"] + [part for o, v in options.items() for part in (o, str(v))]
    result = CliRunner().invoke(train_app, arguments)
    assert result.exit_code == 0, result.output
    assert RouterModel.load(out).metadata["examples"] == len(rows)
    text = report.read_text(encoding="utf-8")
    assert "| weighted F1 |" in text and "always cheap" in text
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    failed = CliRunner().invoke(train_app, ["router", "--data", str(empty), "--out", str(out)])
    assert failed.exit_code == 1
    assert "InvalidInput" in failed.output and "no rows" in failed.output


@pytest.mark.parametrize(
    ("answer", "answered", "cited", "finish", "reason"),
    [
        ("I don't know.", False, 0, "stop", "declined"),
        ("Paris is the capital [1].", True, 1, "length", "finish_reason length"),
        ("Paris is the capital [1].", True, 1, "repetition", "finish_reason repetition"),
        ("Paris is the capital of France.", True, 0, "stop", "no citation"),
        ("the the cat sat " * 8 + "[1]", True, 1, "stop", "degenerate"),
        ("[1] Ghostface", True, 1, "stop", "too short"),
        ("Paris is the capital of France [1].", True, 1, "stop", None),
        ("Paris is the capital of France [1].", True, 1, "", None),
    ],
)
def test_escalation_reason(
    answer: str, answered: bool, cited: int, finish: str, reason: str | None
) -> None:
    assert escalation_reason(answer, answered, cited, finish) == reason


@pytest.mark.skipif(
    not (ROUTING / "routing-dataset-test.jsonl").is_file(),
    reason=f"llm-applications routing files not found at {ROUTING} (set {DATASETS_ENV})",
)
def test_real_routing_files() -> None:
    """One candidate (the grid's usual winner) on the real training file: the numpy scorer
    equals scikit-learn on every test question, and the router beats always-cheap on class 0."""
    train = read_routing_data([ROUTING / "routing-dataset-train.jsonl"])
    test = read_routing_data([ROUTING / "routing-dataset-test.jsonl"])
    assert (len(train), len(test)) == (1801, 574)
    candidate = Candidate(words=(1, 2), chars=(2, 4), question=True, c=4.0)
    featurizer, classifier = fit_classifier(
        candidate, [e.question for e in train], np.array([e.target for e in train])
    )
    blocks, intercept = featurizer.export(classifier)
    model = RouterModel(blocks, intercept, 0.5)
    questions = [e.question for e in test]
    expected = classifier.predict_proba(featurizer.transform(questions))[:, 0]
    got = np.array([model.p_strong(q) for q in questions])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    routed, cheap = evaluate_router(RouterModel(blocks, intercept, 0.25), test)
    assert routed["recall 0 (strong)"].value > 0.4
    assert cheap["accuracy"].value == pytest.approx(1 - 43 / 574, abs=0.01)
