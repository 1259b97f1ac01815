"""``ragfleet eval answers``: the answer-set readers (BEIR-style and ClapNQ's own files),
stratified sampling, caching, metrics and intervals, sweep files and grids, the judge's strict
parse and metrics, the chart, and one question through a real ``RagPipeline`` over fake
upstreams."""

from __future__ import annotations

import dataclasses
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
    cost,
    ingest,
    markdown,
    paired,
    score,
)
from ragfleet_tools.eval.judge import Judgment, parse_verdict
from ragfleet_tools.eval.remote import remote_key
from ragfleet_tools.eval.report import write_answers_chart
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


def kinds(answerable: int, unanswerable: int) -> AnswerSet:
    questions = [Question(f"a{i}", "q", True, ("x",), frozenset()) for i in range(answerable)]
    questions += [Question(f"u{i}", "q", False, (), frozenset()) for i in range(unanswerable)]
    return AnswerSet("t", {}, questions, "f")


def test_sampling_keeps_the_ratio_and_a_larger_limit_keeps_the_smaller() -> None:
    even = kinds(5, 5)
    assert [q.answerable for q in even.sample(4)] == [True, False, True, False]
    data = kinds(6, 3)
    three, six, nine = data.sample(3), data.sample(6), data.sample(9)
    assert [q.answerable for q in three] == [True, False, True]
    assert sum(q.answerable for q in six) == 4 and six[:3] == three
    assert sum(q.answerable for q in nine) == 6 and nine[:6] == six
    assert data.sample(None) == nine and data.sample(3, seed=1) != three
    assert [q.answerable for q in kinds(1, 4).sample(5)] == [False, False, True, False, False]


def write_clapnq(folder: Path, rows: dict[str, list[dict[str, object]]]) -> Path:
    folder.mkdir()
    for kind, items in rows.items():
        text = "\n".join(json.dumps(r) for r in items)
        (folder / f"clapnq_dev_{kind}.jsonl").write_text(text)
    return folder


def clapnq_row(qid: str, passage: str, answer: str) -> dict[str, object]:
    return {
        "id": qid,
        "input": f"question {qid}",
        "passages": [{"title": "T", "text": passage, "sentences": [passage]}],
        "output": [{"answer": answer, "selected_sentences": [], "meta": {}}],
    }


def test_clapnq_files_make_a_corpus_of_every_rows_passages(tmp_path: Path) -> None:
    folder = write_clapnq(
        tmp_path / "dev",
        {
            "answerable": [clapnq_row("a1", "Koalas eat leaves.", "Leaves."),
                           clapnq_row("a2", "Koalas eat leaves.", "They eat leaves.")],
            "unanswerable": [clapnq_row("u1", "Owls hunt at night.", "")],
        },
    )  # fmt: skip
    data = AnswerSet.load(folder)
    assert data.name == tmp_path.name
    a1, a2, u1 = data.questions
    assert (a1.answerable, a1.answers, u1.answerable, u1.gold) == (True, ("Leaves.",), False, set())
    # A passage two questions share is one document, the judged passage of both.
    assert len(data.corpus) == 2 and a1.gold == a2.gold
    [gold] = a1.gold
    assert data.corpus[gold].text == "Koalas eat leaves." and data.corpus[gold].source == gold
    assert AnswerSet.load(folder).fingerprint == data.fingerprint


UNANSWERABLE = [clapnq_row("u", "p", "")]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"answerable": [{"id": "a", "input": "q"}], "unanswerable": UNANSWERABLE},
            r"clapnq_dev_answerable\.jsonl line 1 is not a ClapNQ row",
        ),
        ({"answerable": [clapnq_row("a", "p", "x")]}, r"one \*_unanswerable\.jsonl file"),
        (
            {"answerable": [clapnq_row("a", "p", "")], "unanswerable": UNANSWERABLE},
            r"no row of .*clapnq_dev_answerable\.jsonl has a reference answer",
        ),
    ],
)
def test_bad_clapnq_files_are_refused_naming_the_file(
    tmp_path: Path, files: dict[str, list[dict[str, object]]], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        AnswerSet.load(write_clapnq(tmp_path / "dev", files))


PRICE = {"input_usd_per_million": 1.0, "output_usd_per_million": 2.0}


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


def test_rows_cached_before_answers_had_a_cost_still_load_and_prices_keep_the_key(
    tmp_path: Path,
) -> None:
    row = dataclasses.asdict(result("a", "x", True, ["p1"]))
    del row["cost_usd"]
    (tmp_path / "c.jsonl").write_text(json.dumps(row) + "\n")
    assert ResultCache(tmp_path / "c.jsonl").results["a"].cost_usd is None
    priced = GatewaySettings(prices={"default": PRICE})  # type: ignore[arg-type]
    assert config_key(priced, "m", "f") == config_key(GatewaySettings(), "m", "f")


def test_the_report_sums_and_averages_the_cost_of_the_priced_answers() -> None:
    results = [
        dataclasses.replace(result("a", "x", True, []), cost_usd=0.002),
        dataclasses.replace(result("b", "y", True, []), cost_usd=0.004),
        result("c", "z", True, []),
    ]
    spent = cost(results)
    assert spent == pytest.approx(
        {"sum USD": 0.006, "mean USD per question": 0.003, "questions priced": 2}
    )
    assert "| sum USD | 0.006000 |" in markdown([], {}, "h", spent=spent)
    assert cost(results[2:]) == {} and "cost" not in markdown([], {}, "h", spent={})


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
    assert got.cost_usd is None
    priced = GatewaySettings(min_dense_score=None, prices={"default": PRICE})  # type: ignore[arg-type]
    pipeline = RagPipeline(priced, FakeEmbedder(), FakeRetriever(), generator)
    await ingest(pipeline, data, lambda _: None)
    got = await ask(pipeline, data.questions[0], timeout_s=10)
    # FakeGenerator: 42 prompt tokens, one completion token per token streamed.
    assert got.cost_usd == pytest.approx((42 * 1.0 + 2 * 2.0) / 1e6)


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
        ("[baseline]\n", "has no \\[\\[config\\]\\] or \\[grid\\]"),
        ("[grid]\n", "has no"),
        ("[grid]\ndefault_top_k = 3\n", r"grid\.default_top_k: must be a non-empty list"),
        ("[grid]\ndefault_top_kk = [3]\n", "did you mean 'default_top_k'"),
        ("[other]\n", "unknown table"),
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


def test_a_grid_expands_into_every_combination_on_top_of_the_baseline(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(
        '[baseline]\ndefault_temperature = 0.2\n\n[[config]]\nname = "three"\ndefault_top_k = 3\n\n'
        "[grid]\ndefault_top_k = [2, 5]\ncontext_budget_chars = [1600, 2400]\n"
    )
    configurations = load_sweep(path)
    assert [c.name for c in configurations] == [
        "baseline",
        "three",
        "default_top_k=2 context_budget_chars=1600",
        "default_top_k=2 context_budget_chars=2400",
        "default_top_k=5 context_budget_chars=1600",
        "default_top_k=5 context_budget_chars=2400",
    ]
    last = configurations[-1].settings
    assert (last.default_top_k, last.context_budget_chars) == (5, 2400)
    assert last.default_temperature == 0.2


@pytest.mark.parametrize(
    ("reply", "scores"),
    [
        ('{"faithfulness": 5, "correctness": 3}', {"faithfulness": 5, "correctness": 3}),
        (
            ' ```json\n{"correctness": 1, "faithfulness": 2}\n``` ',
            {"faithfulness": 2, "correctness": 1},
        ),
        ('{"faithfulness": 6, "correctness": 3}', None),
        ('{"faithfulness": 4.5, "correctness": 3}', None),
        ('{"faithfulness": true, "correctness": 3}', None),
        ('{"faithfulness": 4}', None),
        ('{"faithfulness": 4, "correctness": 4, "why": "x"}', None),
        ("Faithfulness: 4\nCorrectness: 4", None),
        ('Sure! {"faithfulness": 4, "correctness": 4}', None),
        ("", None),
    ],
)
def test_a_verdict_parses_only_when_it_is_exactly_the_two_scores(
    reply: str, scores: dict[str, int] | None
) -> None:
    assert parse_verdict(reply) == scores


def test_the_judges_scores_and_its_unparseable_replies_are_metrics() -> None:
    questions = [Question(q, "q", True, ("x",), frozenset()) for q in "abc"]
    results = {q.id: result(q.id, "x", True, []) for q in questions}
    judgments = {
        "a": Judgment("a", {"faithfulness": 5, "correctness": 4}, "{...}"),
        "b": Judgment("b", {"faithfulness": 3, "correctness": 2}, "{...}"),
        "c": Judgment("c", None, "I think it is fine"),
    }
    metrics, per = score(questions, results, judgments)
    by_name = {m.name: m for m in metrics}
    assert (by_name["judge faithfulness (1-5)"].value, by_name["judge faithfulness (1-5)"].n) == (
        4.0,
        2,
    )
    assert by_name["judge correctness (1-5)"].value == 3.0
    unparseable = by_name["judge unparseable"]
    assert (unparseable.value, unparseable.n) == (pytest.approx(1 / 3), 3)
    assert "judge unparseable" not in {m.name for m in score(questions, results)[0]}
    assert per["judge unparseable"] == {"a": 0.0, "b": 0.0, "c": 1.0}


def test_a_running_gateways_answers_are_keyed_by_label_or_address() -> None:
    by_address = remote_key("localhost:50050", None, "f")
    assert by_address != remote_key("other:50050", None, "f")
    assert remote_key("localhost:50050", "top-3", "f") == remote_key("other:1", "top-3", "f")
    assert by_address != remote_key("localhost:50050", None, "g")


def test_the_chart_has_a_panel_per_measured_metric(tmp_path: Path) -> None:
    questions = [Question("a", "q", True, ("x y",), frozenset({"p1"}))]
    metrics, _ = score(questions, {"a": result("a", "x y", True, ["p1"])})
    chart = tmp_path / "answers.png"
    write_answers_chart([("baseline", metrics), ("other", metrics)], chart, "t")
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_an_offset_sample_never_shares_a_question_with_the_first_ones() -> None:
    data = kinds(10, 10)
    tuning, reported = data.sample(6, offset=8), data.sample(8)
    assert not {q.id for q in tuning} & {q.id for q in reported}
    assert tuning == data.sample(None)[8:14] == data.sample(None, offset=8)[:6]
    assert [q.answerable for q in tuning] == [True, False, True, False, True, False]
