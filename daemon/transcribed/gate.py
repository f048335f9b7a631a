"""The one gate every engine request of every job passes: concurrency, rate, server pauses.

    slot()  =  concurrency cap (trio.CapacityLimiter, FIFO)
            →  spending suspended (quota, key, model, unreachable)?  raise that at once
            →  wait out a server-requested pause (Retry-After, at most max_pause), shared by
               every task
            →  wait for a rate permit (GCRA, requests per minute with a small burst)
            →  the attempt runs inside the slot; its errors teach the gate:
                 RetryableError with retry_after  → everyone pauses until then
                 ServiceSuspended                 → all spending stops for its retry interval

The concurrency slot is taken before the rate permit, so queued permits cannot burst out
together; whatever the attempt does inside the slot (encoding its upload, then the request)
holds that slot.

GCRA (the generic cell rate algorithm) keeps one number, the theoretical arrival time `tat`:
a request at time t conforms if t ≥ tat − τ, with T = 60 / rpm and τ = (burst − 1)·T, and then
tat = max(tat, t) + T. In any window of W seconds it lets through at most burst + W/T
requests, the same bound as a token bucket of `burst` tokens refilled at rpm/60 per second
(OpenAI's `x-ratelimit-reset-requests` describes its own limit as such a bucket). Waiters queue
on a FIFO lock, so permits go out in arrival order. Time comes only from Trio, so all of this
runs on the mock clock in tests.
"""

from __future__ import annotations

import copy
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import trio

from transcribed.errors import RetryableError, ServiceSuspended

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
        max_pause: float = math.inf,
    ) -> None:
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._tolerance = (max(1, burst or max_concurrent) - 1) * self._interval
        self._tat = -math.inf  # theoretical arrival time of the next request
        self._order = trio.Lock()  # FIFO: permits in arrival order
        self._paused_until = -math.inf
        self._suspended_until = -math.inf
        self._suspension: ServiceSuspended | None = None
        self.quota_retry_interval = quota_retry_interval
        self.max_pause = max_pause

    @property
    def suspended_until(self) -> float | None:
        """When spending may resume, if it is suspended now, else None."""
        return self._suspended_until if trio.current_time() < self._suspended_until else None

    @property
    def suspension(self) -> ServiceSuspended | None:
        """Why spending is suspended, while it is."""
        return self._suspension if self.suspended_until is not None else None

    @property
    def paused_until(self) -> float | None:
        """When a server-requested pause ends, while one holds every request."""
        return self._paused_until if trio.current_time() < self._paused_until else None

    def pause(self, seconds: float) -> None:
        """Hold every task's next request for `seconds` (a server's Retry-After), at most
        `max_pause`: a server asking for a day must not silently stop the service for a day."""
        seconds = min(seconds, self.max_pause)
        until = trio.current_time() + seconds
        if until > self._paused_until:
            self._paused_until = until
            logger.info("gate.paused", seconds=round(seconds, 3))

    def suspend(self, suspension: ServiceSuspended) -> None:
        """Stop all spending until the suspension's retry interval has passed."""
        interval = suspension.retry_interval or self.quota_retry_interval
        until = trio.current_time() + interval
        if until > self._suspended_until or type(suspension) is not type(self._suspension):
            self._suspended_until = max(until, self._suspended_until)
            self._suspension = suspension
            logger.warning(
                "gate.suspended", reason=suspension.kind, error=suspension.reason, retry_in=interval
            )

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
            except ServiceSuspended as exc:
                self.suspend(exc)
                raise
            except RetryableError as exc:
                if exc.retry_after is not None and exc.retry_after > 0:
                    self.pause(exc.retry_after)
                raise

    async def _wait_for_permit(self) -> None:
        async with self._order:
            while True:
                now = trio.current_time()
                if now < self._suspended_until and self._suspension is not None:
                    raise copy.copy(self._suspension)  # a fresh traceback per task
                ready_at = max(self._paused_until, self._tat - self._tolerance)
                if now >= ready_at:
                    break
                await trio.sleep_until(ready_at)
            if self._interval:
                self._tat = max(self._tat, now) + self._interval
