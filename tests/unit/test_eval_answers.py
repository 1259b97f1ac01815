"""``ragfleet eval answers``: the answer-set reader, sampling, caching, metrics and intervals, and
one question through a real ``RagPipeline`` over fake upstreams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragfleet.runtime.errors import InvalidInput
from ragfleet_gateway.fakes import FakeEmbedder, FakeGenerator, FakeRetriever
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_tools.eval.answers import (
    AnswerSet,
    Question,
    Result,
    ResultCache,
    ask,
    bootstrap,
    config_key,
    ingest,
    paired,
    score,
)
from ragfleet_tools.eval.sweep import load_sweep

pytestmark = pytest.mark.unit


def write_set(folder: Path, queries: list[dict[str, object]]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": "p1", "title": "Forecasting", "text": "Seasonality uses averages to forecast."},
        {"_id": "p2", "title": "Cats", "text": "Russian Blue cats have a soft undercoat."},
    ]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in corpus))
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\n")
    return folder


QUERIES: list[dict[str, object]] = [
    {
        "_id": "q1",
        "text": "which forecasting method uses averages",
        "metadata": {"answerable": True, "answers": ["Seasonality uses averages."]},
    },
    {"_id": "q2", "text": "who painted the cat", "metadata": {"answerable": False, "answers": []}},
]


def test_an_answer_set_reads_references_and_judged_passages(tmp_path: Path) -> None:
    data = AnswerSet.load(write_set(tmp_path / "set", QUERIES))
    assert [(q.id, q.answerable, q.gold) for q in data.questions] == [
        ("q1", True, frozenset({"p1"})),
        ("q2", False, frozenset()),
    ]
    assert data.questions[0].answers == ("Seasonality uses averages.",)


def test_a_set_without_references_is_refused_naming_the_file(tmp_path: Path) -> None:
    plain = [{"_id": "q1", "text": "a question"}]
    folder = write_set(tmp_path / "plain", plain)
    with pytest.raises(InvalidInput, match=r"queries\.jsonl has metadata\.answerable"):
        AnswerSet.load(folder)
    broken = [{"_id": "q1", "text": "q", "metadata": {"answerable": True, "answers": []}}]
    with pytest.raises(InvalidInput, match=r"q1 is answerable but has no metadata\.answers"):
        AnswerSet.load(write_set(tmp_path / "broken", broken))
    with pytest.raises(InvalidInput, match=r"qrels/test\.tsv does not exist"):
        AnswerSet.load(folder, "test")


def test_sampling_alternates_the_kinds_and_a_larger_limit_keeps_the_smaller() -> None:
    questions = [Question(f"a{i}", "q", True, ("x",), frozenset()) for i in range(6)] + [
        Question(f"u{i}", "q", False, (), frozenset()) for i in range(3)
    ]
    data = AnswerSet("t", {}, questions, "f")
    four, eight = data.sample(4), data.sample(8)
    assert [q.answerable for q in four] == [True, False, True, False]
    assert eight[:4] == four
    assert len(data.sample(None)) == 9 and data.sample(4, seed=1) != four


def result(qid: str, answer: str, answered: bool, cited: list[str]) -> Result:
    return Result(qid, answer, answered, cited, answer, cited, "m", 10.0, 20.0, 5, 3, [])


def test_metrics_per_kind_of_question() -> None:
    questions = [
        Question("a", "q", True, ("the cat sat on the mat",), frozenset({"p1"})),
        Question("b", "q", True, ("dogs bark",), frozenset({"p2"})),
        Question("u", "q", False, (), frozenset()),
    ]
    results = {
        "a": result("a", "the cat sat on the mat", True, ["p1", "p9"]),
        "b": result("b", "The documents do not say.", False, []),
        "u": result("u", "The documents do not say.", False, []),
    }
    metrics, per = score(questions, results)
    by_name = {m.name: m for m in metrics}
    assert per["RougeL F1 vs reference"]["a"] == pytest.approx(1.0)
    assert by_name["citation precision"].value == pytest.approx(0.5)
    assert by_name["citation recall"].value == 1.0 and by_name["citation recall"].n == 1
    assert by_name["answerable refused"].value == 0.5
    assert by_name["unanswerable declined"].value == 1.0


def test_paired_differences_use_the_questions_both_runs_measured() -> None:
    current = {"m": {"a": 1.0, "b": 1.0, "c": 0.5}}
    baseline = {"m": {"a": 0.0, "b": 1.0}}
    [difference] = paired(current, baseline)
    assert (difference.value, difference.n) == (0.5, 2)
    assert difference.low == 0.0 and difference.high == 1.0


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_data() -> None:
    mean, low, high = bootstrap([0.0, 1.0] * 10)
    assert low < mean == 0.5 < high
    _, wide_low, wide_high = bootstrap([0.0, 1.0] * 3)
    assert wide_high - wide_low > high - low
    assert bootstrap([1.0] * 5) == (1.0, 1.0, 1.0)


def test_the_cache_resumes_and_the_key_follows_the_settings(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "c.jsonl")
    cache.add(result("a", "x", True, ["p1"]))
    assert ResultCache(tmp_path / "c.jsonl").results == cache.results
    # An interrupted run may leave half a line: it is skipped, and the next answer starts anew.
    with (tmp_path / "c.jsonl").open("a") as handle:
        handle.write('{"id": "b", "answ')
    resumed = ResultCache(tmp_path / "c.jsonl")
    assert list(resumed.results) == ["a"]
    resumed.add(result("b", "y", True, []))
    assert list(ResultCache(tmp_path / "c.jsonl").results) == ["a", "b"]
    base = config_key(GatewaySettings(), "m", "f")
    assert base == config_key(GatewaySettings(), "m", "f")
    assert base != config_key(GatewaySettings(default_top_k=3), "m", "f")
    assert base != config_key(GatewaySettings(), "other", "f")


async def test_a_question_through_the_pipeline_records_its_answer(tmp_path: Path) -> None:
    data = AnswerSet.load(write_set(tmp_path / "set", QUERIES))
    generator = FakeGenerator(tokens=("Seasonality ", "uses averages [1]."))
    settings = GatewaySettings(min_dense_score=None)
    pipeline = RagPipeline(settings, FakeEmbedder(), FakeRetriever(), generator)
    await ingest(pipeline, data, lambda _: None)
    got = await ask(pipeline, data.questions[0], timeout_s=10)
    assert got.answer == "Seasonality uses averages [1]." and got.answered
    assert got.cited == ["p1"] and "Seasonality uses averages to forecast." in got.cited_text
    assert got.shown[0] == "p1" and 0 < got.ttft_ms <= got.total_ms
    metrics, _ = score(data.questions[:1], {got.id: got})
    assert {m.name: m.value for m in metrics}["citation precision"] == 1.0


def test_a_sweep_file_names_a_baseline_and_configurations(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(
        '[baseline]\ndefault_top_k = 4\n\n[[config]]\nname = "three"\ndefault_top_k = 3\n\n'
        '[[config]]\nname = "short"\ncontext_budget_chars = 1600\n'
    )
    baseline, three, short = load_sweep(path)
    assert (baseline.name, baseline.settings.default_top_k) == ("baseline", 4)
    assert (three.name, three.settings.default_top_k) == ("three", 3)
    assert (short.settings.default_top_k, short.settings.context_budget_chars) == (4, 1600)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[config]]\nname = "a"\ndefault_top_kk = 3\n', "did you mean 'default_top_k'"),
        ('[[config]]\nname = "a"\ndefault_top_k = 0\n', r"config\[0\]\.default_top_k"),
        ("[[config]]\ndefault_top_k = 3\n", r"config\[0\]\.name: required"),
        ("[baseline]\n", "has no \\[\\[config\\]\\]"),
        ("[grid]\n", "unknown table"),
        ("[[config]\n", "cannot read"),
    ],
)
def test_a_bad_sweep_file_is_refused_naming_what_to_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        load_sweep(path)
