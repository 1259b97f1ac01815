"""Answering, the gateway's second use case: retrieve, then a grounded, streamed, cited answer
through the fallback chain of models (``ragfleet_gateway.fallback``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ragfleet.domain import GenerationParams, TokenEvent, Usage
from ragfleet.flywheel.recorder import SpooledRecorder
from ragfleet.flywheel.records import AnswerRecord, SourceRecord
from ragfleet.router_model import escalation_reason
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import RagfleetError
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway.breaker import CircuitBreaker
from ragfleet_gateway.conversation import FollowupRewriter
from ragfleet_gateway.domain import (
    Answer,
    AnswerEvent,
    AskEvent,
    AskRequest,
    AskResult,
    AttemptOutcome,
    QueryRewrite,
    RestartEvent,
    RetrievalOptions,
    RetrievalResult,
    RewriteEvent,
    Route,
    Source,
    SourcesEvent,
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
from ragfleet_gateway.metrics import record_cost
from ragfleet_gateway.pricing import PriceTable
from ragfleet_gateway.prompt import (
    PromptBuilder,
    attribute_citations,
    fit_history,
    is_refusal,
    resolve_citations,
    retrieval_only_text,
)
from ragfleet_gateway.retrieval import Retrieval, Stopwatch
from ragfleet_gateway.routing import CascadeRouter, build_router
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.validation import check_ask

log = get_logger(__name__)
# Closings scheduled by close_on_termination, referenced until they are done.
_closing: set[asyncio.Task[None]] = set()


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


class Answering:
    """Questions answered from what ``retrieval`` finds."""

    def __init__(
        self,
        settings: GatewaySettings,
        retrieval: Retrieval,
        generator: Generator,
        model_generators: Mapping[str, Generator] | None = None,
        recorder: SpooledRecorder | None = None,
    ) -> None:
        """``generator`` serves every model of ``settings.models`` that ``model_generators``
        (model name -> generator) does not map elsewhere; ``recorder`` keeps every answer for
        feedback (none: answers carry no id)."""
        self.settings = settings
        self._retrieval = retrieval
        self._chain = _fallback_chain(settings, generator, model_generators or {})
        self._prompt = PromptBuilder(
            settings.user_prompt_template(),
            settings.system_prompt,
            settings.source_max_chars,
            settings.context_budget_chars,
        )
        self._rewriter = FollowupRewriter(settings)
        self._prices = PriceTable.from_settings(settings)
        self._router = build_router(settings)
        self._recorder = recorder

    def ask(self, request: AskRequest, deadline: Deadline) -> AsyncGenerator[AskEvent, None]:
        """Validates ``request`` now (raising ``InvalidInput``, or ``NotFound`` listing the
        configured models, before any event), then returns the event stream: one
        ``SourcesEvent`` (numbered [1]..[n]), ``TokenEvent``s as the model streams them, a
        ``RestartEvent`` whenever a model fails after streaming (discard the text so far), and
        one ``AnswerEvent`` whose citations are the sources that support the answer
        (``attribute_citations``). With a history, a ``RewriteEvent`` comes first: the
        standalone question retrieval searched for (``ragfleet_gateway.conversation``); the
        prompt holds the newest earlier messages that fit ``history_budget_chars``.

        Retrieval may use ``retrieval_budget_share`` of the deadline, at most
        ``retrieval_budget_max_s``; generation gets the rest, through the fallback chain
        (``ragfleet_gateway.fallback``) from the model the router chose
        (``ragfleet_gateway.routing``; a request naming a model is not routed). Under the
        cascade, a cheap answer that fails ``escalation_reason`` is discarded with a
        ``RestartEvent`` and the strong model answers. The sources are the hits that fit the
        context budget. With no sources, or a best dense score below ``min_dense_score``, the
        answer is ``no_answer_text`` without asking a model (``answered`` false); an answer
        that declines with that text cites nothing. When every model fails, the answer is made
        of the passages themselves and marked degraded. With a recorder, every answer gets an
        ``answer_id`` and is recorded for feedback.
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
        watch = Stopwatch()
        question = request.question.strip()
        rewrite: QueryRewrite | None = None
        if request.history:
            rewrite = await watch.time(
                "rewrite",
                self._rewriter.rewrite(question, request.history, links[0], deadline),
            )
        query = question if rewrite is None else rewrite.query
        retrieval = await self._retrieval.run(
            query, options, self._retrieval_deadline(deadline), watch
        )
        sources = self._prompt.fit(retrieval.hits)
        if rewrite is not None:
            yield RewriteEvent(rewrite)
        yield SourcesEvent(sources)
        history, trimmed = fit_history(request.history, self.settings.history_budget_chars)
        reasons = list(retrieval.degraded_reasons)
        threshold = self.settings.min_dense_score
        best = retrieval.best_dense_score
        if not sources or (threshold is not None and best is not None and best < threshold):
            yield TokenEvent(self.settings.no_answer_text)
            declined = Answer(
                self.settings.no_answer_text,
                [],
                "",
                Usage(),
                watch.timings(),
                reasons,
                answered=False,
                history_trimmed=trimmed,
                cost_usd=None if self._prices is None else 0.0,
            )
            yield AnswerEvent(self._record(declined, request, options, sources))
            return
        route = self._route(request, query, retrieval)
        params = GenerationParams(
            model=request.model,
            messages=self._prompt.messages(question, sources, history),
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
        start = time.perf_counter()
        results: list[ChainResult] = []
        links = self._chain.links_to(route.model)
        async with contextlib.aclosing(self._generate(params, deadline, links, results)) as events:
            async for event in events:
                yield event
        result = results[-1]
        why = self._escalation(route, result, query, sources)
        if why is not None:
            router = self._router
            assert isinstance(router, CascadeRouter)
            yield RestartEvent(route.model, f"escalated to {router.strong}: {why}")
            cheap = result
            links = self._chain.links_to(router.strong, without=[router.cheap])
            async with contextlib.aclosing(
                self._generate(params, deadline, links, results)
            ) as events:
                async for event in events:
                    yield event
            result = results[-1]
            if result.done is None:
                # No model of the escalation answered: the cheap answer stands, sent again (the
                # client discarded it at the restart).
                route = replace(route, reason=f"{why}; no stronger model answered")
                result = replace(cheap, attempts=[*cheap.attempts, *result.attempts])
                yield TokenEvent(result.text)
            else:
                route = replace(route, escalated=True, reason=f"escalated: {why}")
                result = _escalated(cheap, result)
        watch.stages["generate"] = (time.perf_counter() - start) * 1000
        answer = self._priced(self._answer(result, query, sources, reasons, watch))
        answer = replace(answer, history_trimmed=trimmed, route=route)
        log.info(
            "answered",
            model=answer.model,
            answered=answer.answered,
            route=route.policy,
            escalated=route.escalated,
            attempts=len(answer.attempts),
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
            cost_usd=answer.cost_usd,
            degraded=answer.degraded,
        )
        yield AnswerEvent(self._record(answer, request, options, sources))

    async def _generate(
        self,
        params: GenerationParams,
        deadline: Deadline,
        links: list[ChainLink],
        results: list[ChainResult],
    ) -> AsyncGenerator[AskEvent, None]:
        """The chain's token and restart events over ``links``; its result is appended to
        ``results``."""
        async with contextlib.aclosing(self._chain.stream(params, deadline, links)) as events:
            async for event in events:
                if isinstance(event, ChainResult):
                    results.append(event)
                else:
                    yield event
        assert results, "a fallback chain always ends with its result"

    def _route(self, request: AskRequest, query: str, retrieval: RetrievalResult) -> Route:
        if request.model:
            return Route("requested", request.model, "the request named the model")
        return self._router.choose(query, retrieval)

    def _escalation(
        self, route: Route, result: ChainResult, question: str, sources: list[Source]
    ) -> str | None:
        """Why the cascade should ask the strong model after ``result`` (None: it should not,
        or this is not a cascade's cheap answer)."""
        router = self._router
        if (
            not isinstance(router, CascadeRouter)
            or route.policy != router.policy
            or result.done is None
            or (result.done.model or result.attempts[-1].model) != router.cheap
        ):
            return None
        declined = is_refusal(result.text, self.settings.no_answer_text)
        cited = [] if declined else attribute_citations(result.text, question, sources)
        return escalation_reason(result.text, not declined, len(cited), result.done.finish_reason)

    def _record(
        self,
        answer: Answer,
        request: AskRequest,
        options: RetrievalOptions,
        sources: list[Source],
    ) -> Answer:
        """``answer`` with an id, handed to the recorder (unchanged without one). The recorder
        spools it to disk at once and never waits for the store."""
        if self._recorder is None:
            return answer
        answer = replace(answer, answer_id=uuid.uuid4().hex)
        route = answer.route
        self._recorder.submit(
            AnswerRecord(
                answer_id=answer.answer_id,
                tenant=options.tenant,
                created_at=datetime.now(UTC),
                question=request.question,
                history=[{"role": m.role, "content": m.content} for m in request.history],
                answer=answer.text,
                answered=answer.answered,
                model=answer.model,
                route="" if route is None else f"{route.policy}: {route.reason}".rstrip(": "),
                sources=[
                    SourceRecord(
                        number=s.number,
                        chunk_id=s.hit.chunk.id,
                        source=s.hit.chunk.source,
                        title=s.hit.chunk.title,
                        text=s.hit.chunk.text,
                        score=s.hit.score,
                    )
                    for s in sources
                ],
                cited=[c.number for c in answer.citations],
                prompt_tokens=answer.usage.prompt_tokens,
                completion_tokens=answer.usage.completion_tokens,
                cost_usd=answer.cost_usd,
                timings_ms={t.stage: t.ms for t in answer.timings},
            )
        )
        return answer

    def _priced(self, answer: Answer) -> Answer:
        """``answer`` with its attempts' costs and their total, counted in the metrics
        (unchanged without a price table)."""
        if self._prices is None:
            return answer
        # Without a chain, the one link is the generator's default model: priced by the name it
        # reported when the table has it (a local table lists the models by name).
        attempts, total = self._prices.price_all(
            answer.attempts, answer.model if not self.settings.models else ""
        )
        record_cost(attempts, passthrough=not self.settings.models)
        return replace(answer, attempts=attempts, cost_usd=total)

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
        watch: Stopwatch,
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
            finish_reason=result.done.finish_reason,
        )


def _escalated(cheap: ChainResult, strong: ChainResult) -> ChainResult:
    """The strong model's result, with the cheap model's tries first: its answer marked
    escalated (its cost still counts)."""
    tries = [
        replace(a, outcome=AttemptOutcome.ESCALATED, reason="failed the cascade check")
        if a.outcome is AttemptOutcome.SUCCEEDED
        else a
        for a in cheap.attempts
    ]
    return replace(strong, attempts=[*tries, *strong.attempts], restarted=True)


async def collect(events: AsyncGenerator[AskEvent, None]) -> AskResult:
    """An ask's events gathered into its result, for callers that do not stream."""
    rewrite: QueryRewrite | None = None
    sources: list[Source] = []
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, RewriteEvent):
                rewrite = event.rewrite
            elif isinstance(event, SourcesEvent):
                sources = event.sources
            elif isinstance(event, AnswerEvent):
                return AskResult(rewrite, sources, event.answer)
    raise RagfleetError("the answer stream ended without an answer")


def close_on_termination(events: AsyncGenerator[AskEvent, None]) -> Callable[[Any], None]:
    """A callback for the end of the call that streams ``events`` (a gRPC context's
    ``add_done_callback``): closes ``events`` if the call ended before they did (the client
    cancelled, its deadline ran out), which cancels the upstream calls (the generation) at
    once. A server that cancels the streaming task while it was sending leaves the generator
    suspended at its ``yield``, the generation running, until it is garbage-collected."""

    def close(_: Any) -> None:
        # A finished generator needs nothing; a running one is unwound by the cancellation.
        if getattr(events, "ag_frame", None) is None or getattr(events, "ag_running", False):
            return
        task = asyncio.get_running_loop().create_task(events.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    return close
