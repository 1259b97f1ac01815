"""Routing between a cheap and a strong model: each policy's choice, the cascade's escalation,
and the fallback chain under a routed model."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ragfleet.router_model import RouterModel, TfidfBlock
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import Unavailable
from ragfleet_gateway.domain import (
    AnswerEvent,
    AskEvent,
    AskRequest,
    AttemptOutcome,
    Document,
    RestartEvent,
    Route,
)
from ragfleet_gateway.fakes import FakeEmbedder, FakeGenerator, FakeRetriever
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

DOC = Document(source="ops.md", text="On SIGTERM the service drains in-flight calls.")
PRICES = {
    "cheap": {"input_usd_per_million": 1.0, "output_usd_per_million": 1.0},
    "strong": {"input_usd_per_million": 10.0, "output_usd_per_million": 10.0},
}


async def pipeline_with(
    cheap: FakeGenerator, strong: FakeGenerator, **overrides: object
) -> RagPipeline:
    settings = GatewaySettings(
        models=["cheap", "strong"],  # type: ignore[arg-type]
        routing_cheap_model="cheap",
        routing_strong_model="strong",
        generation_retry_base_s=0.01,
        **overrides,  # type: ignore[arg-type]
    )
    pipeline = RagPipeline(
        settings,
        FakeEmbedder(),
        FakeRetriever(),
        FakeGenerator(),
        model_generators={"cheap": cheap, "strong": strong},
    )
    await pipeline.ingest([DOC], "", Deadline.after(10))
    return pipeline


async def ask(pipeline: RagPipeline, question: str = "What happens on SIGTERM?") -> list[AskEvent]:
    return [e async for e in pipeline.ask(AskRequest(question), Deadline.after(10))]


def answer_of(events: list[AskEvent]) -> AnswerEvent:
    assert isinstance(events[-1], AnswerEvent)
    return events[-1]


async def test_without_a_router_the_first_model_answers() -> None:
    cheap, strong = FakeGenerator(), FakeGenerator()
    a = answer_of(await ask(await pipeline_with(cheap, strong))).answer
    assert a.route == Route("none", "cheap") and a.model == "cheap" and strong.requests == []


async def test_a_named_model_is_not_routed() -> None:
    cheap, strong = FakeGenerator(), FakeGenerator()
    pipeline = await pipeline_with(cheap, strong, routing="signals", routing_threshold=2.0)
    events = [
        e async for e in pipeline.ask(AskRequest("SIGTERM?", model="cheap"), Deadline.after(10))
    ]
    a = answer_of(events).answer
    assert a.route is not None and (a.route.policy, a.route.model) == ("requested", "cheap")
    assert strong.requests == []


@pytest.mark.parametrize(("threshold", "chosen"), [(2.0, "strong"), (-1.0, "cheap")])
async def test_signals_send_weakly_matched_questions_to_the_strong_model(
    threshold: float, chosen: str
) -> None:
    cheap, strong = FakeGenerator(), FakeGenerator()
    pipeline = await pipeline_with(cheap, strong, routing="signals", routing_threshold=threshold)
    a = answer_of(await ask(pipeline)).answer
    assert a.model == chosen and a.route is not None
    assert a.route.policy == "signals" and a.route.model == chosen
    assert a.route.score is not None and "best dense score" in a.route.reason
    assert len((strong if chosen == "strong" else cheap).requests) == 1


@pytest.mark.parametrize(
    ("question", "chosen"),
    [("Is SIGTERM drained?", "cheap"), ("Drains SIGTERM in kubernetes?", "strong")],
)
async def test_the_classifier_sends_what_it_scores_high_to_the_strong_model(
    tmp_path: Path, question: str, chosen: str
) -> None:
    # One word decides: "kubernetes" raises the log-odds of needing the strong model by 6.
    model = RouterModel([TfidfBlock("word", (1, 1), False, {"kubernetes": (1.0, 6.0)})], -2.0, 0.5)
    model.save(tmp_path / "router.json")
    cheap, strong = FakeGenerator(), FakeGenerator()
    pipeline = await pipeline_with(
        cheap, strong, routing="classifier", router_model_file=tmp_path / "router.json"
    )
    a = answer_of(await ask(pipeline, question)).answer
    assert a.model == chosen and a.route is not None and a.route.policy == "classifier"
    assert a.route.score == pytest.approx(model.p_strong(question))
    assert "threshold 0.500" in a.route.reason


async def test_a_routed_model_that_is_down_falls_back_to_the_other() -> None:
    cheap = FakeGenerator(tokens=("Drains [1].",))
    strong = FakeGenerator(error=Unavailable("generator at s:1 failed: down"))
    pipeline = await pipeline_with(cheap, strong, routing="signals", routing_threshold=2.0)
    a = answer_of(await ask(pipeline)).answer
    assert a.route is not None and a.route.model == "strong"
    assert a.model == "cheap" and a.text == "Drains [1]."
    assert [x.model for x in a.attempts] == ["strong", "strong", "cheap"]


async def test_the_cascade_keeps_a_good_cheap_answer() -> None:
    cheap = FakeGenerator(tokens=("On SIGTERM it ", "drains in-flight calls [1]."))
    strong = FakeGenerator()
    events = await ask(await pipeline_with(cheap, strong, routing="cascade"))
    a = answer_of(events).answer
    assert a.model == "cheap" and not any(isinstance(e, RestartEvent) for e in events)
    assert a.route is not None and (a.route.policy, a.route.escalated) == ("cascade", False)
    assert strong.requests == []


async def test_the_cascade_escalates_a_declined_answer_and_counts_both_costs() -> None:
    cheap = FakeGenerator(tokens=("The documents do not say.",))
    strong = FakeGenerator(tokens=("It drains in-flight calls ", "[1]."))
    pipeline = await pipeline_with(cheap, strong, routing="cascade", prices=PRICES)
    events = await ask(pipeline)
    [restart] = [e for e in events if isinstance(e, RestartEvent)]
    assert restart.model == "cheap" and restart.reason.startswith("escalated to strong:")
    a = answer_of(events).answer
    assert a.model == "strong" and a.answered and a.restarted
    assert a.text == "It drains in-flight calls [1]."
    assert a.route is not None and a.route.escalated and a.route.reason.startswith("escalated:")
    assert [(x.model, x.outcome) for x in a.attempts] == [
        ("cheap", AttemptOutcome.ESCALATED),
        ("strong", AttemptOutcome.SUCCEEDED),
    ]
    costs = [x.cost_usd for x in a.attempts]
    assert all(c is not None and c > 0 for c in costs)
    assert a.cost_usd == pytest.approx(sum(c for c in costs if c is not None))


async def test_when_the_strong_model_fails_the_cheap_answer_stands() -> None:
    cheap = FakeGenerator(tokens=("The documents do not say.",))
    strong = FakeGenerator(error=Unavailable("generator at s:1 failed: down"))
    events = await ask(await pipeline_with(cheap, strong, routing="cascade"))
    after_restart = events[[isinstance(e, RestartEvent) for e in events].index(True) + 1 :]
    streamed = "".join(getattr(e, "text", "") for e in after_restart[:-1])
    a = answer_of(events).answer
    assert a.model == "cheap" and a.text == "The documents do not say." == streamed
    assert a.route is not None and not a.route.escalated
    assert "no stronger model answered" in a.route.reason
    # The escalation never retries the cheap model: its answer is already in hand.
    assert len(cheap.requests) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"routing": "cascade", "routing_strong_model": "big"}, "'big' is not one of models"),
        ({"routing": "signals"}, "routing signals needs routing_threshold"),
        ({"routing": "classifier"}, "routing classifier needs router_model_file"),
        ({"routing": "cascade", "routing_strong_model": "cheap"}, "must differ"),
    ],
)
def test_routing_settings_that_cannot_work_are_refused(
    overrides: dict[str, object], message: str
) -> None:
    settings = {
        "models": ["cheap", "strong"],
        "routing_cheap_model": "cheap",
        "routing_strong_model": "strong",
    }
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**{**settings, **overrides})  # type: ignore[arg-type]
