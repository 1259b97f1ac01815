"""The gateway's own Prometheus metrics, beside the per-RPC ones of ``ragfleet.runtime``: how
the fallback chain's tries end, answers that came from a later model than the first, restarts
mid-answer, each model's circuit breaker, and what the tries cost (with a price table).
Per-stage latency (embedding, search, reranking, generation) is the client histogram
``ragfleet_grpc_client_request_duration_seconds``.

The ``model`` label is a name from the configured chain (``settings.models``); a gateway that
passes the request's model through unchecked labels its tries ``passthrough``, so callers
cannot grow the label set.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge

from ragfleet_gateway.breaker import BreakerState, CircuitBreaker
from ragfleet_gateway.domain import ModelAttempt

PASSTHROUGH = "passthrough"

GENERATION_ATTEMPTS = Counter(
    "ragfleet_gateway_generation_attempts",
    "Tries of one model by the fallback chain, by model and outcome "
    "(succeeded, failed, skipped by an open breaker, rejected as invalid)",
    ("model", "outcome"),
)
FALLBACK_ANSWERS = Counter(
    "ragfleet_gateway_fallback_answers",
    "Answers given by a model after an earlier model of the chain failed or was skipped",
    ("model",),
)
RESTARTS = Counter(
    "ragfleet_gateway_generation_restarts",
    "Answers restarted on another model after a model failed mid-stream",
    ("model",),
)
COST = Counter(
    "ragfleet_gateway_cost_usd",
    "USD spent on generation, by model, priced by the gateway's price table (failed tries "
    "included, as far as their usage is known)",
    ("model",),
)
BREAKER_STATE = Gauge(
    "ragfleet_gateway_breaker_state",
    "Circuit breaker of each model of the chain: 0 closed, 1 half-open, 2 open",
    ("model",),
)
_BREAKER_VALUES = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


def record_attempt(attempt: ModelAttempt, model_label: str, *, after_others: bool) -> None:
    """Counts ``attempt``; a success ``after_others`` (tries of other models came first) is
    also a fallback answer."""
    GENERATION_ATTEMPTS.labels(model_label, attempt.outcome.value).inc()
    if after_others and attempt.outcome.value == "succeeded":
        FALLBACK_ANSWERS.labels(model_label).inc()


def record_cost(attempts: Sequence[ModelAttempt], *, passthrough: bool) -> None:
    """Adds the priced ``attempts``' costs to ``ragfleet_gateway_cost_usd_total{model}``."""
    for attempt in attempts:
        if attempt.cost_usd:
            label = PASSTHROUGH if passthrough else attempt.model or "default"
            COST.labels(label).inc(attempt.cost_usd)


def watch_breaker(model: str, breaker: CircuitBreaker) -> None:
    """Reports ``breaker``'s state as ``ragfleet_gateway_breaker_state{model}`` when scraped
    (the state changes with time alone, from open to half-open)."""
    BREAKER_STATE.labels(model or "default").set_function(lambda: _BREAKER_VALUES[breaker.state])
