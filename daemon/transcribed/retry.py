"""The retry policy for one piece: each attempt through the gate, backoff, deadline, quota waits.

    attempt (inside gate.slot)
      ok                   → the result
      RetryableError       → retry: after the server's wait when it named one (the gate holds
                             every task until then), else after capped exponential backoff with
                             jitter; at most max_attempts attempts, all within retry_timeout
      PermanentError       → raised at once
      QuotaExhaustedError  → the gate suspends all spending; this piece waits (outside its
                             deadline: a quota may take hours to top up) and starts again

Decisions look at exception types only. The deadline is a cancel scope armed when the first
attempt gets its slot, so time spent queueing behind other jobs' pieces does not count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from transcribed.errors import PermanentError, QuotaExhaustedError, RetryableError
from transcribed.gate import Gate

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard to try one piece."""

    max_attempts: int = 8
    initial_delay: float = 1.0  # the first backoff, before jitter
    max_delay: float = 30.0  # backoff never grows past this
    retry_timeout: float = 900.0  # all attempts of one piece, from its first slot

    def backoff_delay(self, failures: int, jitter: float) -> float:
        """The wait after the `failures`-th failure: initial·2^(failures−1), capped, times a
        jitter factor in [0.5, 1] (`jitter` in [0, 1))."""
        exponent = min(failures - 1, 62)
        return min(self.initial_delay * 2.0**exponent, self.max_delay) * (1.0 - 0.5 * jitter)


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    gate: Gate,
    policy: RetryPolicy,
    on_retry: Callable[[RetryableError, int], None] = lambda error, failures: None,
    on_wait: Callable[[str | None], None] = lambda reason: None,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Run `attempt` inside a gate slot until it succeeds, retrying as the policy says.

    `on_retry(error, failures)` is called before each retry; `on_wait("quota")` when the piece
    starts waiting for spending to resume and `on_wait(None)` when it goes on.
    """
    failures = 0
    while True:
        if gate.suspended_until is not None:
            on_wait("quota")
            await gate.wait_for_spending()
            on_wait(None)
        try:
            with trio.CancelScope() as deadline:
                while True:
                    try:
                        async with gate.slot():
                            if deadline.deadline == math.inf:
                                deadline.deadline = trio.current_time() + policy.retry_timeout
                            return await attempt()
                    except RetryableError as error:
                        failures += 1
                        if failures >= policy.max_attempts:
                            raise PermanentError(
                                f"gave up after {failures} attempts: {error.reason}",
                                hint=error.hint
                                or "the service kept failing; drop the file again later",
                            ) from error
                        on_retry(error, failures)
                        if error.retry_after is None:
                            await trio.sleep(policy.backoff_delay(failures, jitter()))
                        # else: the gate holds every task until the server's time has passed
        except QuotaExhaustedError:
            continue
        if deadline.cancelled_caught:
            raise PermanentError(
                f"gave up after retrying for {policy.retry_timeout:g} s ({failures} failed attempts)",
                hint="the service kept failing or was too slow; drop the file again later",
            )
