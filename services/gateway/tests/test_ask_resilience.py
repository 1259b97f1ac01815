"""RagPipeline.ask over the fallback chain: model choice, refusals, the deadline split."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import pytest

from ragfleet.domain import InputType, TokenEvent
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import NotFound, Unavailable
from ragfleet_gateway.auth import Authenticator
from ragfleet_gateway.domain import (
    AnswerEvent,
    AskEvent,
    AskRequest,
    AttemptOutcome,
    Document,
    RetrievalRequest,
    SourcesEvent,
)
from ragfleet_gateway.fakes import FakeEmbedder, FakeGenerator, FakeRetriever
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.rest import create_app
from ragfleet_gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

DOC = Document(source="ops.md", text="On SIGTERM the service drains in-flight calls.")


@dataclass
class RecordingEmbedder(FakeEmbedder):
    """Remembers how much time each embed call was given."""

    budgets: list[float] | None = None

    async def embed(
        self, texts: Sequence[str], input_type: InputType, deadline: Deadline
    ) -> list[tuple[float, ...]]:
        if input_type is InputType.QUERY:
            (self.budgets if self.budgets is not None else []).append(deadline.remaining())
        return await super().embed(texts, input_type, deadline)


async def pipeline_with(
    generators: dict[str, FakeGenerator], default: FakeGenerator | None = None, **overrides: object
) -> RagPipeline:
    settings = GatewaySettings(models=list(generators), **overrides)  # type: ignore[arg-type]
    pipeline = RagPipeline(
        settings,
        FakeEmbedder(),
        FakeRetriever(),
        default or FakeGenerator(),
        model_generators=generators,
    )
    await pipeline.ingest([DOC], "", Deadline.after(10))
    return pipeline


async def collect(pipeline: RagPipeline, request: AskRequest) -> list[AskEvent]:
    return [e async for e in pipeline.ask(request, Deadline.after(10))]


def answer_of(events: list[AskEvent]) -> AnswerEvent:
    last = events[-1]
    assert isinstance(last, AnswerEvent)
    return last


async def test_the_next_model_answers_and_the_answer_says_what_failed() -> None:
    primary = FakeGenerator(error=Unavailable("generator at a:1 failed: down"))
    backup = FakeGenerator(tokens=("Drains [1].",))
    pipeline = await pipeline_with({"small": primary, "big": backup}, generation_retry_base_s=0.01)
    a = answer_of(await collect(pipeline, AskRequest("SIGTERM?"))).answer
    assert a.text == "Drains [1]." and a.model == "big" and a.answered
    assert [c.source for c in a.citations] == ["ops.md"]
    assert [(x.model, x.outcome) for x in a.attempts] == [
        ("small", AttemptOutcome.FAILED),
        ("small", AttemptOutcome.FAILED),
        ("big", AttemptOutcome.SUCCEEDED),
    ]
    assert a.degraded and "answered by fallback model big" in a.degraded_reasons[0]
    assert [p.model for p in backup.requests] == ["big"]


async def test_a_named_model_starts_the_chain_and_an_unknown_one_is_not_found() -> None:
    small, big = FakeGenerator(), FakeGenerator()
    pipeline = await pipeline_with({"small": small, "big": big})
    a = answer_of(await collect(pipeline, AskRequest("SIGTERM?", model="big"))).answer
    assert a.model == "big" and small.requests == []
    with pytest.raises(NotFound, match="'nope' is not configured; the models are small, big"):
        pipeline.ask(AskRequest("SIGTERM?", model="nope"), Deadline.after(5))


@pytest.mark.parametrize(
    "reply",
    ["The documents do not say.", "the documents do not say [1]", "The documents do not say"],
)
async def test_a_declining_model_answers_false_without_citations(reply: str) -> None:
    pipeline = await pipeline_with({"m": FakeGenerator(tokens=(reply,))})
    a = answer_of(await collect(pipeline, AskRequest("SIGTERM?"))).answer
    assert not a.answered and a.citations == [] and not a.degraded


@pytest.mark.parametrize(
    ("mode", "asked"), [("hybrid", False), ("dense", False), ("lexical", True)]
)
async def test_a_dense_score_below_the_threshold_declines_without_asking_the_model(
    mode: str, asked: bool
) -> None:
    generator = FakeGenerator()
    pipeline = await pipeline_with({"m": generator}, min_dense_score=1.01)
    events = await collect(pipeline, AskRequest("SIGTERM?", retrieval=RetrievalRequest(mode=mode)))
    assert isinstance(events[0], SourcesEvent) and events[0].sources
    a = answer_of(events).answer
    # Lexical search alone has no absolute score to judge by: the model is asked.
    assert bool(generator.requests) is asked and a.answered is asked
    if not asked:
        assert [e.text for e in events if isinstance(e, TokenEvent)] == [
            "The documents do not say."
        ]
        assert a.citations == []


async def test_retrieval_gets_a_capped_share_of_the_deadline() -> None:
    budgets: list[float] = []
    settings = GatewaySettings(retrieval_budget_share=0.25, retrieval_budget_max_s=1.0)
    pipeline = RagPipeline(
        settings, RecordingEmbedder(budgets=budgets), FakeRetriever(), FakeGenerator()
    )
    await pipeline.ingest([DOC], "", Deadline.after(10))
    # Retrieval gets 0.5 s of a 2 s deadline and 1 s (the cap) of 60 s; the query embedding
    # at most half of that, so a hung embedder still leaves time for the search.
    for timeout, expected in [(2.0, 0.25), (60.0, 0.5)]:
        [e async for e in pipeline.ask(AskRequest("SIGTERM?"), Deadline.after(timeout))]
        assert expected - 0.05 < budgets[-1] <= expected


async def test_a_hung_model_leaves_time_for_the_next_within_the_deadline() -> None:
    pipeline = await pipeline_with(
        {"slow": FakeGenerator(delay_s=30), "fast": FakeGenerator(tokens=("Fast [1].",))},
        first_token_timeout_s=0.3,
    )
    start = time.perf_counter()
    events = [e async for e in pipeline.ask(AskRequest("SIGTERM?"), Deadline.after(3))]
    assert time.perf_counter() - start < 1.5
    a = answer_of(events).answer
    assert a.text == "Fast [1]." and a.attempts[0].reason.startswith("timeout: no token within")


async def test_rest_streams_a_restart_event_and_reports_unknown_models_as_404() -> None:
    primary = FakeGenerator(tokens=("Half ", "done"), error=Unavailable("died"), fail_after=1)
    pipeline = await pipeline_with({"a": primary, "b": FakeGenerator(tokens=("Whole [1].",))})

    async def healthy() -> dict[str, str | None]:
        return {}

    app = create_app(pipeline, healthy, authenticator=Authenticator(None))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        response = await client.post("/v1/ask", json={"question": "SIGTERM?", "stream": True})
        assert response.status_code == 200
        events = [
            (block.split("\n")[0].removeprefix("event: "), block.split("\n")[1][6:])
            for block in response.text.strip().split("\n\n")
        ]
        assert [name for name, _ in events] == ["sources", "token", "restart", "token", "answer"]
        assert json.loads(events[2][1]) == {"model": "a", "reason": "died"}
        answer = json.loads(events[-1][1])
        assert answer["text"] == "Whole [1]." and answer["restarted"] and answer["answered"]
        assert [(a["model"], a["outcome"]) for a in answer["attempts"]] == [
            ("a", "failed"),
            ("b", "succeeded"),
        ]
        response = await client.post("/v1/ask", json={"question": "SIGTERM?", "model": "zz"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
        assert "the models are a, b" in response.json()["error"]["message"]
