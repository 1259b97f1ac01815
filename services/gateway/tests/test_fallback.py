"""FallbackChain against scripted generators: retries, timeouts, restarts, breakers, deadlines."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import pytest

from ragfleet.domain import GenerationDone, GenerationEvent, GenerationParams, TokenEvent, Usage
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import (
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    RagfleetError,
    ResourceExhausted,
    Unavailable,
)
from ragfleet_gateway.breaker import BreakerState, CircuitBreaker
from ragfleet_gateway.domain import AttemptOutcome, RestartEvent
from ragfleet_gateway.fallback import (
    Backoff,
    ChainEvent,
    ChainLink,
    ChainResult,
    ChainTimeouts,
    FailureKind,
    FallbackChain,
    classify,
)

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Step:
    """One call's behaviour: stream ``tokens``; raise ``error`` after ``fail_after`` of them
    (None: never); ``hang_after``: go silent after that many tokens."""

    tokens: Sequence[str] = ("Hello ", "world [1].")
    error: RagfleetError | None = None
    fail_after: int = 0
    hang_after: int | None = None


@dataclass
class ScriptedGenerator:
    """Follows ``steps`` call by call (the last step repeats)."""

    name: str
    steps: list[Step] = field(default_factory=lambda: [Step()])
    calls: list[str] = field(default_factory=list)

    async def generate(
        self, params: GenerationParams, deadline: Deadline, reserve_s: float = 0.0
    ) -> AsyncGenerator[GenerationEvent, None]:
        step = self.steps[min(len(self.calls), len(self.steps) - 1)]
        self.calls.append(params.model)
        for i, token in enumerate(step.tokens):
            if step.error is not None and i == step.fail_after:
                raise step.error
            if step.hang_after == i:
                await asyncio.sleep(3600)
            yield TokenEvent(token)
        if step.error is not None:
            raise step.error
        yield GenerationDone(self.name, "stop", Usage(completion_tokens=len(step.tokens)))


PARAMS = GenerationParams(model="", messages=[], max_tokens=16, temperature=0.0)


def chain(
    *generators: ScriptedGenerator,
    attempts: int = 2,
    first_token_s: float = 5.0,
    stall_s: float = 5.0,
    breakers: dict[str, CircuitBreaker] | None = None,
    sleeps: list[float] | None = None,
) -> FallbackChain:
    recorded = sleeps if sleeps is not None else []

    async def sleep(seconds: float) -> None:
        recorded.append(seconds)

    return FallbackChain(
        [
            ChainLink(g.name, g, (breakers or {}).get(g.name) or CircuitBreaker(100, 10.0))
            for g in generators
        ],
        attempts,
        Backoff(0.1, 1.0),
        ChainTimeouts(first_token_s, stall_s, reserve_s=0.05),
        rng=random.Random(7),
        sleep=sleep,
    )


async def run(
    fallback: FallbackChain, model: str = "", timeout_s: float = 10.0
) -> tuple[list[ChainEvent], ChainResult]:
    events = [
        e
        async for e in fallback.stream(
            PARAMS, Deadline.after(timeout_s), fallback.links_from(model)
        )
    ]
    result = events[-1]
    assert isinstance(result, ChainResult)
    assert not any(isinstance(e, ChainResult) for e in events[:-1])
    return events[:-1], result


def tokens(events: list[ChainEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (Unavailable("x"), FailureKind.RETRYABLE),
        (ResourceExhausted("x"), FailureKind.RETRYABLE),
        (DeadlineExceeded("x"), FailureKind.TIMEOUT),
        (InvalidInput("x"), FailureKind.REJECTED),
        (NotFound("x"), FailureKind.REJECTED),
        (RagfleetError("x"), FailureKind.FAILED),
    ],
)
def test_failures_are_classified_by_kind(error: RagfleetError, kind: FailureKind) -> None:
    assert classify(error) is kind


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    backoff, rng = Backoff(0.1, 1.0), random.Random(1)
    for retry, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = {backoff.delay(retry, rng) for _ in range(20)}
        assert all(cap / 2 <= d <= cap for d in delays) and len(delays) > 1


async def test_unavailable_is_retried_with_backoff_then_the_next_model_answers() -> None:
    primary = ScriptedGenerator("a", [Step(error=Unavailable("a is down"))])
    backup = ScriptedGenerator("b")
    sleeps: list[float] = []
    events, result = await run(chain(primary, backup, attempts=3, sleeps=sleeps))
    assert primary.calls == ["a", "a", "a"] and backup.calls == ["b"]
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2
    assert tokens(events) == result.text == "Hello world [1]."
    assert result.done is not None and result.done.model == "b" and not result.restarted
    assert [(a.model, a.outcome) for a in result.attempts] == [
        ("a", AttemptOutcome.FAILED),
        ("a", AttemptOutcome.FAILED),
        ("a", AttemptOutcome.FAILED),
        ("b", AttemptOutcome.SUCCEEDED),
    ]
    assert "a is down" in result.attempts[0].reason


async def test_resource_exhausted_is_retried_on_the_same_model() -> None:
    primary = ScriptedGenerator("a", [Step(error=ResourceExhausted("busy")), Step()])
    _, result = await run(chain(primary, ScriptedGenerator("b")))
    assert primary.calls == ["a", "a"]
    assert result.done is not None and result.done.model == "a"


@pytest.mark.parametrize("error", [InvalidInput("max_tokens: too many"), NotFound("no such")])
async def test_client_mistakes_are_raised_without_retry_or_fallback(error: RagfleetError) -> None:
    primary, backup = ScriptedGenerator("a", [Step(error=error)]), ScriptedGenerator("b")
    fallback = chain(primary, backup)
    with pytest.raises(type(error), match=f"model 'a': {error.message}"):
        await run(fallback)
    assert primary.calls == ["a"] and backup.calls == []


async def test_failure_mid_stream_restarts_on_the_next_model_without_duplicates() -> None:
    primary = ScriptedGenerator(
        "a", [Step(tokens=("Partial ", "text ", "more"), error=Unavailable("died"), fail_after=2)]
    )
    backup = ScriptedGenerator("b", [Step(tokens=("Fresh ", "answer [2]."))])
    events, result = await run(chain(primary, backup, attempts=3))
    assert primary.calls == ["a"], "a model that died mid-stream is not retried"
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TokenEvent", "TokenEvent", "RestartEvent", "TokenEvent", "TokenEvent"]
    restart = events[2]
    assert isinstance(restart, RestartEvent) and restart.model == "a" and "died" in restart.reason
    assert tokens(events[3:]) == result.text == "Fresh answer [2]."
    assert result.restarted
    assert [(a.outcome, a.discarded_chars) for a in result.attempts] == [
        (AttemptOutcome.FAILED, len("Partial text ")),
        (AttemptOutcome.SUCCEEDED, 0),
    ]


async def test_a_silent_model_times_out_and_the_next_answers() -> None:
    primary = ScriptedGenerator("a", [Step(hang_after=0)])
    backup = ScriptedGenerator("b")
    start = time.perf_counter()
    _, result = await run(chain(primary, backup, first_token_s=0.2), timeout_s=5)
    assert time.perf_counter() - start < 1.0
    assert primary.calls == ["a"], "a hung model is not retried"
    assert result.attempts[0].reason.startswith("timeout: no token within 0.2 s")
    assert result.text == "Hello world [1]." and not result.restarted


async def test_a_stall_mid_stream_restarts_on_the_next_model() -> None:
    primary = ScriptedGenerator("a", [Step(tokens=("One ", "two"), hang_after=1)])
    backup = ScriptedGenerator("b")
    events, result = await run(chain(primary, backup, stall_s=0.2), timeout_s=5)
    assert [type(e).__name__ for e in events][:2] == ["TokenEvent", "RestartEvent"]
    assert "no further token within 0.2 s" in result.attempts[0].reason
    assert result.restarted and result.text == "Hello world [1]."


async def test_every_model_failing_ends_without_an_answer() -> None:
    a = ScriptedGenerator("a", [Step(error=Unavailable("a down"))])
    b = ScriptedGenerator("b", [Step(error=RagfleetError("b broke"))])
    events, result = await run(chain(a, b, attempts=2))
    assert events == [] and result.done is None
    assert b.calls == ["b"], "errors other than UNAVAILABLE/RESOURCE_EXHAUSTED are not retried"
    assert "b broke" in result.failure


async def test_the_deadline_bounds_every_try() -> None:
    a = ScriptedGenerator("a", [Step(hang_after=0)])
    b = ScriptedGenerator("b", [Step(hang_after=0)])
    start = time.perf_counter()
    _, result = await run(chain(a, b, first_token_s=60), timeout_s=0.5)
    assert time.perf_counter() - start < 0.6
    assert result.done is None and "deadline" in result.failure
    assert b.calls == [], "the first model's wait used the whole deadline"


async def test_an_open_breaker_skips_its_model_until_the_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(2, 30.0, clock=lambda: now[0])
    a = ScriptedGenerator("a", [Step(error=Unavailable("a down"))])
    fallback = chain(a, ScriptedGenerator("b"), attempts=1, breakers={"a": breaker})
    for _ in range(2):
        await run(fallback)
    assert breaker.state is BreakerState.OPEN and len(a.calls) == 2
    _, result = await run(fallback)
    assert len(a.calls) == 2
    assert result.attempts[0].outcome is AttemptOutcome.SKIPPED
    assert "circuit breaker open" in result.attempts[0].reason
    now[0] = 31.0
    a.steps = [Step()]
    _, result = await run(fallback)
    assert result.done is not None and result.done.model == "a"
    assert breaker.state is BreakerState.CLOSED


def test_a_named_model_starts_the_chain_there_and_unknown_names_are_not_found() -> None:
    fallback = chain(ScriptedGenerator("a"), ScriptedGenerator("b"), ScriptedGenerator("c"))
    assert [link.name for link in fallback.links_from("")] == ["a", "b", "c"]
    assert [link.name for link in fallback.links_from("b")] == ["b", "c"]
    with pytest.raises(NotFound, match="'gpt-5' is not configured; the models are a, b, c"):
        fallback.links_from("gpt-5")


def test_a_passthrough_chain_sends_any_name_to_its_one_generator() -> None:
    generator = ScriptedGenerator("")
    fallback = FallbackChain(
        [ChainLink("", generator, CircuitBreaker(1, 1.0))],
        1,
        Backoff(0.1, 1.0),
        ChainTimeouts(1.0, 1.0),
        passthrough=True,
    )
    assert [link.name for link in fallback.links_from("anything")] == ["anything"]
    assert fallback.links_from("x")[0].breaker is fallback.links_from("y")[0].breaker
