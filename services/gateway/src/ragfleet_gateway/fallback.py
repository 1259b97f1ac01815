"""``FallbackChain``: generation that moves to the next model when one fails.

The chain is an ordered list of models (``GatewaySettings.models``), each behind a generator
client and a ``CircuitBreaker``. A request may name a model; the chain then starts there. Per
model, failures are sorted by ``FailureKind``:

- ``RETRYABLE`` (UNAVAILABLE, RESOURCE_EXHAUSTED) before the first token: tried again after an
  exponential backoff with jitter, up to ``attempts_per_link`` tries, then the next model.
- ``TIMEOUT`` (no first token within ``first_token_s``, a silence of ``stall_s`` between
  tokens, or the gRPC deadline) and ``FAILED`` (any other upstream error): the next model at
  once; a retry of a hung model would only spend the deadline again.
- ``REJECTED`` (INVALID_ARGUMENT, NOT_FOUND): the request itself is wrong; it is raised at
  once, neither retried nor sent elsewhere.

A model that fails after it streamed tokens is not retried: the chain yields a
``RestartEvent`` (the client discards the text so far) and the next model answers from the
start. Continuing the partial answer instead would need an assistant-prefix continuation that
neither the generator API nor OpenAI-compatible chat APIs offer (a chat template closes a
trailing assistant message and starts a new turn), and would splice two models' voices into one
answer. Every try leaves a ``ModelAttempt``; the last event is always one ``ChainResult``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ragfleet.domain import GenerationDone, GenerationEvent, GenerationParams, TokenEvent
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import (
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    RagfleetError,
    ResourceExhausted,
    Unavailable,
)
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway.breaker import CircuitBreaker
from ragfleet_gateway.domain import AttemptOutcome, ModelAttempt, RestartEvent
from ragfleet_gateway.metrics import PASSTHROUGH, RESTARTS, record_attempt, watch_breaker

log = get_logger(__name__)


class Generator(Protocol):
    def generate(
        self, params: GenerationParams, deadline: Deadline, reserve_s: float = 0.0
    ) -> AsyncGenerator[GenerationEvent, None]: ...


class FailureKind(StrEnum):
    RETRYABLE = "retryable"
    TIMEOUT = "timeout"
    FAILED = "failed"
    REJECTED = "rejected"


_KINDS: dict[type[RagfleetError], FailureKind] = {
    Unavailable: FailureKind.RETRYABLE,
    ResourceExhausted: FailureKind.RETRYABLE,
    DeadlineExceeded: FailureKind.TIMEOUT,
    InvalidInput: FailureKind.REJECTED,
    NotFound: FailureKind.REJECTED,
}


def classify(error: RagfleetError) -> FailureKind:
    """The kind of a generation failure; errors not listed count as ``FAILED``."""
    return next((_KINDS[cls] for cls in type(error).__mro__ if cls in _KINDS), FailureKind.FAILED)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with "equal jitter": retry n (0-based) waits between half and all
    of ``min(max_s, base_s * 2**n)``, so retries of many requests spread out."""

    base_s: float
    max_s: float

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.max_s < self.base_s:
            raise ValueError(f"need 0 < base_s <= max_s; got {self.base_s}, {self.max_s}")

    def delay(self, retry: int, rng: random.Random) -> float:
        cap = min(self.max_s, self.base_s * 2.0**retry)
        return cap / 2 + rng.uniform(0, cap / 2)


@dataclass(frozen=True)
class ChainTimeouts:
    """``first_token_s`` per try; ``stall_s`` between tokens; ``reserve_s`` kept back from the
    deadline so the caller can still send a retrieval-only answer."""

    first_token_s: float
    stall_s: float
    reserve_s: float = 0.0


@dataclass(frozen=True)
class ChainLink:
    """A model (``name``, sent as ``GenerateRequest.model``; "" is the generator's default)."""

    name: str
    generator: Generator
    breaker: CircuitBreaker


@dataclass(frozen=True)
class ChainResult:
    """How the chain ended. ``done`` is None when no model answered (``failure`` says why);
    ``text`` is the answer of the model that answered (never text a restart discarded)."""

    done: GenerationDone | None
    text: str
    attempts: list[ModelAttempt]
    failure: str = ""
    restarted: bool = False


ChainEvent = TokenEvent | RestartEvent | ChainResult


class FallbackChain:
    """Streams one answer from the first model of the chain that can give it (see module)."""

    def __init__(
        self,
        links: Sequence[ChainLink],
        attempts_per_link: int,
        backoff: Backoff,
        timeouts: ChainTimeouts,
        *,
        passthrough: bool = False,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``passthrough``: one link whose model name is whatever the request names (the
        generator validates it), for a gateway configured without a model list."""
        if not links:
            raise ValueError("a fallback chain needs at least one link")
        if passthrough and len(links) != 1:
            raise ValueError("a passthrough chain has exactly one link")
        if attempts_per_link < 1:
            raise ValueError(f"attempts_per_link must be at least 1; got {attempts_per_link}")
        names = [link.name for link in links]
        if len(set(names)) != len(names):
            raise ValueError(f"link names must be unique; got {names}")
        self._links = list(links)
        self._attempts = attempts_per_link
        self._backoff = backoff
        self._timeouts = timeouts
        self._passthrough = passthrough
        self._rng = rng or random.Random()
        self._sleep = sleep

    @property
    def models(self) -> list[str]:
        return [link.name for link in self._links]

    def links_from(self, model: str) -> list[ChainLink]:
        """The links to try for a request naming ``model`` ("" = from the first link).

        Raises ``NotFound`` listing the configured models when ``model`` is not one of them.
        """
        if self._passthrough:
            return [dataclasses.replace(self._links[0], name=model)]
        if not model:
            return list(self._links)
        for i, link in enumerate(self._links):
            if link.name == model:
                return self._links[i:]
        raise NotFound(
            f"model: {model!r} is not configured; the models are {', '.join(self.models)}"
        )

    def links_to(self, model: str, without: Sequence[str] = ()) -> list[ChainLink]:
        """The links to try when a router chose ``model``: that model first, then the rest of
        the chain in order (its fallback), leaving out the models in ``without``. "" is the
        chain as configured. Raises ``NotFound`` when ``model`` is not configured."""
        if self._passthrough or not model:
            return self.links_from(model)
        first = self.links_from(model)[0]
        return [first] + [
            link for link in self._links if link.name != model and link.name not in without
        ]

    async def stream(
        self, params: GenerationParams, deadline: Deadline, links: Sequence[ChainLink]
    ) -> AsyncGenerator[ChainEvent, None]:
        """Token and restart events as they happen, then one ``ChainResult``. Raises
        ``InvalidInput``/``NotFound`` when a model rejects the request."""
        attempts = _CountedAttempts(self._passthrough)
        failure = "no model could be tried"
        restarted = False
        reserve = self._timeouts.reserve_s
        for link in links:
            for retry in range(self._attempts):
                if retry:
                    delay = self._backoff.delay(retry - 1, self._rng)
                    if deadline.remaining() - reserve - delay <= 0:
                        break
                    await self._sleep(delay)
                if deadline.remaining() - reserve <= 0:
                    failure = "no time was left for generation within the deadline"
                    yield ChainResult(None, "", attempts, failure, restarted)
                    return
                if not link.breaker.allow():
                    reason = "circuit breaker open after repeated failures"
                    attempts.append(ModelAttempt(link.name, AttemptOutcome.SKIPPED, reason))
                    failure = f"{_label(link.name)}: {reason}"
                    break
                parts: list[str] = []
                done: GenerationDone | None = None
                start = time.perf_counter()
                try:
                    async with contextlib.aclosing(self._try(link, params, deadline)) as events:
                        async for event in events:
                            if isinstance(event, TokenEvent):
                                parts.append(event.text)
                                yield event
                            else:
                                done = event
                except RagfleetError as exc:
                    ms = (time.perf_counter() - start) * 1000
                    kind = classify(exc)
                    text = "".join(parts)
                    if kind is FailureKind.REJECTED:
                        link.breaker.release()
                        attempts.append(
                            ModelAttempt(link.name, AttemptOutcome.REJECTED, exc.message, 0, ms)
                        )
                        raise type(exc)(f"{_label(link.name)}: {exc.message}") from exc
                    link.breaker.record_failure()
                    reason = f"{kind.value}: {exc.message}"
                    attempts.append(
                        ModelAttempt(
                            link.name,
                            AttemptOutcome.FAILED,
                            reason,
                            len(text),
                            ms,
                            completion_tokens=len(parts),
                        )
                    )
                    failure = f"{_label(link.name)}: {exc.message}"
                    log.warning("generation_attempt_failed", model=link.name, reason=reason)
                    if parts:
                        RESTARTS.labels(attempts.label(link.name)).inc()
                        restarted = True
                        yield RestartEvent(link.name, exc.message)
                        break
                    if kind is not FailureKind.RETRYABLE:
                        break
                    continue
                except BaseException:
                    link.breaker.release()
                    raise
                link.breaker.record_success()
                ms = (time.perf_counter() - start) * 1000
                usage = done.usage if done is not None else None
                attempts.append(
                    ModelAttempt(
                        link.name,
                        AttemptOutcome.SUCCEEDED,
                        "",
                        0,
                        ms,
                        usage.prompt_tokens if usage else 0,
                        usage.completion_tokens if usage else len(parts),
                    )
                )
                yield ChainResult(done, "".join(parts), attempts, "", restarted)
                return
        yield ChainResult(None, "", attempts, failure, restarted)

    async def _try(
        self, link: ChainLink, params: GenerationParams, deadline: Deadline
    ) -> AsyncGenerator[GenerationEvent, None]:
        """One model's events, ending with its ``GenerationDone``; silence past the first-token
        or stall timeout raises ``DeadlineExceeded``."""
        reserve = self._timeouts.reserve_s
        stream = link.generator.generate(
            dataclasses.replace(params, model=link.name), deadline, reserve
        )
        async with contextlib.aclosing(stream):
            first = True
            while True:
                budget = deadline.remaining() - reserve
                if budget <= 0:
                    raise DeadlineExceeded("no time was left for generation within the deadline")
                limit = min(
                    self._timeouts.first_token_s if first else self._timeouts.stall_s, budget
                )
                try:
                    event = await asyncio.wait_for(anext(stream, None), timeout=limit)
                except TimeoutError:
                    what = "no token" if first else "no further token"
                    raise DeadlineExceeded(f"{what} within {limit:.1f} s") from None
                if event is None:
                    raise RagfleetError("the stream ended without its final message")
                yield event
                if isinstance(event, GenerationDone):
                    return
                first = False


class _CountedAttempts(list[ModelAttempt]):
    """The tries of one request, each counted in the gateway's metrics as it is added."""

    def __init__(self, passthrough: bool) -> None:
        super().__init__()
        self._passthrough = passthrough

    def label(self, model: str) -> str:
        return PASSTHROUGH if self._passthrough else model or "default"

    def append(self, attempt: ModelAttempt) -> None:
        tried_others = any(a.model != attempt.model for a in self)
        record_attempt(attempt, self.label(attempt.model), after_others=tried_others)
        super().append(attempt)


def _label(name: str) -> str:
    return f"model {name!r}" if name else "the default model"


def build_chain(
    links: Mapping[str, Generator],
    *,
    passthrough: bool,
    attempts_per_link: int,
    backoff: Backoff,
    timeouts: ChainTimeouts,
    breaker: Callable[[], CircuitBreaker],
) -> FallbackChain:
    """A chain over ``links`` (model name -> its generator, in chain order), one new breaker
    per link."""
    chain = [ChainLink(name, generator, breaker()) for name, generator in links.items()]
    if not passthrough:
        for link in chain:
            watch_breaker(link.name, link.breaker)
    return FallbackChain(
        chain,
        attempts_per_link,
        backoff,
        timeouts,
        passthrough=passthrough,
    )
