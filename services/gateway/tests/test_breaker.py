"""CircuitBreaker on an injected clock: closed -> open -> half-open -> closed or open again."""

from __future__ import annotations

import pytest

from ragfleet_gateway.breaker import BreakerState, CircuitBreaker

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(3, 10.0, Clock())
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED, "a success resets the count"
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()


def test_half_open_admits_one_probe_whose_success_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow(), "only one probe at a time"
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.allow()


def test_failed_probe_opens_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, 5.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_released_probe_lets_the_next_one_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow() and not breaker.allow()
    breaker.release()
    assert breaker.allow()


@pytest.mark.parametrize(("threshold", "cooldown"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_invalid_configuration(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, cooldown)
