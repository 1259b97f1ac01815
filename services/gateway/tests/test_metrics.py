"""The gateway's metrics of the fallback chain: tries by outcome, fallback answers, restarts
and breaker states, read from the Prometheus registry."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest
from prometheus_client import REGISTRY

from ragfleet.domain import GenerationDone, GenerationEvent, GenerationParams, TokenEvent, Usage
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import Unavailable
from ragfleet_gateway.breaker import CircuitBreaker
from ragfleet_gateway.fallback import Backoff, ChainResult, ChainTimeouts, build_chain

pytestmark = pytest.mark.unit


class DyingGenerator:
    """Streams one token, then fails with UNAVAILABLE."""

    async def generate(
        self, params: GenerationParams, deadline: Deadline, reserve_s: float = 0.0
    ) -> AsyncGenerator[GenerationEvent, None]:
        yield TokenEvent("partial ")
        raise Unavailable("died")


class AnsweringGenerator:
    async def generate(
        self, params: GenerationParams, deadline: Deadline, reserve_s: float = 0.0
    ) -> AsyncGenerator[GenerationEvent, None]:
        yield TokenEvent("answer")
        yield GenerationDone(params.model, "stop", Usage(completion_tokens=1))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_tries_fallback_answers_restarts_and_breakers_are_measured() -> None:
    now = [0.0]
    fallback = build_chain(
        {"metrics-a": DyingGenerator(), "metrics-b": AnsweringGenerator()},
        passthrough=False,
        attempts_per_link=1,
        backoff=Backoff(0.01, 0.01),
        timeouts=ChainTimeouts(5.0, 5.0),
        breaker=lambda: CircuitBreaker(1, 30.0, clock=lambda: now[0]),
    )
    params = GenerationParams(model="", messages=[], max_tokens=4, temperature=0.0)
    events = [e async for e in fallback.stream(params, Deadline.after(5), fallback.links_from(""))]
    result = events[-1]
    assert isinstance(result, ChainResult) and result.restarted
    tries = "ragfleet_gateway_generation_attempts_total"
    assert sample(tries, model="metrics-a", outcome="failed") == 1
    assert sample(tries, model="metrics-b", outcome="succeeded") == 1
    assert sample("ragfleet_gateway_fallback_answers_total", model="metrics-b") == 1
    assert sample("ragfleet_gateway_generation_restarts_total", model="metrics-a") == 1
    # One failure opened a's breaker (threshold 1); it is half-open after the cooldown.
    assert sample("ragfleet_gateway_breaker_state", model="metrics-a") == 2
    assert sample("ragfleet_gateway_breaker_state", model="metrics-b") == 0
    now[0] = 31.0
    assert sample("ragfleet_gateway_breaker_state", model="metrics-a") == 1
