"""The one gate every engine request of every job passes: concurrency, rate, server pauses.

    slot()  =  concurrency cap (trio.CapacityLimiter, FIFO)
            →  spending suspended (quota)?  raise QuotaExhaustedError at once
            →  wait out a server-requested pause (Retry-After), shared by every task
            →  wait for a rate permit (GCRA, requests per minute with a small burst)
            →  the request runs inside the slot; its errors teach the gate:
                 RetryableError with retry_after  → everyone pauses until then
                 QuotaExhaustedError              → all spending stops for quota_retry_interval

The concurrency slot is taken before the rate permit, so a permit is spent only by a request
that is about to be sent (taking it first would let queued permits burst out together).

GCRA (the generic cell rate algorithm) keeps one number, the theoretical arrival time `tat`:
a request at time t conforms if t ≥ tat − τ, with T = 60 / rpm and τ = (burst − 1)·T, and then
tat = max(tat, t) + T. In any window of W seconds it lets through at most burst + W/T
requests, the same bound as a token bucket of `burst` tokens refilled at rpm/60 per second
(OpenAI's `x-ratelimit-reset-requests` describes its own limit as such a bucket). Waiters queue
on a FIFO lock, so permits go out in arrival order. Time comes only from Trio, so all of this
runs on the mock clock in tests.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import trio

from transcribed.errors import QuotaExhaustedError, RetryableError

logger = structlog.get_logger()


class Gate:
    """Shared by all jobs, so ten files dropped at once share the engine's limits."""

    def __init__(
        self,
        *,
        max_concurrent: int,
        requests_per_minute: float | None = None,
        burst: int | None = None,
        quota_retry_interval: float = 900.0,
    ) -> None:
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._tolerance = (max(1, burst or max_concurrent) - 1) * self._interval
        self._tat = -math.inf  # theoretical arrival time of the next request
        self._order = trio.Lock()  # FIFO: permits in arrival order
        self._paused_until = -math.inf
        self._suspended_until = -math.inf
        self.quota_retry_interval = quota_retry_interval
        self.permits = 0  # requests let through, for tests and benchmarks

    @property
    def in_flight(self) -> int:
        return self._limiter.borrowed_tokens

    @property
    def suspended_until(self) -> float | None:
        """When spending may resume, if it is suspended now (quota), else None."""
        return self._suspended_until if trio.current_time() < self._suspended_until else None

    def pause(self, seconds: float) -> None:
        """Hold every task's next request for `seconds` (a server's Retry-After)."""
        until = trio.current_time() + seconds
        if until > self._paused_until:
            self._paused_until = until
            logger.info("gate.paused", seconds=round(seconds, 3))

    def suspend(self) -> None:
        """Stop all spending for quota_retry_interval (the account's quota is exhausted)."""
        until = trio.current_time() + self.quota_retry_interval
        if until > self._suspended_until:
            self._suspended_until = until
            logger.warning("gate.suspended", reason="quota", retry_in=self.quota_retry_interval)

    async def wait_for_spending(self) -> None:
        """Return once spending is allowed again (at once when it is not suspended)."""
        while trio.current_time() < self._suspended_until:  # noqa: ASYNC110 - the deadline may move
            await trio.sleep_until(self._suspended_until)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the engine's request slots, with a rate permit, for one request."""
        async with self._limiter:
            await self._wait_for_permit()
            try:
                yield
            except QuotaExhaustedError:
                self.suspend()
                raise
            except RetryableError as exc:
                if exc.retry_after is not None and exc.retry_after > 0:
                    self.pause(exc.retry_after)
                raise

    async def _wait_for_permit(self) -> None:
        async with self._order:
            while True:
                now = trio.current_time()
                if now < self._suspended_until:
                    raise QuotaExhaustedError(
                        "spending is suspended: the account's quota is exhausted",
                        hint="add credit or raise the spend limit; waiting jobs resume by themselves",
                    )
                ready_at = max(self._paused_until, self._tat - self._tolerance)
                if now >= ready_at:
                    break
                await trio.sleep_until(ready_at)
            if self._interval:
                self._tat = max(self._tat, now) + self._interval
            self.permits += 1
