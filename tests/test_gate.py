"""The shared gate and the retry policy, on Trio's mock clock with exact virtual times."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from transcribed.errors import PermanentError, QuotaExhaustedError, RetryableError, UnreachableError
from transcribed.gate import Gate
from transcribed.retry import RetryPolicy, call_with_retries


async def _permit_times(gate: Gate, tasks: int, *, hold: float = 0.0) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        async with gate.slot():
            times.append(trio.current_time())
            await trio.sleep(hold)

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(one)
    return sorted(times)


# ---------------------------------------------------------------- the gate


async def test_requests_per_minute_allow_a_burst_then_one_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    """At 60 rpm with a burst of 3, eight requests start at 0, 0, 0, 1, 2, 3, 4, 5 s."""
    gate = Gate(max_concurrent=10, requests_per_minute=60, burst=3)
    assert await _permit_times(gate, 8) == [0, 0, 0, 1, 2, 3, 4, 5]


async def test_the_concurrency_cap_holds_requests_until_a_slot_frees(autojump_clock: trio.testing.MockClock) -> None:
    """With two slots and 10 s requests, five requests start at 0, 0, 10, 10, 20 s."""
    gate = Gate(max_concurrent=2)
    assert await _permit_times(gate, 5, hold=10) == [0, 0, 10, 10, 20]


async def test_a_permit_is_spent_only_when_a_slot_is_held(autojump_clock: trio.testing.MockClock) -> None:
    """Requests queued behind the cap do not hoard rate permits: after long requests they start
    one interval apart, never in a burst."""
    gate = Gate(max_concurrent=1, requests_per_minute=60, burst=1)
    assert await _permit_times(gate, 3, hold=0.25) == [0, 1, 2]


async def test_a_server_requested_pause_holds_every_task(autojump_clock: trio.testing.MockClock) -> None:
    """A 429 with Retry-After 5 s at t=1 holds the other tasks' requests until t=6."""
    gate = Gate(max_concurrent=4)
    started: list[float] = []

    async def rate_limited() -> None:
        await trio.sleep(1)
        with pytest.raises(RetryableError):
            async with gate.slot():
                raise RetryableError("slow down", retry_after=5)

    async def other() -> None:
        await trio.sleep(2)
        async with gate.slot():
            started.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rate_limited)
        nursery.start_soon(other)
        nursery.start_soon(other)
    assert started == [6, 6]


async def test_an_exhausted_quota_suspends_all_spending_for_the_interval(autojump_clock: trio.testing.MockClock) -> None:
    """After a quota error every slot refuses at once until quota_retry_interval has passed."""
    gate = Gate(max_concurrent=4, quota_retry_interval=600)
    with pytest.raises(QuotaExhaustedError):
        async with gate.slot():
            raise QuotaExhaustedError("no credit")
    assert gate.suspended_until == 600
    with pytest.raises(QuotaExhaustedError):
        async with gate.slot():
            pytest.fail("a request was let through while spending is suspended")
    await gate.wait_for_spending()
    assert trio.current_time() == 600 and gate.suspended_until is None
    async with gate.slot():
        pass


async def test_ten_jobs_at_once_never_break_the_rate_or_the_cap(autojump_clock: trio.testing.MockClock) -> None:
    """Ten jobs of twenty 3 s requests each, sharing one gate at 120 rpm (burst 4, cap 4): no
    60 s window holds more than rpm + burst starts, never more than 4 run at once, and the
    whole takes exactly as long as the rate allows."""
    gate = Gate(max_concurrent=4, requests_per_minute=120, burst=4)
    starts: list[float] = []
    running = 0
    most = 0

    async def request() -> None:
        nonlocal running, most
        async with gate.slot():
            starts.append(trio.current_time())
            running += 1
            most = max(most, running)
            await trio.sleep(3)
            running -= 1

    async def job() -> None:
        async with trio.open_nursery() as pieces:
            for _ in range(20):
                pieces.start_soon(request)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(job)
    starts.sort()
    assert len(starts) == 200 and most == 4
    for index, start in enumerate(starts):
        window = [s for s in starts[index:] if s < start + 60]
        assert len(window) <= 120 + 4
    # four slots of 3 s requests allow 80 per minute, below the rate: the cap decides
    assert trio.current_time() == 150


# ---------------------------------------------------------------- the retry policy


class Flaky:
    """An attempt that fails with the given errors, in order, then answers "ok"."""

    def __init__(self, *errors: Exception, takes: float = 0.0) -> None:
        self.errors = list(errors)
        self.takes = takes
        self.times: list[float] = []

    async def __call__(self) -> str:
        self.times.append(trio.current_time())
        await trio.sleep(self.takes)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_backoff_doubles_up_to_its_cap(autojump_clock: trio.testing.MockClock) -> None:
    """Without jitter, four failures are retried after 1, 2, 4 and 4 s (capped)."""
    attempt = Flaky(*[RetryableError("busy") for _ in range(4)])
    policy = RetryPolicy(initial_delay=1, max_delay=4)
    result = await call_with_retries(attempt, gate=Gate(max_concurrent=1), policy=policy, jitter=lambda: 0.0)
    assert result == "ok" and attempt.times == [0, 1, 3, 7, 11]


async def test_jitter_shortens_each_wait_by_at_most_half(autojump_clock: trio.testing.MockClock) -> None:
    """With the largest jitter the waits are half as long: 0.5, 1 and 2 s."""
    attempt = Flaky(*[RetryableError("busy") for _ in range(3)])
    await call_with_retries(attempt, gate=Gate(max_concurrent=1), policy=RetryPolicy(), jitter=lambda: 1.0)
    assert attempt.times == [0, 0.5, 1.5, 3.5]


async def test_the_servers_wait_is_honoured_instead_of_backoff(autojump_clock: trio.testing.MockClock) -> None:
    """A Retry-After of 7 s means the next attempt at exactly 7 s."""
    attempt = Flaky(RetryableError("rate limited", retry_after=7))
    await call_with_retries(attempt, gate=Gate(max_concurrent=1), policy=RetryPolicy(), jitter=lambda: 0.0)
    assert attempt.times == [0, 7]


async def test_permanent_errors_are_never_retried(autojump_clock: trio.testing.MockClock) -> None:
    """A PermanentError ends the piece after one attempt, at once."""
    attempt = Flaky(PermanentError("bad request"))
    with pytest.raises(PermanentError, match="bad request"):
        await call_with_retries(attempt, gate=Gate(max_concurrent=1), policy=RetryPolicy())
    assert attempt.times == [0] and trio.current_time() == 0


async def test_attempts_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    """After max_attempts retryable failures the piece fails permanently, naming the cause."""
    attempt = Flaky(*[RetryableError("HTTP 503") for _ in range(10)])
    retries: list[int] = []
    with pytest.raises(PermanentError, match="3 attempts: HTTP 503"):
        await call_with_retries(
            attempt, gate=Gate(max_concurrent=1), policy=RetryPolicy(max_attempts=3),
            on_retry=lambda error, failures: retries.append(failures), jitter=lambda: 0.0,
        )  # fmt: skip
    assert len(attempt.times) == 3 and retries == [1, 2]


async def test_the_deadline_bounds_all_attempts_together(autojump_clock: trio.testing.MockClock) -> None:
    """Attempts of 10 s that keep failing are cut off at exactly retry_timeout (25 s)."""
    attempt = Flaky(*[RetryableError("timeout") for _ in range(10)], takes=10)
    with pytest.raises(PermanentError, match="retrying for 25 s"):
        await call_with_retries(attempt, gate=Gate(max_concurrent=1), policy=RetryPolicy(retry_timeout=25), jitter=lambda: 0.0)
    assert trio.current_time() == 25


async def test_the_deadline_starts_when_the_first_slot_is_granted(autojump_clock: trio.testing.MockClock) -> None:
    """A piece queued 100 s behind other work still gets its whole retry_timeout (10 s)."""
    gate = Gate(max_concurrent=1)
    attempt = Flaky(RetryableError("busy"), takes=4)

    holding = trio.Event()

    async def other_work() -> None:
        async with gate.slot():
            holding.set()
            await trio.sleep(100)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_work)
        await holding.wait()  # (Trio does not promise that start_soon runs it first)
        assert await call_with_retries(attempt, gate=gate, policy=RetryPolicy(retry_timeout=10), jitter=lambda: 0.0) == "ok"
    assert attempt.times == [100, 105]


async def test_an_exhausted_quota_makes_pieces_wait_and_resume(autojump_clock: trio.testing.MockClock) -> None:
    """A quota error at t=0 parks this piece and one started later; both send again at t=60
    (outside any retry deadline), and nothing is sent in between."""
    gate = Gate(max_concurrent=4, quota_retry_interval=60)
    first = Flaky(QuotaExhaustedError("no credit"))
    second = Flaky()
    waits: list[tuple[float, str | None]] = []
    policy = RetryPolicy(retry_timeout=5)

    async def later() -> None:
        await trio.sleep(10)
        await call_with_retries(second, gate=gate, policy=policy)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        await call_with_retries(
            first, gate=gate, policy=policy, on_wait=lambda reason: waits.append((trio.current_time(), reason))
        )
    assert first.times == [0, 60] and second.times == [60]
    assert waits == [(0, "quota: no credit"), (60, None)]


async def test_a_day_long_server_pause_is_capped_and_shown_as_waiting(autojump_clock: trio.testing.MockClock) -> None:
    """Retry-After: 86400 holds every request for the gate's max_pause (600 s) only, and the
    piece reports waiting (rate_limit) from t=0 until it goes on at t=600."""
    gate = Gate(max_concurrent=2, max_pause=600)
    flaky = Flaky(RetryableError("rate limited", retry_after=86400))
    waits: list[tuple[float, str | None]] = []
    await call_with_retries(flaky, gate=gate, policy=RetryPolicy(retry_timeout=5000), on_wait=lambda reason: waits.append((trio.current_time(), reason)))
    assert flaky.times == [0, 600]
    assert [(t, (r or "").split(":")[0] or None) for t, r in waits] == [(0, "rate_limit"), (600, None)]


async def test_an_unreachable_server_suspends_spending_instead_of_failing(autojump_clock: trio.testing.MockClock) -> None:
    """Connection failures through the whole retry budget suspend the gate for the
    unreachable interval, then a fresh budget starts; no PermanentError is raised."""
    gate = Gate(max_concurrent=1)
    flaky = Flaky(*[UnreachableError("connection refused")] * 3)
    waits: list[tuple[float, str | None]] = []
    policy = RetryPolicy(max_attempts=3, initial_delay=1, max_delay=1, unreachable_retry_interval=100)
    await call_with_retries(flaky, gate=gate, policy=policy, on_wait=lambda reason: waits.append((trio.current_time(), reason)), jitter=lambda: 0.0)
    assert flaky.times == [0, 1, 2, 102]
    assert [t for t, _ in waits] == [2, 102] and waits[0][1].startswith("unreachable")


async def test_a_429_storm_uses_up_no_attempts(autojump_clock: trio.testing.MockClock) -> None:
    """Twenty 429s in a row, each asking for 3 s, against max_attempts 3: a rate limit is the
    server saying when to come back, not a failed attempt, so the piece is answered at 60 s."""
    storm = [RetryableError("rate limited", retry_after=3, status=429) for _ in range(20)]
    attempt = Flaky(*storm)
    result = await call_with_retries(attempt, gate=Gate(max_concurrent=1), policy=RetryPolicy(max_attempts=3), jitter=lambda: 0.0)
    assert result == "ok" and attempt.times[-1] == 60 and len(attempt.times) == 21


async def test_429s_past_the_deadline_suspend_spending_instead_of_failing(autojump_clock: trio.testing.MockClock) -> None:
    """A server refusing for its rate limit through the whole retry_timeout suspends the gate
    (as an unreachable one does); the piece is answered afterwards, nothing fails."""
    storm = [RetryableError("rate limited", retry_after=10, status=429) for _ in range(5)]
    attempt = Flaky(*storm)
    waits: list[str | None] = []
    policy = RetryPolicy(max_attempts=3, retry_timeout=35, unreachable_retry_interval=100)
    result = await call_with_retries(attempt, gate=Gate(max_concurrent=1), policy=policy, on_wait=waits.append, jitter=lambda: 0.0)
    assert result == "ok" and attempt.times == [0, 10, 20, 30, 135, 145]
    assert any((reason or "").startswith("unreachable: the transcription service kept refusing") for reason in waits)
