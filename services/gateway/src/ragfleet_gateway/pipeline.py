"""``RagPipeline``: the gateway's core, shared by the gRPC servicer and the REST bridge.

It knows the upstreams only through the three small protocols below (the gRPC clients in
``ragfleet_gateway.clients`` implement them; tests pass fakes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping, Sequence
from typing import Protocol, TypeVar

from ragfleet.fusion import fuse
from ragfleet.runtime.clients import Deadline
from ragfleet.runtime.errors import DeadlineExceeded, Unavailable
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway.chunking import DocumentChunker
from ragfleet_gateway.domain import (
    Answer,
    AnswerEvent,
    AskEvent,
    AskRequest,
    Chunk,
    Document,
    GenerationDone,
    GenerationEvent,
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
from ragfleet_gateway.prompt import PromptBuilder, resolve_citations, retrieval_only_text
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.validation import (
    check_ask,
    check_documents,
    check_question,
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


class Generator(Protocol):
    def generate(
        self, params: GenerationParams, deadline: Deadline, reserve_s: float = 0.0
    ) -> AsyncGenerator[GenerationEvent, None]: ...


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
    ) -> None:
        self.settings = settings
        self._embedder = embedder
        self._retriever = retriever
        self._generator = generator
        self._chunker = chunker or DocumentChunker(
            settings.chunk_size_chars, settings.chunk_overlap_chars
        )
        self._prompt = PromptBuilder(
            settings.user_prompt_template(), settings.system_prompt, settings.source_max_chars
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
        return RetrievalResult(hits=hits, timings=watch.timings(), degraded_reasons=reasons)

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
        if dense is None:
            return (lexical or [])[: options.top_k]
        if lexical is None:
            return dense[: options.top_k]
        chunks = {h.chunk.id: h.chunk for h in (*dense, *lexical)}
        fused = fuse(
            options.fusion,
            [(h.chunk.id, h.score) for h in lexical],
            [(h.chunk.id, h.score) for h in dense],
            rrf_k=options.rrf_k,
            dense_weight=options.dense_weight,
            limit=options.top_k,
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
        """Validates ``request`` now (raising ``InvalidInput`` before any event), then returns
        the event stream: one ``SourcesEvent`` (numbered [1]..[n]), ``TokenEvent``s as the
        generator streams them, and one ``AnswerEvent`` whose citations are the [n] markers the
        model wrote (none when it cited none).

        With no sources the answer is ``no_answer_text``, sent as one token, without asking
        the model. When the generator fails or stays silent before its first token (within
        ``first_token_timeout_s`` and the deadline) the answer is made of the passages
        themselves and marked degraded; a failure after tokens were sent raises.
        """
        options = check_ask(request, self.settings)
        return self._ask(request, options, deadline)

    async def _ask(
        self, request: AskRequest, options: RetrievalOptions, deadline: Deadline
    ) -> AsyncGenerator[AskEvent, None]:
        watch = _Stopwatch()
        question = request.question.strip()
        retrieval = await self._retrieve(question, options, deadline, watch)
        sources = [Source(number, hit) for number, hit in enumerate(retrieval.hits, start=1)]
        yield SourcesEvent(sources)
        reasons = list(retrieval.degraded_reasons)
        if not sources:
            yield TokenEvent(self.settings.no_answer_text)
            yield AnswerEvent(
                Answer(self.settings.no_answer_text, [], "", Usage(), watch.timings(), reasons)
            )
            return
        params = GenerationParams(
            model=request.model,
            messages=self._prompt.messages(question, sources),
            max_tokens=request.max_tokens or self.settings.default_max_tokens,
            temperature=(
                self.settings.default_temperature
                if request.temperature is None
                else request.temperature
            ),
        )
        parts: list[str] = []
        done: GenerationDone | None = None
        failure: str | None = None
        start = time.perf_counter()
        stream = self._generator.generate(params, deadline, self.settings.answer_reserve_s)
        try:
            async with contextlib.aclosing(stream):
                event: GenerationEvent | None = await self._first_event(stream, deadline)
                while event is not None:
                    if isinstance(event, TokenEvent):
                        parts.append(event.text)
                        yield event
                    else:
                        done = event
                    event = await anext(stream, None)
        except _DEGRADABLE as exc:
            if parts:
                raise
            failure = exc.message
        watch.stages["generate"] = (time.perf_counter() - start) * 1000
        if failure is not None:
            log.warning("generation_failed", reason=failure)
            reasons.append(f"generation failed, retrieval-only answer: {failure}")
            text = retrieval_only_text(sources, failure, self.settings.source_max_chars)
            model = ""
        else:
            text = "".join(parts)
            model = done.model if done else params.model
        answer = Answer(
            text=text,
            citations=resolve_citations(text, sources),
            model=model,
            usage=done.usage if done else Usage(),
            timings=watch.timings(),
            degraded_reasons=reasons,
        )
        yield AnswerEvent(answer)

    async def _first_event(
        self, stream: AsyncGenerator[GenerationEvent, None], deadline: Deadline
    ) -> GenerationEvent | None:
        limit = min(
            self.settings.first_token_timeout_s,
            deadline.remaining() - self.settings.answer_reserve_s,
        )
        if limit <= 0:
            raise DeadlineExceeded("no time was left for generation within the deadline")
        try:
            return await asyncio.wait_for(anext(stream, None), timeout=limit)
        except TimeoutError:
            raise DeadlineExceeded(f"the generator sent no token within {limit:.1f} s") from None

    # --- ingest --------------------------------------------------------------------------
    async def ingest(
        self, documents: Sequence[Document], tenant: str, deadline: Deadline
    ) -> IngestResult:
        """Chunks, embeds (passages, in batches of ``embed_batch_size``) and indexes
        ``documents``. Each document replaces whatever its source had before: its old chunks
        are deleted, then the new ones upserted. Everything is embedded before anything is
        deleted, so an embedder failure leaves the index as it was."""
        check_documents(documents, self.settings)
        chunked = await asyncio.to_thread(
            lambda: [self._chunker.chunk(doc, tenant) for doc in documents]
        )
        flat = [c for chunks in chunked for c in chunks]
        vectors = await self._embed_passages([c.text for c in flat], deadline)
        embedded = iter(
            dataclasses.replace(c, vector=v) for c, v in zip(flat, vectors, strict=True)
        )
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
