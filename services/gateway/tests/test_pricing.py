"""Pricing: the price table's two kinds of price, start-up refusing an incomplete table, and the
costs an answer carries per attempt through the fallback chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import Unavailable
from ragfleet_gateway.domain import AnswerEvent, AskRequest, AttemptOutcome, Document, ModelAttempt
from ragfleet_gateway.fakes import FakeEmbedder, FakeGenerator, FakeRetriever
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.pricing import PriceTable, TokenPrice
from ragfleet_gateway.settings import GatewaySettings, ModelPrice

pytestmark = pytest.mark.unit

API = {"input_usd_per_million": 1.0, "output_usd_per_million": 4.0}
# 3.6 USD an hour is 0.001 USD a second: a prompt token 1e-5, a completion token 1e-4.
HOSTED = {"hourly_usd": 3.6, "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0}


def test_an_api_price_is_per_million_tokens() -> None:
    price = TokenPrice.of(ModelPrice.model_validate(API))
    assert price.cost(1_000_000, 0) == pytest.approx(1.0)
    assert price.cost(500, 250) == pytest.approx((500 * 1.0 + 250 * 4.0) / 1e6)


def test_a_self_hosted_price_is_the_replica_time_the_tokens_take() -> None:
    price = TokenPrice.of(ModelPrice.model_validate(HOSTED))
    assert (price.input_per_million, price.output_per_million) == pytest.approx((10.0, 100.0))
    # 100 prompt tokens take 1 s, 10 completion tokens 1 s: 2 s of a 3.6 USD hour.
    assert price.cost(100, 10) == pytest.approx(0.002)


@pytest.mark.parametrize(
    "price",
    [
        {},
        {"input_usd_per_million": 1.0},
        {**API, "hourly_usd": 1.0},
        {"hourly_usd": 1.0, "decode_tokens_per_s": 10.0},
        {**HOSTED, "decode_tokens_per_s": 0},
        {**API, "input_usd_per_million": -1.0},
    ],
)
def test_a_price_must_be_one_complete_kind(price: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        ModelPrice.model_validate(price)


def test_attempts_are_priced_by_their_model_and_unknown_models_stay_unpriced() -> None:
    table = PriceTable(
        {"small": TokenPrice(1.0, 4.0), "default": TokenPrice(10.0, 100.0)},
    )
    attempts, total = table.price_all(
        [
            ModelAttempt("small", AttemptOutcome.FAILED, "down", 3, 1.0, 0, 3),
            ModelAttempt("", AttemptOutcome.SUCCEEDED, "", 0, 1.0, 100, 10),
            ModelAttempt("elsewhere", AttemptOutcome.SUCCEEDED, "", 0, 1.0, 100, 10),
        ]
    )
    assert [a.cost_usd for a in attempts] == pytest.approx([12e-6, 2e-3, None])
    assert total == pytest.approx(12e-6 + 2e-3)


def test_the_default_model_is_priced_by_the_name_it_reported_when_the_table_has_it() -> None:
    table = PriceTable({"big": TokenPrice(2.0, 2.0), "default": TokenPrice(1.0, 1.0)})
    attempt = ModelAttempt("", AttemptOutcome.SUCCEEDED, "", 0, 1.0, 1000, 0)
    assert table.price(attempt, "big").cost_usd == pytest.approx(2e-3)
    assert table.price(attempt, "unlisted").cost_usd == pytest.approx(1e-3)


def test_start_up_fails_naming_the_model_without_a_price(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAGFLEET_GATEWAY_MODELS", '["small", "big"]')
    monkeypatch.setenv("RAGFLEET_GATEWAY_PRICES", json.dumps({"small": API}))
    with pytest.raises(ValidationError, match="no price for model 'big'"):
        GatewaySettings()


def test_without_a_chain_the_default_model_needs_a_price() -> None:
    with pytest.raises(ValidationError, match="no price for model 'default'"):
        GatewaySettings(prices={"small": API})  # type: ignore[arg-type]
    assert GatewaySettings(prices={"default": API}).price_table()  # type: ignore[arg-type]


def test_a_prices_file_is_read_and_checked(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("small:\n  input_usd_per_million: 1\n  output_usd_per_million: 2\n")
    with pytest.raises(ValidationError, match="no price for model 'big'"):
        GatewaySettings(models=["small", "big"], prices_file=prices)  # type: ignore[arg-type]
    settings = GatewaySettings(
        models=["small", "big"],  # type: ignore[arg-type]
        prices_file=prices,
        prices={"big": HOSTED},  # type: ignore[dict-item]
    )
    assert set(settings.price_table()) == {"small", "big"}
    prices.write_text("- not a table\n")
    with pytest.raises(ValidationError, match="prices_file"):
        GatewaySettings(prices_file=prices)


async def _answer(settings: GatewaySettings, generators: dict[str, FakeGenerator]) -> AnswerEvent:
    pipeline = RagPipeline(
        settings, FakeEmbedder(), FakeRetriever(), FakeGenerator(), model_generators=generators
    )
    doc = Document(source="ops.md", text="On SIGTERM the service drains in-flight calls.")
    await pipeline.ingest([doc], "", Deadline.after(10))
    events = [e async for e in pipeline.ask(AskRequest("SIGTERM?"), Deadline.after(10))]
    last = events[-1]
    assert isinstance(last, AnswerEvent)
    return last


async def test_the_answer_carries_each_attempts_cost_and_the_total() -> None:
    small = FakeGenerator(tokens=("a ", "b ", "c"), error=Unavailable("died"), fail_after=2)
    big = FakeGenerator(tokens=("Drains [1].",))
    settings = GatewaySettings(
        models=["small", "big"],  # type: ignore[arg-type]
        prices={"small": API, "big": HOSTED},  # type: ignore[dict-item]
        min_dense_score=None,
    )
    before = REGISTRY.get_sample_value("ragfleet_gateway_cost_usd_total", {"model": "big"}) or 0
    answer = (await _answer(settings, {"small": small, "big": big})).answer
    failed, succeeded = answer.attempts
    assert (failed.outcome, failed.prompt_tokens, failed.completion_tokens) == (
        AttemptOutcome.FAILED,
        0,
        2,
    )
    assert failed.cost_usd == pytest.approx(2 * 4.0 / 1e6)
    # FakeGenerator reports 42 prompt tokens and one completion token per token it streamed.
    assert (succeeded.prompt_tokens, succeeded.completion_tokens) == (42, 1)
    assert succeeded.cost_usd == pytest.approx(42e-5 + 1e-4)
    assert answer.cost_usd == pytest.approx(failed.cost_usd + succeeded.cost_usd)
    after = REGISTRY.get_sample_value("ragfleet_gateway_cost_usd_total", {"model": "big"})
    assert after == pytest.approx(before + succeeded.cost_usd)


async def test_without_a_price_table_nothing_is_priced() -> None:
    settings = GatewaySettings(models=["small"], min_dense_score=None)  # type: ignore[arg-type]
    answer = (await _answer(settings, {"small": FakeGenerator()})).answer
    assert answer.cost_usd is None and answer.attempts[0].cost_usd is None
    assert answer.attempts[0].prompt_tokens == 42


async def test_an_answer_no_model_was_asked_for_costs_nothing() -> None:
    settings = GatewaySettings(prices={"default": API}, min_dense_score=2.0)  # type: ignore[arg-type]
    answer = (await _answer(settings, {})).answer
    assert not answer.answered and answer.cost_usd == 0.0 and not answer.attempts


def test_the_local_price_table_prices_both_packaged_models() -> None:
    local = Path(__file__).parents[1] / "prices.local.yaml"
    models = ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
    table = PriceTable.from_settings(GatewaySettings(models=models, prices_file=local))  # type: ignore[arg-type]
    assert table is not None
    small = ModelAttempt(models[0], AttemptOutcome.SUCCEEDED, "", 0, 0.0, 736, 18)
    big = ModelAttempt(models[1], AttemptOutcome.SUCCEEDED, "", 0, 0.0, 736, 18)
    small_cost, big_cost = table.price(small).cost_usd, table.price(big).cost_usd
    assert small_cost is not None and big_cost is not None
    # The demo's median answer: about 13 s of a 0.10 USD hour on the 0.5B model.
    assert small_cost == pytest.approx(0.10 / 3600 * (736 / 70.0 + 18 / 14.4))
    assert big_cost > 1.9 * small_cost
    assert (
        GatewaySettings(prices_file=local).price_table()["default"]
        == (GatewaySettings(prices_file=local).price_table()[models[0]])
    )
