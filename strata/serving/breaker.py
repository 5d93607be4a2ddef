"""A circuit breaker for calls to a dependency (Redis) that may go down or turn slow.

Closed: calls go through; ``failure_threshold`` consecutive failures open it. Open: calls are
refused at once (the caller answers 503 with ``Retry-After``) for ``reset_after_s``. Then one
probe call is let through (half-open): success closes the breaker, failure opens it again.
Refusing quickly keeps a dead Redis from tying up every request for a full timeout, and the
probe makes the service recover by itself when Redis returns.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Thread-safe consecutive-failure circuit breaker.

    Args:
        failure_threshold: consecutive failures that open the breaker.
        reset_after_s: how long it stays open before a probe is let through.
        probe_timeout_s: a half-open probe that has not reported back after this long is
            presumed lost (its caller was cancelled) and another probe is allowed.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_after_s: float = 2.0,
        *,
        probe_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after_s <= 0:
            raise ValueError("reset_after_s must be positive")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.probe_timeout_s = probe_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self._probe_at: float | None = None
        self._state = BreakerState.CLOSED
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose wait is over reports half-open)."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._wait_over():
                return BreakerState.HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """Whether a call may go ahead now. In half-open state only one probe at a time."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            now = self._clock()
            if self._state is BreakerState.OPEN:
                if not self._wait_over():
                    return False
                self._state = BreakerState.HALF_OPEN
                self._probe_at = now
                return True
            # half-open: a probe is out; allow another only if that one was lost
            if self._probe_at is None or now - self._probe_at >= self.probe_timeout_s:
                self._probe_at = now
                return True
            return False

    def success(self) -> None:
        """Report a successful call: closes the breaker."""
        with self._lock:
            self._failures = 0
            self._probe_at = None
            self._state = BreakerState.CLOSED

    def failure(self) -> None:
        """Report a failed call (error or timeout)."""
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or (
                self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold
            ):
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
                self._probe_at = None
                self.times_opened += 1

    def retry_after_s(self) -> int:
        """Whole seconds a refused caller should wait (the ``Retry-After`` value, >= 1)."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 1
            left = self._opened_at + self.reset_after_s - self._clock()
            return max(1, math.ceil(left))

    def _wait_over(self) -> bool:
        return self._clock() - self._opened_at >= self.reset_after_s
