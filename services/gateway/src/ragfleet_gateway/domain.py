"""The gateway's domain types: what the pipeline takes and returns, free of gRPC and HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from ragfleet.chunking import Document as Document
from ragfleet.domain import ChatMessage, Hit, SearchMode, TokenEvent, Usage
from ragfleet.fusion import FusionMethod


@dataclass(frozen=True)
class RetrievalRequest:
    """Retrieval options as a caller sent them; ``None`` means the gateway's default.

    Mode and fusion arrive as strings so that every front end reports unknown values alike.
    """

    top_k: int | None = None
    mode: str | None = None
    fusion: str | None = None
    rrf_k: int | None = None
    dense_weight: float | None = None
    tenant: str = ""
    equals: Mapping[str, str] = field(default_factory=dict)
    rerank: bool | None = None
    rerank_depth: int | None = None


@dataclass(frozen=True)
class RetrievalOptions:
    """Validated retrieval options with the gateway's defaults filled in; fusion options left
    None are the retriever's defaults (it owns hybrid search and validates them)."""

    top_k: int
    mode: SearchMode
    fusion: FusionMethod | None = None
    rrf_k: int | None = None
    dense_weight: float | None = None
    tenant: str = ""
    equals: Mapping[str, str] = field(default_factory=dict)
    rerank_depth: int = 0
    """Best hits rescored by the reranker before the cut to ``top_k``; 0: no rerank."""


@dataclass(frozen=True)
class StageTiming:
    stage: str
    ms: float


@dataclass(frozen=True)
class RetrievalResult:
    """``best_dense_score`` is the dense search's highest cosine similarity (None when no dense
    search ran): an absolute measure of whether anything relevant was found, which fused and
    BM25 scores are not."""

    hits: list[Hit]
    timings: list[StageTiming]
    degraded_reasons: list[str] = field(default_factory=list)
    best_dense_score: float | None = None

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reasons)


@dataclass(frozen=True)
class Source:
    """A hit shown to the model as ``[number]``."""

    number: int
    hit: Hit


@dataclass(frozen=True)
class Citation:
    number: int
    chunk_id: str
    source: str
    title: str
    section: str


class AttemptOutcome(StrEnum):
    """How one try of one model in the fallback chain ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    ESCALATED = "escalated"
    """It answered, but the router's cascade check found the answer wanting and asked the next
    model (its text was discarded)."""


@dataclass(frozen=True)
class ModelAttempt:
    """One try of one model: ``reason`` says why it failed or was skipped (empty on success);
    ``discarded_chars`` counts the text it had streamed before it failed. The tokens are the
    generator's usage on success; a failed try's prompt tokens are not reported (the generator
    reports usage in its last message only), so it counts the token deltas it streamed.
    ``cost_usd`` prices them by the gateway's price table (None without one)."""

    model: str
    outcome: AttemptOutcome
    reason: str = ""
    discarded_chars: int = 0
    ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass(frozen=True)
class Route:
    """Which model the router chose first, and why. ``policy``: none (no router), requested
    (the request named the model), classifier, signals or cascade; ``score`` is the policy's
    number (the classifier's probability of needing the strong model, the signal's value);
    ``escalated`` is True when the cascade moved from the cheap model to the strong one."""

    policy: str
    model: str
    reason: str = ""
    score: float | None = None
    escalated: bool = False


@dataclass(frozen=True)
class Answer:
    """``answered`` is False when the documents do not answer the question (nothing relevant
    retrieved, or the model declined: no citations) and for a retrieval-only answer
    (degraded; its citations are the passages it lists). ``restarted`` is True when a model
    failed after streaming text that the client was told to discard (a ``RestartEvent``).
    ``history_trimmed`` counts the earlier messages left out of the prompt (the oldest first)
    to fit the history budget; ``finish_reason`` is the answering model's ("" when no model
    answered). ``cost_usd`` is the sum of the attempts' costs (0 when no model was asked; None
    without a price table). ``answer_id`` names the answer in a later feedback call (empty when
    the gateway records no answers)."""

    text: str
    citations: list[Citation]
    model: str
    usage: Usage
    timings: list[StageTiming]
    degraded_reasons: list[str] = field(default_factory=list)
    answered: bool = True
    attempts: list[ModelAttempt] = field(default_factory=list)
    restarted: bool = False
    history_trimmed: int = 0
    finish_reason: str = ""
    cost_usd: float | None = None
    answer_id: str = ""
    route: Route | None = None

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reasons)


class RewriteMethod(StrEnum):
    """How a follow-up question was made standalone for retrieval."""

    MODEL = "model"
    RULE = "rule"
    NONE = "none"


@dataclass(frozen=True)
class QueryRewrite:
    """The question retrieval searched for; ``reason`` says why the model did not rewrite it
    (empty when it did)."""

    query: str
    method: RewriteMethod
    reason: str = ""


@dataclass(frozen=True)
class RewriteEvent:
    """Sent before the sources when the request carried a history."""

    rewrite: QueryRewrite


@dataclass(frozen=True)
class SourcesEvent:
    sources: list[Source]


@dataclass(frozen=True)
class RestartEvent:
    """``model`` failed after streaming tokens: the client discards every token received so
    far; the tokens that follow are a new answer from the next model (or none, when the
    retrieval-only answer follows)."""

    model: str
    reason: str


@dataclass(frozen=True)
class AnswerEvent:
    answer: Answer


AskEvent = RewriteEvent | SourcesEvent | TokenEvent | RestartEvent | AnswerEvent


@dataclass(frozen=True)
class AskResult:
    """An ask's events gathered: the rewrite (with a history), the sources and the answer."""

    rewrite: QueryRewrite | None
    sources: list[Source]
    answer: Answer


@dataclass(frozen=True)
class AskRequest:
    """``history``: the conversation's earlier messages, oldest first (user and assistant)."""

    question: str
    retrieval: RetrievalRequest = field(default_factory=RetrievalRequest)
    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    history: tuple[ChatMessage, ...] = ()


@dataclass(frozen=True)
class FeedbackRequest:
    """A rating (1-5) of the answer ``answer_id``, with an optional comment and correction."""

    answer_id: str
    rating: int
    comment: str = ""
    correction: str = ""


@dataclass(frozen=True)
class IngestResult:
    """``replaced`` counts documents whose source already had chunks (now replaced);
    ``removed_chunks`` counts the old chunks deleted for them."""

    documents: int
    chunks: int
    replaced: int
    removed_chunks: int
