"""Answers the OpenAI engine cannot trust, against the real OpenAI-like server on 127.0.0.1: a
request that hangs or stalls is given up after the deadline learned from the answers so far
(not request_timeout) and counted as possibly billed, an answer that trickles is left alone
while bytes arrive, an answer larger than its piece can need is cut off in bounded memory, and
an unusable 200 is retried once, after which spending stops."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
import trio.testing
from openai_server import FakeOpenAI, ServerSettings
from transcribed.config import OpenAIConfig
from transcribed.engines.base import PieceResult, PreparedPiece
from transcribed.engines.latency import LatencyModel
from transcribed.engines.openai import BoundedBody, OpenAIEngine, answer_limit, open_openai_engine
from transcribed.errors import AnswersUnusableError, RetryableError, UnusableAnswerError
from transcribed.gate import Gate
from transcribed.retry import call_with_retries

WAIT = 200  # virtual seconds (the clock runs ten times faster than real time)
REQUEST_TIMEOUT = 300.0
PIECE_SECONDS = 20.0


@pytest.fixture
def fast_clock() -> trio.testing.MockClock:
    """Virtual time ten times faster than real time: a 15 s deadline passes in 1.5 s, while the
    real work (ffmpeg on both sides, loopback I/O) counts ten times over, as a slower machine's
    would. No autojump: a jump while a child process runs could fire a deadline early."""
    return trio.testing.MockClock(rate=10)


def noise(seed: int, seconds: float = PIECE_SECONDS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3000, round(seconds * 16000)).clip(-32768, 32767).astype(np.int16)


@asynccontextmanager
async def engine_and_server(settings: ServerSettings | None = None, **config: object) -> AsyncIterator[tuple[OpenAIEngine, FakeOpenAI]]:
    server = FakeOpenAI(settings or ServerSettings())
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        options: dict[str, object] = {"base_url": url, "price_per_minute": 0.006, "max_concurrent_requests": 4, "retry_delay": 0.1, "request_timeout": REQUEST_TIMEOUT, **config}
        async with open_openai_engine(OpenAIConfig(**options)) as engine:  # type: ignore[arg-type]
            yield engine, server
        nursery.cancel_scope.cancel()


async def send_all(engine: OpenAIEngine, pieces: list[PreparedPiece], gate: Gate) -> tuple[list[PieceResult], list[str]]:
    """Every piece through the gate with the engine's retry policy, as a job sends them; the
    results in order, and the reason of every retry."""
    results: list[PieceResult | None] = [None] * len(pieces)
    retries: list[str] = []

    async def one(index: int) -> None:
        results[index] = await call_with_retries(lambda: engine.transcribe(pieces[index]), gate=gate, policy=engine.traits.retry, on_retry=lambda error, failures: retries.append(error.reason))

    async with trio.open_nursery() as nursery:
        for index in range(len(pieces)):
            nursery.start_soon(one, index)
    return [r for r in results if r is not None], retries


def waited(reason: str, what: str) -> int:
    """The seconds an abandoned request waited, from its retry's reason."""
    found = re.search(rf"{what} for (\d+) s after", reason)
    assert found, reason
    return int(found.group(1))


def peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak (VmHWM) starts again from what the process holds now


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+)", status.read()).group(1)) / 1024  # type: ignore[union-attr]


# ---------------------------------------------------------------- hangs


@pytest.mark.parametrize("hung", [0, 6], ids=["in-the-first-round", "after-answers"])
async def test_a_hung_request_is_given_up_after_the_learned_deadline(fast_clock: trio.testing.MockClock, hung: int) -> None:
    """Twelve 20 s pieces, four in flight; one request's body is read and never answered. It is
    abandoned once it has waited the deadline the other answers taught (the 15 s floor; more on
    a loaded machine, whose slower answers teach more patience), whether it went out before any
    answer came back or after, and retried: all twelve are done in a fraction of
    request_timeout's 300 s, each answered once, and only the hung piece carries a possibly
    billed cost (its own price)."""
    async with engine_and_server() as (engine, server):
        pieces = [await engine.prepare(noise(seed)) for seed in range(12)]
        server.script.extend([None] * hung + ["hang"])
        started = trio.current_time()
        with trio.fail_after(WAIT):
            results, retries = await send_all(engine, pieces, Gate(max_concurrent=4))
        elapsed = trio.current_time() - started
    assert elapsed < REQUEST_TIMEOUT / 2, elapsed
    assert server.stats.injected["hang"] == 1 and server.stats.requests == 13
    assert len(retries) == 1 and 15 <= waited(retries[0], "no answer came") <= REQUEST_TIMEOUT / 3
    assert set(server.stats.answered.values()) == {1} and len(server.stats.answered) == 12
    billed = [r.possibly_billed_cost for r in results]
    assert sorted(billed) == [0.0] * 11 + [pytest.approx(engine.traits.cost(PIECE_SECONDS))]


@pytest.mark.parametrize(("fault", "retried"), [("trickle", False), ("stall", True)])
async def test_an_answer_that_trickles_is_left_alone_one_that_stalls_is_a_hang(fast_clock: trio.testing.MockClock, fault: str, retried: bool) -> None:
    """After six answers taught the deadline (15 s for a 20 s piece; more on a loaded machine),
    an answer that arrives a few bytes a second over 90 s is read to its end, never retried;
    one that sends its headers and half its body and then nothing is given up a deadline after
    its last byte and retried."""
    settings = ServerSettings(trickle_seconds=90.0, trickle_interval=1.0)
    async with engine_and_server(settings) as (engine, server):
        pieces = [await engine.prepare(noise(seed)) for seed in range(8)]
        server.script.extend([None] * 6 + [fault])
        started = trio.current_time()
        with trio.fail_after(WAIT):
            results, retries = await send_all(engine, pieces, Gate(max_concurrent=4))
        elapsed = trio.current_time() - started
        patience = engine.latency.patience(PIECE_SECONDS)
    assert server.stats.injected[fault] == 1 and len(results) == 8
    assert 15.0 <= patience < settings.trickle_seconds
    if retried:
        assert len(retries) == 1 and 15 <= waited(retries[0], "the answer stopped arriving") < settings.trickle_seconds
        assert server.stats.requests == 9 and elapsed < REQUEST_TIMEOUT / 2
    else:
        assert retries == [] and server.stats.requests == 8 and elapsed >= settings.trickle_seconds


def test_the_deadline_is_the_ceiling_until_answers_teach_it() -> None:
    """Until four answers are in, a request may wait request_timeout; then the deadline is the
    multiple (3) of the slowest recent answers' seconds per audio second, at least the floor
    (15 s) and at most the ceiling; one slow answer among many raises it, as it should."""
    model = LatencyModel(ceiling=300.0)
    for _ in range(3):
        model.learn(1.0, 100.0)
    assert model.patience(100.0) == 300.0
    model.learn(1.0, 100.0)
    assert model.patience(100.0) == 15.0  # 3 x 0.01 s/s x 100 s = 3 s: the floor
    assert model.patience(1000.0) == pytest.approx(30.0)
    model.learn(10.0, 100.0)  # one answer at 0.1 s per audio second
    assert model.patience(100.0) == pytest.approx(30.0)
    assert model.patience(10000.0) == 300.0


def test_short_pieces_do_not_make_a_long_one_wait_twice_its_due() -> None:
    """Short pieces (20 s answered in 2.8 s: 0.14 s per audio second, the server's fixed cost
    a request included) set no long piece's deadline once long ones have answered (120 s in
    12.8 s: 0.107 s/s): a 120 s piece may wait 3 x 0.107 x 120 s, not 3 x 0.14 x 120 s."""
    model = LatencyModel(ceiling=300.0)
    for _ in range(8):
        model.learn(2.8, 20.0)
    assert model.patience(120.0) == pytest.approx(3 * 0.14 * 120)  # nothing longer known yet
    for _ in range(4):
        model.learn(12.8, 120.0)
    assert model.patience(120.0) == pytest.approx(3 * 12.8 / 120 * 120)
    assert model.patience(20.0) == 15.0  # short pieces by every answer: 3 x 0.14 x 20 s < floor


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(("fault", "first_error"), [("oversized", UnusableAnswerError), ("oversized_error", RetryableError)])
async def test_an_oversized_answer_is_cut_off_in_bounded_memory(fault: str, first_error: type[Exception]) -> None:
    """The server answers a 20 s piece with 100 MB (a 200, or a 500's error page): the engine
    reads no more than the piece's bound, the process's peak memory grows by less than 50 MiB,
    and the retry that follows is answered (two requests in all)."""
    async with engine_and_server() as (engine, server):
        piece = await engine.prepare(noise(1))
        server.script.append(fault)
        peak_rss_reset()
        before = peak_rss_mib()
        with trio.fail_after(60):
            with pytest.raises(first_error) as raised:
                await engine.transcribe(piece)
            result = await engine.transcribe(piece)
        growth = peak_rss_mib() - before
    assert growth < 50, f"peak RSS grew by {growth:.0f} MiB"
    assert server.stats.requests == 2 and result.segments
    if fault == "oversized":
        assert f"larger than {answer_limit(PIECE_SECONDS)} bytes" in raised.value.reason  # type: ignore[attr-defined]
        assert result.possibly_billed_cost == pytest.approx(engine.traits.cost(PIECE_SECONDS))


@pytest.mark.parametrize("fault", ["malformed", "oversized"])
async def test_an_unusable_answer_is_retried_once_then_spending_stops(fast_clock: trio.testing.MockClock, fault: str) -> None:
    """A 200 that cannot be used (JSON cut in half, or over the piece's bound) was billed: the
    piece retries it once; a second one suspends all spending (reason `answers`) instead of
    paying on or failing the file. Two requests in all, both counted as possibly billed."""
    async with engine_and_server(**{"quota_retry_interval": 900.0}) as (engine, server):
        piece = await engine.prepare(noise(2))
        server.script.extend([fault, fault])
        gate = Gate(max_concurrent=4, quota_retry_interval=900.0)
        retries: list[str] = []
        with trio.move_on_after(20):
            await call_with_retries(lambda: engine.transcribe(piece), gate=gate, policy=engine.traits.retry, on_retry=lambda error, failures: retries.append(error.reason))
        assert isinstance(gate.suspension, AnswersUnusableError) and gate.suspension.kind == "answers"
        assert "again after its one retry" in gate.suspension.reason
    assert server.stats.requests == 2 and len(retries) == 1
    assert piece.ledger.possibly_billed_cost == pytest.approx(2 * engine.traits.cost(PIECE_SECONDS))


def test_a_compressed_answer_is_inflated_only_up_to_its_bound() -> None:
    """A proxy may gzip an answer the client asked to get plain: 100 MB of zeros in 100 KB of
    gzip stops inflating at the bound, and a body in an encoding it cannot bound is refused."""
    bomb = gzip.compress(bytes(100 << 20))
    body = BoundedBody("gzip", answer_limit(20))
    fed = [body.feed(bomb[start : start + 65536]) for start in range(0, len(bomb), 65536)]
    assert body.over_limit and False in fed and len(body.data) <= answer_limit(20) + 1
    plain = BoundedBody("gzip", 1000)
    assert plain.feed(gzip.compress(b'{"text": "fine"}')) and bytes(plain.data) == b'{"text": "fine"}'
    assert not BoundedBody("br", 1000).feed(b"anything")
