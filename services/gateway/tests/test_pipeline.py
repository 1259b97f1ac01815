"""RagPipeline against fake upstreams: the search it sends, citations, degraded paths."""

from __future__ import annotations

import asyncio
import time

import pytest

from ragfleet.domain import InputType, SearchMode, SearchQuery, TokenEvent
from ragfleet.fusion import FusionMethod
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import DeadlineExceeded, InvalidInput, Unavailable
from ragfleet_gateway.domain import (
    AnswerEvent,
    AskEvent,
    AskRequest,
    AttemptOutcome,
    Document,
    RestartEvent,
    RetrievalRequest,
    SourcesEvent,
)
from ragfleet_gateway.fakes import FakeEmbedder, FakeGenerator, FakeRetriever, fake_vector
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

DOCS = [
    Document(
        source="ops.md",
        title="Operations",
        text="# Operations\n\n## Shutdown\n\nOn SIGTERM the service drains in-flight calls "
        "for the grace period, then stops.\n\n## Health\n\nHealth reports SERVING once the "
        "models are loaded.",
    ),
    Document(
        source="intro.txt",
        title="Intro",
        text="ragfleet answers questions from documents with citations.",
    ),
]


def make(
    embedder: FakeEmbedder | None = None,
    retriever: FakeRetriever | None = None,
    generator: FakeGenerator | None = None,
    **overrides: object,
) -> tuple[RagPipeline, FakeEmbedder, FakeRetriever, FakeGenerator]:
    e, r, g = embedder or FakeEmbedder(), retriever or FakeRetriever(), generator or FakeGenerator()
    settings = GatewaySettings(**overrides)  # type: ignore[arg-type]
    return RagPipeline(settings, e, r, g), e, r, g


async def indexed(
    **overrides: object,
) -> tuple[RagPipeline, FakeEmbedder, FakeRetriever, FakeGenerator]:
    pipeline, e, r, g = make(**overrides)
    await pipeline.ingest(DOCS, "", Deadline.after(10))
    e.calls.clear()
    return pipeline, e, r, g


async def collect(
    pipeline: RagPipeline, request: AskRequest, timeout_s: float = 10
) -> list[AskEvent]:
    return [event async for event in pipeline.ask(request, Deadline.after(timeout_s))]


# --- retrieve --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["rrf", "weighted"])
async def test_hybrid_retrieval_is_one_search_the_retriever_fuses(method: str) -> None:
    pipeline, embedder, retriever, _ = await indexed()
    retriever.searches.clear()
    query = "what happens on SIGTERM shutdown"
    request = RetrievalRequest(top_k=3, fusion=method, dense_weight=0.3, rrf_k=7)
    result = await pipeline.retrieve(query, request, Deadline.after(5))
    assert embedder.calls == [([query], InputType.QUERY)]
    [(sent, _)] = retriever.searches
    assert sent == SearchQuery(
        query=query,
        vector=fake_vector(query),
        mode=SearchMode.HYBRID,
        top_k=3,
        fusion=FusionMethod(method),
        rrf_k=7,
        dense_weight=0.3,
    )
    direct = await retriever.search(sent, Deadline.after(5))
    assert result.hits == direct.hits and len(result.hits) == 3
    assert result.best_dense_score == direct.best_dense_score is not None
    assert result.hits[0].chunk.section == "Operations > Shutdown"
    assert not result.degraded
    assert [t.stage for t in result.timings] == ["embed", "search", "total"]


async def test_fusion_left_unset_is_the_retrievers_default() -> None:
    pipeline, _, retriever, _ = await indexed()
    retriever.searches.clear()
    await pipeline.retrieve("SIGTERM", RetrievalRequest(), Deadline.after(5))
    [(sent, _)] = retriever.searches
    assert (sent.fusion, sent.rrf_k, sent.dense_weight, sent.candidate_k) == (None,) * 4


async def test_lexical_mode_never_embeds() -> None:
    pipeline, embedder, retriever, _ = await indexed()
    retriever.searches.clear()
    result = await pipeline.retrieve("SIGTERM", RetrievalRequest(mode="lexical"), Deadline.after(5))
    assert embedder.calls == []
    assert [s.mode for s, _ in retriever.searches] == [SearchMode.LEXICAL]
    assert result.hits and all(h.dense_rank == 0 for h in result.hits)
    assert result.best_dense_score is None


async def test_dense_mode_searches_dense_only() -> None:
    pipeline, embedder, retriever, _ = await indexed()
    retriever.searches.clear()
    await pipeline.retrieve("SIGTERM", RetrievalRequest(mode="dense"), Deadline.after(5))
    assert embedder.calls == [(["SIGTERM"], InputType.QUERY)]
    assert [s.mode for s, _ in retriever.searches] == [SearchMode.DENSE]


async def test_embedder_down_degrades_to_lexical_only() -> None:
    pipeline, embedder, _, _ = await indexed()
    embedder.error = Unavailable("embedder at 127.0.0.1:50051 failed (UNAVAILABLE): down")
    result = await pipeline.retrieve("SIGTERM", RetrievalRequest(), Deadline.after(5))
    assert result.hits and all(h.dense_rank == 0 and h.lexical_rank > 0 for h in result.hits)
    assert result.degraded
    assert "embedder at 127.0.0.1:50051" in result.degraded_reasons[0]


async def test_a_hung_embedder_leaves_time_for_a_lexical_search() -> None:
    pipeline, embedder, retriever, _ = await indexed(embed_timeout_s=0.2)
    embedder.delay_s = 30
    retriever.searches.clear()
    start = time.perf_counter()
    result = await pipeline.retrieve("SIGTERM", RetrievalRequest(), Deadline.after(5))
    assert 0.15 < time.perf_counter() - start < 1.0
    assert [s.mode for s, _ in retriever.searches] == [SearchMode.LEXICAL]
    assert result.hits and "lexical results only" in result.degraded_reasons[0]


async def test_embedder_down_in_dense_mode_falls_back_to_lexical() -> None:
    pipeline, embedder, _, _ = await indexed()
    embedder.error = DeadlineExceeded("embedder did not answer within the deadline")
    result = await pipeline.retrieve("SIGTERM", RetrievalRequest(mode="dense"), Deadline.after(5))
    assert result.hits and result.degraded


async def test_retriever_down_fails_the_request() -> None:
    pipeline, _, retriever, _ = await indexed()
    retriever.error = Unavailable("retriever at 127.0.0.1:50052 failed (UNAVAILABLE): down")
    with pytest.raises(Unavailable, match="retriever at"):
        await pipeline.retrieve("SIGTERM", RetrievalRequest(), Deadline.after(5))


async def test_client_errors_from_upstreams_are_not_degraded_away() -> None:
    pipeline, embedder, _, _ = await indexed()
    embedder.error = InvalidInput("texts[0] is too long")
    with pytest.raises(InvalidInput):
        await pipeline.retrieve("SIGTERM", RetrievalRequest(), Deadline.after(5))


# --- ask -------------------------------------------------------------------------------
async def test_ask_streams_sources_tokens_then_a_cited_answer() -> None:
    generator = FakeGenerator(tokens=("It drains ", "in-flight calls [1]", " and stops [1][9]."))
    pipeline, _, _, _ = make(generator=generator)
    await pipeline.ingest(DOCS, "", Deadline.after(10))
    events = await collect(pipeline, AskRequest("What happens on SIGTERM?", model="m1"))
    assert isinstance(events[0], SourcesEvent)
    sources = events[0].sources
    assert [s.number for s in sources] == list(range(1, len(sources) + 1))
    assert [e.text for e in events[1:-1] if isinstance(e, TokenEvent)] == list(generator.tokens)
    answer = events[-1]
    assert isinstance(answer, AnswerEvent)
    a = answer.answer
    assert a.text == "".join(generator.tokens)
    assert [c.number for c in a.citations] == [1]  # [9] does not exist
    assert a.citations[0].chunk_id == sources[0].hit.chunk.id
    assert a.citations[0].section == sources[0].hit.chunk.section
    assert a.model == "m1" and a.usage.completion_tokens == 3
    assert not a.degraded
    stages = {t.stage for t in a.timings}
    assert {"embed", "search", "generate", "total"} <= stages
    system, user = (m.content for m in generator.requests[0].messages)
    assert "[1] " in user and "What happens on SIGTERM?" in user
    assert "square brackets" in system
    assert generator.requests[0].temperature == 0.0


async def test_uncited_answer_cites_nothing() -> None:
    pipeline, _, _, _ = await indexed(
        generator=FakeGenerator(tokens=("The documents do not say.",))
    )
    events = await collect(pipeline, AskRequest("What is the capital of France?"))
    answer = events[-1]
    assert isinstance(answer, AnswerEvent)
    assert answer.answer.citations == []


async def test_nothing_retrieved_answers_without_the_model() -> None:
    pipeline, _, _, generator = make()
    events = await collect(
        pipeline, AskRequest("anything", retrieval=RetrievalRequest(mode="lexical"))
    )
    assert isinstance(events[0], SourcesEvent) and events[0].sources == []
    answer = events[-1]
    assert isinstance(answer, AnswerEvent)
    assert answer.answer.text == "The documents do not say."
    assert generator.requests == []


async def test_generator_down_gives_a_retrieval_only_answer() -> None:
    generator = FakeGenerator(error=Unavailable("generator at 127.0.0.1:50053 failed: down"))
    pipeline, _, _, _ = make(generator=generator)
    await pipeline.ingest(DOCS, "", Deadline.after(10))
    events = await collect(pipeline, AskRequest("What happens on SIGTERM?"))
    assert not any(isinstance(e, TokenEvent) for e in events)
    answer = events[-1]
    assert isinstance(answer, AnswerEvent)
    a = answer.answer
    assert a.degraded and "generator at 127.0.0.1:50053" in a.degraded_reasons[0]
    assert "SIGTERM" in a.text and "[1]" in a.text
    sources = events[0]
    assert isinstance(sources, SourcesEvent)
    assert [c.chunk_id for c in a.citations] == [s.hit.chunk.id for s in sources.sources]


async def test_silent_generator_falls_back_within_the_first_token_timeout() -> None:
    pipeline, _, _, _ = await indexed(
        generator=FakeGenerator(delay_s=30), first_token_timeout_s=0.3
    )
    start = time.perf_counter()
    events = await collect(pipeline, AskRequest("SIGTERM"))
    assert time.perf_counter() - start < 2
    answer = events[-1]
    assert isinstance(answer, AnswerEvent) and answer.answer.degraded
    assert "no token within" in answer.answer.degraded_reasons[0]


async def test_deadline_leaves_room_for_the_fallback_answer() -> None:
    pipeline, _, _, _ = await indexed(generator=FakeGenerator(delay_s=30))
    start = time.perf_counter()
    events = await asyncio.wait_for(collect(pipeline, AskRequest("SIGTERM"), timeout_s=0.8), 2)
    assert time.perf_counter() - start < 0.8
    answer = events[-1]
    assert isinstance(answer, AnswerEvent) and answer.answer.degraded


async def test_generator_failure_after_tokens_restarts_into_a_retrieval_only_answer() -> None:
    generator = FakeGenerator(error=Unavailable("generator died"), fail_after=1)
    pipeline, _, _, _ = await indexed(generator=generator)
    events = await collect(pipeline, AskRequest("SIGTERM"))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SourcesEvent", "TokenEvent", "RestartEvent", "AnswerEvent"]
    restart, answer = events[2], events[-1]
    assert isinstance(restart, RestartEvent) and "generator died" in restart.reason
    assert isinstance(answer, AnswerEvent)
    a = answer.answer
    assert a.restarted and a.degraded and not a.answered
    assert a.text.startswith("No generated answer") and "The answer" not in a.text
    assert [(x.outcome, x.discarded_chars) for x in a.attempts] == [
        (AttemptOutcome.FAILED, len("The answer "))
    ]


async def test_embedder_down_still_answers_and_marks_degraded() -> None:
    pipeline, embedder, _, _ = await indexed()
    embedder.error = Unavailable("embedder at x failed")
    events = await collect(pipeline, AskRequest("SIGTERM"))
    answer = events[-1]
    assert isinstance(answer, AnswerEvent)
    assert answer.answer.degraded and answer.answer.text == "The answer is here [1]."


# --- validation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (AskRequest(""), "question must not be empty"),
        (AskRequest("   \n"), "question must not be empty"),
        (AskRequest("x" * 2001), "limit is 2000"),
        (AskRequest("q", retrieval=RetrievalRequest(top_k=-1)), "retrieval.top_k"),
        (AskRequest("q", retrieval=RetrievalRequest(top_k=51)), "between 1 and 50"),
        (AskRequest("q", retrieval=RetrievalRequest(mode="fuzzy")), "retrieval.mode"),
        (AskRequest("q", retrieval=RetrievalRequest(fusion="max")), "retrieval.fusion"),
        (AskRequest("q", retrieval=RetrievalRequest(dense_weight=1.5)), "dense_weight"),
        (AskRequest("q", retrieval=RetrievalRequest(dense_weight=-0.1)), "dense_weight"),
        (AskRequest("q", retrieval=RetrievalRequest(rrf_k=-3)), "rrf_k"),
        (AskRequest("q", max_tokens=0), "max_tokens"),
        (AskRequest("q", max_tokens=5000), "max_tokens must be between 1 and 2048"),
        (AskRequest("q", temperature=3.0), "temperature"),
    ],
)
def test_ask_rejects_bad_input_before_streaming(request_: AskRequest, field: str) -> None:
    pipeline, _, _, _ = make()
    with pytest.raises(InvalidInput, match=field.replace("[", r"\[").replace(".", r"\.")):
        pipeline.ask(request_, Deadline.after(5))


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ([], "documents must not be empty"),
        ([Document(source="", text="x")], r"documents\[0\]\.source"),
        ([Document(source="a", text="  ")], r"documents\[0\]\.text"),
        ([Document(source="a", text="x"), Document(source="a", text="y")], "repeats"),
        ([Document(source="a", text="x", content_type="application/pdf")], "content_type"),
        ([Document(source=str(i), text="x") for i in range(257)], "limit is 256"),
        ([Document(source="a", text="x" * 2000)], "limit is 1000"),
    ],
)
async def test_ingest_rejects_bad_documents(documents: list[Document], message: str) -> None:
    pipeline, _, retriever, _ = make(max_ingest_bytes=1000)
    with pytest.raises(InvalidInput, match=message):
        await pipeline.ingest(documents, "", Deadline.after(5))
    assert retriever.chunks == {}


# --- ingest ----------------------------------------------------------------------------
async def test_ingest_embeds_in_batches_and_replaces_a_source() -> None:
    pipeline, embedder, retriever, _ = make(
        embed_batch_size=2, chunk_size_chars=100, chunk_overlap_chars=0
    )
    first = await pipeline.ingest(DOCS, "acme", Deadline.after(10))
    assert first.documents == 2 and first.chunks == len(retriever.chunks) and first.replaced == 0
    assert all(len(texts) <= 2 and kind is InputType.PASSAGE for texts, kind in embedder.calls)
    assert all(c.tenant == "acme" and len(c.vector) > 0 for c in retriever.chunks.values())
    changed = Document(source="intro.txt", title="Intro", text="ragfleet is new.")
    again = await pipeline.ingest([changed], "acme", Deadline.after(10))
    assert (again.chunks, again.replaced, again.removed_chunks) == (1, 1, 1)
    intro = [c for c in retriever.chunks.values() if c.source == "intro.txt"]
    assert [c.text for c in intro] == ["ragfleet is new."]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [({"a.b": "x"}, "not a metadata key"), ({"k": "v" * 2049}, "at most 2048 characters")],
)
async def test_reingesting_with_metadata_no_index_can_hold_changes_nothing(
    metadata: dict[str, str], message: str
) -> None:
    """The metadata rule is checked before the source's old chunks are deleted."""
    pipeline, _, retriever, _ = make()
    await pipeline.ingest(DOCS, "", Deadline.after(10))
    before = dict(retriever.chunks)
    bad = Document(source="intro.txt", title="Intro", text="new text", metadata=metadata)
    with pytest.raises(InvalidInput, match=rf"documents\[0\]\.metadata\[.*{message}"):
        await pipeline.ingest([bad], "", Deadline.after(10))
    assert retriever.chunks == before


async def test_ingest_leaves_the_index_alone_when_embedding_fails() -> None:
    pipeline, embedder, retriever, _ = make()
    await pipeline.ingest(DOCS, "", Deadline.after(10))
    before = dict(retriever.chunks)
    embedder.error = Unavailable("embedder down")
    with pytest.raises(Unavailable):
        await pipeline.ingest(DOCS, "", Deadline.after(10))
    assert retriever.chunks == before
