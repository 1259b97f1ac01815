"""``RagPipeline``: the gateway's core, shared by the gRPC servicer and the REST bridge.

It knows the upstreams only through the three small protocols below (the gRPC clients in
``ragfleet_gateway.clients`` implement them; tests pass fakes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping, Sequence
from typing import Protocol, TypeVar

from ragfleet.chunking import ChunkingStrategy, DocumentChunker, load_embedder_tokenizer
from ragfleet.fusion import fuse
from ragfleet.runtime.clients import Deadline
from ragfleet.runtime.errors import DeadlineExceeded, RagfleetError, Unavailable
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway.breaker import CircuitBreaker
from ragfleet_gateway.domain import (
    Answer,
    AnswerEvent,
    AskEvent,
    AskRequest,
    AttemptOutcome,
    Chunk,
    Document,
    GenerationParams,
    Hit,
    IngestResult,
    InputType,
    RetrievalOptions,
    RetrievalRequest,
    RetrievalResult,
    SearchMode,
    Source,
    SourcesEvent,
    StageTiming,
    TokenEvent,
    Usage,
)
from ragfleet_gateway.fallback import (
    Backoff,
    ChainLink,
    ChainResult,
    ChainTimeouts,
    FallbackChain,
    Generator,
    build_chain,
)
from ragfleet_gateway.prompt import (
    PromptBuilder,
    attribute_citations,
    is_refusal,
    resolve_citations,
    retrieval_only_text,
)
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.validation import (
    check_ask,
    check_documents,
    check_question,
    check_text,
    resolve_retrieval,
)

log = get_logger(__name__)

_T = TypeVar("_T")

# Failures that degrade a request instead of failing it: the upstream is down or too slow.
# Client mistakes (InvalidInput, NotFound) still fail the request.
_DEGRADABLE = (Unavailable, DeadlineExceeded)
_EMBED_CONCURRENCY = 4


class Embedder(Protocol):
    async def embed(
        self, texts: Sequence[str], input_type: InputType, deadline: Deadline
    ) -> list[tuple[float, ...]]: ...


class Retriever(Protocol):
    async def search(
        self,
        mode: SearchMode,
        top_k: int,
        deadline: Deadline,
        *,
        query: str = "",
        vector: Sequence[float] = (),
        tenant: str = "",
        equals: Mapping[str, str] | None = None,
    ) -> list[Hit]: ...

    async def upsert(self, chunks: Sequence[Chunk], deadline: Deadline) -> int: ...

    async def delete_source(self, tenant: str, source: str, deadline: Deadline) -> int: ...


class PassageReranker(Protocol):
    async def rerank(
        self, query: str, passages: Sequence[str], deadline: Deadline
    ) -> list[float]: ...


def _rerank_text(chunk: Chunk) -> str:
    """What the reranker reads of a chunk: the text the lexical index searched."""
    return "\n".join(part for part in (chunk.title, chunk.section, chunk.text) if part)


def _fallback_chain(
    settings: GatewaySettings, default: Generator, model_generators: Mapping[str, Generator]
) -> FallbackChain:
    links = {m.name: model_generators.get(m.name, default) for m in settings.models}
    return build_chain(
        links or {"": default},
        passthrough=not links,
        attempts_per_link=settings.generation_retry_attempts,
        backoff=Backoff(settings.generation_retry_base_s, settings.generation_retry_max_s),
        timeouts=ChainTimeouts(
            settings.first_token_timeout_s,
            settings.token_stall_timeout_s,
            settings.answer_reserve_s,
        ),
        breaker=lambda: CircuitBreaker(
            settings.breaker_failure_threshold, settings.breaker_cooldown_s
        ),
    )


class _Stopwatch:
    """Per-stage wall time in milliseconds, in the order the stages finished."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stages: dict[str, float] = {}

    async def time(self, stage: str, work: Awaitable[_T]) -> _T:
        start = time.perf_counter()
        try:
            return await work
        finally:
            self.stages[stage] = (time.perf_counter() - start) * 1000

    def timings(self, *, total: bool = True) -> list[StageTiming]:
        result = [StageTiming(stage, ms) for stage, ms in self.stages.items()]
        if total:
            result.append(StageTiming("total", (time.perf_counter() - self.started) * 1000))
        return result


def _chunker_for(settings: GatewaySettings) -> DocumentChunker:
    config = settings.chunking()
    tokenizer = load_embedder_tokenizer() if config.strategy is ChunkingStrategy.TOKENS else None
    return DocumentChunker(config, tokenizer=tokenizer)


class RagPipeline:
    """Retrieve, ask (grounded, streamed, cited) and ingest.

    Every method validates its input first (``InvalidInput`` naming the field and the limit,
    see ``ragfleet_gateway.validation``) and spends no more than ``deadline`` allows.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        embedder: Embedder,
        retriever: Retriever,
        generator: Generator,
        chunker: DocumentChunker | None = None,
        *,
        model_generators: Mapping[str, Generator] | None = None,
        reranker: PassageReranker | None = None,
    ) -> None:
        """``generator`` serves every model of ``settings.models`` that ``model_generators``
        (model name -> generator) does not map elsewhere. ``reranker`` (the embedder's Rerank)
        rescores fused candidates when a request asks for it; without one such requests are
        answered in fused order, marked degraded."""
        self.settings = settings
        self._embedder = embedder
        self._retriever = retriever
        self._reranker = reranker
        self._chain = _fallback_chain(settings, generator, model_generators or {})
        self._chunker = chunker or _chunker_for(settings)
        self._prompt = PromptBuilder(
            settings.user_prompt_template(),
            settings.system_prompt,
            settings.source_max_chars,
            settings.context_budget_chars,
        )

    # --- retrieve ------------------------------------------------------------------------
    async def retrieve(
        self, query: str, request: RetrievalRequest, deadline: Deadline
    ) -> RetrievalResult:
        """The ``top_k`` best chunks for ``query``.

        Lexical search starts at once; in hybrid mode it runs while the query is embedded and
        searched densely, then the two lists are fused (``ragfleet.fusion``). When the dense
        side fails (embedder or dense search unavailable or too slow) the result is lexical
        only and marked degraded; likewise dense only when the lexical side fails. When both
        fail, the lexical side's error is raised.

        With reranking on, the best ``rerank_depth`` fused hits are reordered by the reranker's
        scores (a stable sort: ties keep the fused order) before the cut to ``top_k``; hits keep
        their fused ``score``. A reranker failure or timeout (``rerank_timeout_s``) never fails
        the request: the fused order is kept and the result marked degraded.
        """
        query = check_question(query, self.settings, field="query")
        options = resolve_retrieval(request, self.settings)
        return await self._retrieve(query, options, deadline, _Stopwatch())

    async def _retrieve(
        self, query: str, options: RetrievalOptions, deadline: Deadline, watch: _Stopwatch
    ) -> RetrievalResult:
        reasons: list[str] = []
        lexical_task: asyncio.Task[list[Hit]] | None = None
        if options.mode is not SearchMode.DENSE:
            lexical_task = asyncio.create_task(self._lexical(query, options, deadline, watch))
        try:
            dense: list[Hit] | None = None
            if options.mode is not SearchMode.LEXICAL:
                try:
                    dense = await self._dense(query, options, deadline, watch)
                except _DEGRADABLE as exc:
                    reasons.append(f"dense retrieval failed, lexical results only: {exc.message}")
                    if lexical_task is None:
                        lexical_task = asyncio.create_task(
                            self._lexical(query, options, deadline, watch)
                        )
            lexical: list[Hit] | None = None
            if lexical_task is not None:
                try:
                    lexical = await lexical_task
                except _DEGRADABLE as exc:
                    if dense is None:
                        raise
                    reasons.append(f"lexical retrieval failed, dense results only: {exc.message}")
        finally:
            if lexical_task is not None and not lexical_task.done():
                lexical_task.cancel()
        start = time.perf_counter()
        hits = self._fuse(lexical, dense, options)
        watch.stages["fuse"] = (time.perf_counter() - start) * 1000
        if options.rerank_depth:
            hits = await self._rerank(query, hits, options, deadline, watch, reasons)
        return RetrievalResult(
            hits=hits[: options.top_k],
            timings=watch.timings(),
            degraded_reasons=reasons,
            best_dense_score=max((h.score for h in dense or ()), default=None),
        )

    async def _rerank(
        self,
        query: str,
        hits: list[Hit],
        options: RetrievalOptions,
        deadline: Deadline,
        watch: _Stopwatch,
        reasons: list[str],
    ) -> list[Hit]:
        head, tail = hits[: options.rerank_depth], hits[options.rerank_depth :]
        if not head:
            return hits
        if self._reranker is None:
            reasons.append("reranking skipped, fused order kept: no reranker is configured")
            return hits
        limit = self.settings.rerank_timeout_s
        stage_deadline = Deadline(min(deadline.expires_at, time.monotonic() + limit))
        work = self._reranker.rerank(query, [_rerank_text(h.chunk) for h in head], stage_deadline)
        try:
            scores = await watch.time("rerank", asyncio.wait_for(work, timeout=limit))
        except TimeoutError:
            reasons.append(f"reranking took over {limit:g} s, fused order kept")
            return hits
        except RagfleetError as exc:
            log.warning("rerank_failed", error=exc.message)
            reasons.append(f"reranking failed, fused order kept: {exc.message}")
            return hits
        order = sorted(range(len(head)), key=lambda i: -scores[i])
        return [head[i] for i in order] + tail

    async def _lexical(
        self, query: str, options: RetrievalOptions, deadline: Deadline, watch: _Stopwatch
    ) -> list[Hit]:
        return await watch.time(
            "lexical",
            self._retriever.search(
                SearchMode.LEXICAL,
                options.candidate_k,
                deadline,
                query=query,
                tenant=options.tenant,
                equals=options.equals,
            ),
        )

    async def _dense(
        self, query: str, options: RetrievalOptions, deadline: Deadline, watch: _Stopwatch
    ) -> list[Hit]:
        vectors = await watch.time(
            "embed", self._embedder.embed([query], InputType.QUERY, deadline)
        )
        return await watch.time(
            "dense",
            self._retriever.search(
                SearchMode.DENSE,
                options.candidate_k,
                deadline,
                query=query,
                vector=vectors[0],
                tenant=options.tenant,
                equals=options.equals,
            ),
        )

    @staticmethod
    def _fuse(
        lexical: list[Hit] | None, dense: list[Hit] | None, options: RetrievalOptions
    ) -> list[Hit]:
        limit = max(options.top_k, options.rerank_depth)
        if dense is None:
            return (lexical or [])[:limit]
        if lexical is None:
            return dense[:limit]
        chunks = {h.chunk.id: h.chunk for h in (*dense, *lexical)}
        fused = fuse(
            options.fusion,
            [(h.chunk.id, h.score) for h in lexical],
            [(h.chunk.id, h.score) for h in dense],
            rrf_k=options.rrf_k,
            dense_weight=options.dense_weight,
            limit=limit,
        )
        return [
            Hit(
                chunk=chunks[f.id],
                score=f.score,
                lexical_rank=f.lexical_rank,
                dense_rank=f.dense_rank,
            )
            for f in fused
        ]

    # --- ask -----------------------------------------------------------------------------
    def ask(self, request: AskRequest, deadline: Deadline) -> AsyncGenerator[AskEvent, None]:
        """Validates ``request`` now (raising ``InvalidInput``, or ``NotFound`` listing the
        configured models, before any event), then returns the event stream: one
        ``SourcesEvent`` (numbered [1]..[n]), ``TokenEvent``s as the model streams them, a
        ``RestartEvent`` whenever a model fails after streaming (discard the text so far), and
        one ``AnswerEvent`` whose citations are the sources that support the answer
        (``attribute_citations``).

        Retrieval may use ``retrieval_budget_share`` of the deadline, at most
        ``retrieval_budget_max_s``; generation gets the rest, through the fallback chain
        (``ragfleet_gateway.fallback``). The sources are the hits that fit the context budget.
        With no sources, or a best dense score below ``min_dense_score``, the answer is
        ``no_answer_text`` without asking a model (``answered`` false); an answer that declines
        with that text cites nothing. When every model fails, the answer is made of the
        passages themselves and marked degraded.
        """
        options = check_ask(request, self.settings)
        links = self._chain.links_from(request.model)
        return self._ask(request, options, links, deadline)

    async def _ask(
        self,
        request: AskRequest,
        options: RetrievalOptions,
        links: list[ChainLink],
        deadline: Deadline,
    ) -> AsyncGenerator[AskEvent, None]:
        watch = _Stopwatch()
        question = request.question.strip()
        retrieval = await self._retrieve(
            question, options, self._retrieval_deadline(deadline), watch
        )
        sources = self._prompt.fit(retrieval.hits)
        yield SourcesEvent(sources)
        reasons = list(retrieval.degraded_reasons)
        threshold = self.settings.min_dense_score
        best = retrieval.best_dense_score
        if not sources or (threshold is not None and best is not None and best < threshold):
            yield TokenEvent(self.settings.no_answer_text)
            yield AnswerEvent(
                Answer(
                    self.settings.no_answer_text,
                    [],
                    "",
                    Usage(),
                    watch.timings(),
                    reasons,
                    answered=False,
                )
            )
            return
        params = GenerationParams(
            model=request.model,
            messages=self._prompt.messages(question, sources),
            max_tokens=(
                request.max_tokens
                if request.max_tokens is not None
                else self.settings.default_max_tokens or None
            ),
            temperature=(
                self.settings.default_temperature
                if request.temperature is None
                else request.temperature
            ),
            stop=self.settings.stop_sequences,
        )
        result: ChainResult | None = None
        start = time.perf_counter()
        async with contextlib.aclosing(self._chain.stream(params, deadline, links)) as events:
            async for event in events:
                if isinstance(event, ChainResult):
                    result = event
                else:
                    yield event
        watch.stages["generate"] = (time.perf_counter() - start) * 1000
        assert result is not None, "a fallback chain always ends with its result"
        yield AnswerEvent(self._answer(result, question, sources, reasons, watch))

    def _retrieval_deadline(self, deadline: Deadline) -> Deadline:
        share = min(
            self.settings.retrieval_budget_share * deadline.remaining(),
            self.settings.retrieval_budget_max_s,
        )
        return Deadline(min(deadline.expires_at, time.monotonic() + share))

    def _answer(
        self,
        result: ChainResult,
        question: str,
        sources: list[Source],
        reasons: list[str],
        watch: _Stopwatch,
    ) -> Answer:
        failed = [a for a in result.attempts if a.outcome is not AttemptOutcome.SUCCEEDED]
        if result.done is None:
            log.warning("generation_failed", reason=result.failure)
            reasons.append(f"generation failed, retrieval-only answer: {result.failure}")
            text = retrieval_only_text(sources, result.failure, self.settings.source_max_chars)
            return Answer(
                text=text,
                citations=resolve_citations(text, sources),
                model="",
                usage=Usage(),
                timings=watch.timings(),
                degraded_reasons=reasons,
                answered=False,
                attempts=result.attempts,
                restarted=result.restarted,
            )
        model = result.done.model or result.attempts[-1].model
        if failed:
            tried = "; ".join(
                f"{a.model or 'default model'} {a.outcome.value}: {a.reason}" for a in failed
            )
            reasons.append(f"answered by fallback model {model} after: {tried}")
        if result.done.finish_reason == "repetition":
            reasons.append("the answer was cut where the model began to repeat itself")
        declined = is_refusal(result.text, self.settings.no_answer_text)
        return Answer(
            text=result.text,
            citations=([] if declined else attribute_citations(result.text, question, sources)),
            model=model,
            usage=result.done.usage,
            timings=watch.timings(),
            degraded_reasons=reasons,
            answered=not declined,
            attempts=result.attempts,
            restarted=result.restarted,
        )

    # --- ingest --------------------------------------------------------------------------
    async def ingest(
        self, documents: Sequence[Document], tenant: str, deadline: Deadline
    ) -> IngestResult:
        """Chunks, embeds (passages, in batches of ``embed_batch_size``) and indexes
        ``documents``. Each document replaces whatever its source had before: its old chunks
        are deleted, then the new ones upserted. Everything is embedded before anything is
        deleted, so an embedder failure leaves the index as it was."""
        check_text(tenant, "tenant")
        check_documents(documents, self.settings)
        chunked = await asyncio.to_thread(
            lambda: [self._chunker.chunk(doc, tenant) for doc in documents]
        )
        flat = [c for chunks in chunked for c in chunks]
        vectors = await self._embed_passages([c.passage for c in flat], deadline)
        embedded = iter(Chunk.embedded(c, v) for c, v in zip(flat, vectors, strict=True))
        replaced = removed = 0
        size = self.settings.upsert_batch_size
        for doc, chunks in zip(documents, chunked, strict=True):
            with_vectors = [next(embedded) for _ in chunks]
            deleted = await self._retriever.delete_source(tenant, doc.source, deadline)
            removed += deleted
            replaced += deleted > 0
            for i in range(0, len(with_vectors), size):
                await self._retriever.upsert(with_vectors[i : i + size], deadline)
        log.info("ingested", documents=len(documents), chunks=len(flat), replaced=replaced)
        return IngestResult(
            documents=len(documents), chunks=len(flat), replaced=replaced, removed_chunks=removed
        )

    async def _embed_passages(
        self, texts: Sequence[str], deadline: Deadline
    ) -> list[tuple[float, ...]]:
        size = self.settings.embed_batch_size
        # A few batches in flight keep the embedder's dynamic batching fed without flooding it.
        gate = asyncio.Semaphore(_EMBED_CONCURRENCY)

        async def batch(start: int) -> list[tuple[float, ...]]:
            async with gate:
                return await self._embedder.embed(
                    texts[start : start + size], InputType.PASSAGE, deadline
                )

        batches = await asyncio.gather(*(batch(i) for i in range(0, len(texts), size)))
        return [v for vectors in batches for v in vectors]
