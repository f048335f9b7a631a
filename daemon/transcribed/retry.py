"""The retry policy for one piece: each attempt through the gate, backoff, deadline, service waits.

    attempt (inside gate.slot)
      ok                   → the result
      RetryableError       → retry: after the server's wait when it named one (the gate holds
                             every task until then), else after capped exponential backoff with
                             jitter; at most max_attempts attempts, all within retry_timeout
        a 429 (rate limit)  → not a failed attempt: the server said when to come back, so a
                             429 storm cannot use up a piece's attempts
        UnreachableError or 429s past that budget → the service is down or refusing, not the
                             file: the gate suspends all spending ("unreachable") and the piece
                             waits, then starts a fresh budget
      PermanentError       → raised at once
      ServiceSuspended     → (quota, key, model, unusable answers) the gate suspends all
                             spending; this piece waits (outside its deadline: a quota may take
                             hours to top up) and starts again

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

from transcribed.errors import (
    PermanentError,
    RetryableError,
    ServerUnreachableError,
    ServiceSuspended,
    UnreachableError,
)
from transcribed.gate import Gate

T = TypeVar("T")

# A server pause longer than this shows as `waiting` (reason rate_limit) in the progress file.
VISIBLE_PAUSE = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard to try one piece."""

    max_attempts: int = 8
    initial_delay: float = 1.0  # the first backoff, before jitter
    max_delay: float = 30.0  # backoff never grows past this
    retry_timeout: float = 900.0  # all attempts of one piece, from its first slot
    unreachable_retry_interval: float = 300.0  # the pause once a server stays unreachable

    def backoff_delay(self, failures: int, jitter: float) -> float:
        """The wait after the `failures`-th failure: initial·2^(failures−1), capped, times a
        jitter factor in [0.5, 1] (`jitter` in [0, 1))."""
        exponent = min(failures - 1, 62)
        return min(self.initial_delay * 2.0**exponent, self.max_delay) * (1.0 - 0.5 * jitter)


class _BudgetSpent(Exception):
    def __init__(self, error: RetryableError, failures: int, timed_out: bool) -> None:
        super().__init__(error.reason)
        self.error, self.failures, self.timed_out = error, failures, timed_out


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

    `on_retry(error, failures)` is called before each retry; `on_wait(reason)` when the piece
    starts waiting for the service (reason: quota, key, model, unreachable, rate_limit...) and
    `on_wait(None)` when it goes on.
    """
    while True:
        await _wait_for_service(gate, on_wait)
        try:
            return await _within_budget(attempt, gate, policy, on_retry, on_wait, jitter)
        except ServiceSuspended:
            continue  # the gate is suspended now; wait it out above
        except _BudgetSpent as spent:
            if isinstance(spent.error, UnreachableError) or spent.error.status == 429:
                refusing = spent.error.status == 429
                gate.suspend(
                    ServerUnreachableError(
                        f"the transcription service {'kept refusing for its rate limit' if refusing else 'stayed unreachable'}: {spent.error.reason}",
                        hint="check openai.base_url, the network and the server; waiting jobs "
                        "resume by themselves",
                        retry_interval=policy.unreachable_retry_interval,
                    )
                )
                continue
            if spent.timed_out:
                raise PermanentError(
                    f"gave up after retrying for {policy.retry_timeout:g} s ({spent.failures} "
                    f"failed attempts): {spent.error.reason}",
                    hint="the service kept failing or was too slow on this piece; drop the file again later",
                ) from spent.error
            raise PermanentError(
                f"gave up after {spent.failures} attempts: {spent.error.reason}",
                hint=spent.error.hint or "the service kept failing; drop the file again later",
            ) from spent.error


async def _wait_for_service(gate: Gate, on_wait: Callable[[str | None], None]) -> None:
    """Before an attempt: wait while spending is suspended or a long server pause holds."""
    waited = False
    while True:
        suspension = gate.suspension
        paused_until = gate.paused_until
        if suspension is not None:
            on_wait(f"{suspension.kind}: {suspension.reason}")
            waited = True
            await gate.wait_for_spending()
        elif paused_until is not None and paused_until - trio.current_time() > VISIBLE_PAUSE:
            seconds = paused_until - trio.current_time()
            on_wait(f"rate_limit: the server asked to wait {seconds:.0f} s")
            waited = True
            await trio.sleep_until(paused_until)
        else:
            break
    if waited:
        on_wait(None)


async def _within_budget(
    attempt: Callable[[], Awaitable[T]],
    gate: Gate,
    policy: RetryPolicy,
    on_retry: Callable[[RetryableError, int], None],
    on_wait: Callable[[str | None], None],
    jitter: Callable[[], float],
) -> T:
    failures = 0
    last: RetryableError | None = None
    with trio.CancelScope() as deadline:
        while True:
            try:
                async with gate.slot():
                    if deadline.deadline == math.inf:
                        deadline.deadline = trio.current_time() + policy.retry_timeout
                    return await attempt()
            except RetryableError as error:
                last = error
                if error.status != 429:
                    failures += 1
                if failures >= policy.max_attempts:
                    raise _BudgetSpent(error, failures, timed_out=False) from error
                on_retry(error, max(failures, 1))
                if error.retry_after is None:
                    await trio.sleep(policy.backoff_delay(max(failures, 1), jitter()))
                else:
                    # the gate holds every task until the server's time has passed
                    await _wait_for_service(gate, on_wait)
    assert deadline.cancelled_caught
    raise _BudgetSpent(
        last or UnreachableError("no attempt finished in time"), failures, timed_out=True
    )
