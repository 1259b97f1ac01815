"""The gateway's rerank stage: reorders the best fused hits by the reranker's scores, cuts to
top_k, records its timing, and degrades (search order kept) instead of failing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from ragfleet.gateway.v1 import gateway_pb2
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import InvalidInput, RagfleetError, Unavailable
from ragfleet_gateway.auth import OPEN
from ragfleet_gateway.domain import Document, RetrievalRequest
from ragfleet_gateway.fakes import FakeEmbedder, FakeGenerator, FakeRetriever
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.rest_schemas import RetrievalOptions as RestRetrievalOptions
from ragfleet_gateway.servicer import retrieval_request
from ragfleet_gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

QUERY = "ocean tide moon"
# Six one-chunk documents; the lexical and dense fakes rank them by shared words.
DOCS = [
    Document(source=f"doc{i}.txt", title=f"Doc {i}", text=text)
    for i, text in enumerate(
        [
            "ocean tide moon ocean tide moon",
            "ocean tide moon and more words",
            "ocean tide plus filler",
            "ocean waves only",
            "moon landing history",
            "the moon pulls the ocean to make the tide: the answer",
        ]
    )
]


@dataclass
class FakeReranker:
    """Scores a passage 1.0 when it holds ``favourite``, else 0.0; records every call."""

    favourite: str = "answer"
    error: RagfleetError | None = None
    delay_s: float = 0.0
    calls: list[tuple[str, list[str]]] = field(default_factory=list)

    async def rerank(self, query: str, passages: Sequence[str], deadline: Deadline) -> list[float]:
        self.calls.append((query, list(passages)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return [1.0 if self.favourite in p else 0.0 for p in passages]


async def pipeline_with(reranker: FakeReranker | None, **overrides: object) -> RagPipeline:
    settings = GatewaySettings(**{"chunk_size_chars": 400, **overrides})  # type: ignore[arg-type]
    pipeline = RagPipeline(
        settings, FakeEmbedder(), FakeRetriever(), FakeGenerator(), reranker=reranker
    )
    await pipeline.ingest(DOCS, "", Deadline.after(10))
    return pipeline


def sources(result_hits: Sequence[object]) -> list[str]:
    return [h.chunk.source for h in result_hits]  # type: ignore[attr-defined]


async def test_rerank_moves_the_best_scored_candidate_first_and_cuts_to_top_k() -> None:
    reranker = FakeReranker()
    pipeline = await pipeline_with(reranker)
    fused = await pipeline.retrieve(QUERY, RetrievalRequest(top_k=6), Deadline.after(5))
    assert sources(fused.hits)[0] != "doc5.txt"
    result = await pipeline.retrieve(
        QUERY, RetrievalRequest(top_k=2, rerank=True, rerank_depth=6), Deadline.after(5)
    )
    assert sources(result.hits) == ["doc5.txt", sources(fused.hits)[0]]
    assert not result.degraded
    assert "rerank" in [t.stage for t in result.timings]
    # The reranker saw the six fused candidates in fused order, titles included.
    query, passages = reranker.calls[0]
    assert query == QUERY
    assert [p.split("\n")[0] for p in passages] == [f"Doc {s[3]}" for s in sources(fused.hits)]
    # Hits keep their fused scores.
    fused_scores = {h.chunk.id: h.score for h in fused.hits}
    assert all(h.score == fused_scores[h.chunk.id] for h in result.hits)


async def test_only_the_top_depth_candidates_are_rescored() -> None:
    reranker = FakeReranker()
    pipeline = await pipeline_with(reranker)
    result = await pipeline.retrieve(
        QUERY, RetrievalRequest(top_k=3, rerank=True, rerank_depth=3), Deadline.after(5)
    )
    assert len(reranker.calls[0][1]) == 3
    assert len(result.hits) == 3


async def test_depth_below_top_k_is_raised_to_top_k() -> None:
    reranker = FakeReranker()
    pipeline = await pipeline_with(reranker)
    await pipeline.retrieve(
        QUERY, RetrievalRequest(top_k=5, rerank=True, rerank_depth=1), Deadline.after(5)
    )
    assert len(reranker.calls[0][1]) == 5


@pytest.mark.parametrize(
    ("default", "requested", "reranked"),
    [(False, None, False), (True, None, True), (True, False, False), (False, True, True)],
)
async def test_the_request_flag_overrides_the_setting(
    default: bool, requested: bool | None, reranked: bool
) -> None:
    reranker = FakeReranker()
    pipeline = await pipeline_with(reranker, rerank=default)
    result = await pipeline.retrieve(
        QUERY, RetrievalRequest(top_k=3, rerank=requested), Deadline.after(5)
    )
    assert bool(reranker.calls) is reranked
    assert ("rerank" in [t.stage for t in result.timings]) is reranked


@pytest.mark.parametrize(
    ("reranker", "reason"),
    [
        (
            FakeReranker(error=Unavailable("embedder at x failed (FAILED_PRECONDITION): no")),
            "reranking failed, search order kept: embedder at x failed",
        ),
        (FakeReranker(delay_s=1.0), "reranking took over 0.05 s, search order kept"),
        (None, "reranking skipped, search order kept: no reranker is configured"),
    ],
)
async def test_a_failing_reranker_keeps_the_fused_order_and_marks_it_degraded(
    reranker: FakeReranker | None, reason: str
) -> None:
    pipeline = await pipeline_with(reranker, rerank_timeout_s=0.05)
    fused = await pipeline.retrieve(QUERY, RetrievalRequest(top_k=3), Deadline.after(5))
    result = await pipeline.retrieve(
        QUERY, RetrievalRequest(top_k=3, rerank=True), Deadline.after(5)
    )
    assert sources(result.hits) == sources(fused.hits)
    assert result.degraded
    assert any(r.startswith(reason) for r in result.degraded_reasons), result.degraded_reasons


@pytest.mark.parametrize("depth", [0, -1, 101])
async def test_a_rerank_depth_out_of_range_is_invalid(depth: int) -> None:
    pipeline = await pipeline_with(FakeReranker())
    with pytest.raises(InvalidInput, match=r"retrieval.rerank_depth must be between 1 and 100"):
        await pipeline.retrieve(
            QUERY, RetrievalRequest(rerank=True, rerank_depth=depth), Deadline.after(5)
        )


def test_a_default_depth_above_its_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="rerank_depth must not exceed max_rerank_depth"):
        GatewaySettings(rerank_depth=30, max_rerank_depth=20)


def test_grpc_and_rest_options_carry_rerank_unset_or_set() -> None:
    unset = retrieval_request(gateway_pb2.RetrievalOptions(), OPEN)
    assert (unset.rerank, unset.rerank_depth) == (None, None)
    chosen = retrieval_request(gateway_pb2.RetrievalOptions(rerank=False, rerank_depth=7), OPEN)
    assert (chosen.rerank, chosen.rerank_depth) == (False, 7)
    rest = RestRetrievalOptions(rerank=True, rerank_depth=30).to_domain(OPEN)
    assert (rest.rerank, rest.rerank_depth) == (True, 30)
