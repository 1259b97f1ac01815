"""``CircuitBreaker``: stops sending requests to a model that keeps failing, for a while.

Our own ~60 lines rather than ``aiobreaker`` or ``purgatory``: those wrap a callable and judge
it by whether the call raised, while a generation is a stream whose verdict comes later (a
stream that dies after its tenth token is a failure, a client that hangs up is no verdict at
all), and the breaker must take an injectable clock so its tests do not sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed: every request passes; ``failure_threshold`` consecutive failures open it.
    Open: nothing passes until ``cooldown_s`` has passed, then it is half-open.
    Half-open: one probe request passes at a time; its success closes the breaker, its failure
    opens it for another cooldown, and ``release`` (no verdict) lets the next probe through.

    Not thread-safe; meant for one asyncio event loop, where these methods never interleave.
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1; got {failure_threshold}")
        if cooldown_s <= 0:
            raise ValueError(f"cooldown_s must be positive; got {cooldown_s}")
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self._cooldown_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self) -> bool:
        """Whether a request may go now; in half-open state this admits the one probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        """Ends an admitted request without a verdict (cancelled, or refused as invalid)."""
        self._probing = False
