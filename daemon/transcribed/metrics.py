"""Prometheus metrics: events counted where they happen, gauges read from the board at scrape time.

Counters and the latency histogram are fed by a few one-line calls at the points where things
happen (the job boundary, a piece, an HTTP request); the gauges (jobs running, pieces in
flight, jobs waiting by reason, files in the inbox) are not kept up to date by anyone: they are
read from the ProgressBoard and the inbox when /metrics is scraped, so they cannot drift from
what the page and the progress files show.

The recording calls find the daemon's `Metrics` through a context variable that `activate`
sets before the root nursery opens (every task inherits it). Outside a daemon (the one-shot
command, unit tests) no Metrics is active and the calls do nothing.
"""

from __future__ import annotations

import contextvars
import re
from collections import Counter
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import httpx
import trio
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter

from transcribed.errors import RetryableError

if TYPE_CHECKING:
    from transcribed.engines.base import PieceResult
    from transcribed.progress import ProgressBoard

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PIECE_LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
ACTIVE_STATES = ("validating", "transcribing", "merging", "waiting")

_active: contextvars.ContextVar[Metrics | None] = contextvars.ContextVar(
    "transcribed_metrics", default=None
)


class Metrics:
    """One daemon's metrics, in a registry of their own (tests run many daemons in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_finished = PromCounter(
            "transcribed_jobs_finished",
            "jobs concluded, by outcome (done, failed)",
            ["outcome"],
            registry=r,
        )
        self.pieces = PromCounter(
            "transcribed_pieces",
            "pieces accounted for, by result (transcribed, failed, reused from the journal, silent)",
            ["result"],
            registry=r,
        )
        self.requests = PromCounter(
            "transcribed_requests",
            "HTTP requests to the OpenAI-compatible server, by status code (or timeout, connection_error)",
            ["status"],
            registry=r,
        )
        self.retries = PromCounter(
            "transcribed_retries",
            "piece attempts retried, by reason (rate_limited, server_error, timeout, connection_error, other)",
            ["reason"],
            registry=r,
        )
        self.audio_seconds = PromCounter(
            "transcribed_audio_seconds", "seconds of audio in jobs finished done", registry=r
        )
        self.cost = PromCounter(
            "transcribed_cost_dollars",
            "US dollars spent on pieces transcribed by this process",
            registry=r,
        )
        self.piece_latency = Histogram(
            "transcribed_piece_latency_seconds",
            "seconds from a piece's first attempt to its answer, retries and waits included",
            buckets=PIECE_LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs_running = Gauge(
            "transcribed_jobs_running", "jobs claimed and not yet concluded", registry=r
        )
        self.inbox_files = Gauge(
            "transcribed_inbox_files",
            "entries waiting in the inbox (settling or queued)",
            registry=r,
        )
        self.pieces_in_flight = Gauge(
            "transcribed_pieces_in_flight", "pieces being transcribed now", registry=r
        )
        self.waiting = Gauge(
            "transcribed_waiting",
            "jobs waiting, by reason (quota, disk, rate limit...)",
            ["reason"],
            registry=r,
        )
        self._waiting_reasons: set[str] = set()
        for outcome in ("done", "failed"):
            self.jobs_finished.labels(outcome)
        for result in ("transcribed", "failed", "reused", "silent"):
            self.pieces.labels(result)

    def render(self, board: ProgressBoard | None, inbox_files: int) -> bytes:
        """The text exposition, with the gauges read from the board now."""
        jobs = [] if board is None else list(board.jobs.values())
        active = [job for job in jobs if job.state in ACTIVE_STATES]
        self.jobs_running.set(len(active))
        self.pieces_in_flight.set(sum(job.pieces_in_flight for job in jobs))
        self.inbox_files.set(inbox_files)
        waiting = Counter(
            waiting_label(job.waiting_reason) for job in jobs if job.state == "waiting"
        )
        for reason in self._waiting_reasons - set(waiting):
            self.waiting.labels(reason).set(0)  # a reason seen once stays, at zero
        for reason, count in waiting.items():
            self.waiting.labels(reason).set(count)
        self._waiting_reasons |= set(waiting)
        return generate_latest(self.registry)


def activate(metrics: Metrics) -> Metrics:
    """Make `metrics` the one the recording calls feed, in this task and every task it spawns
    from now on (trio gives each task a copy of its parent's context)."""
    _active.set(metrics)
    return metrics


def waiting_label(reason: str | None) -> str:
    """A bounded label from a waiting reason: its first words before any detail."""
    if not reason:
        return "unknown"
    head = re.split(r"[:;(]", reason, maxsplit=1)[0].strip().lower()
    return re.sub(r"[^a-z0-9]+", "_", head).strip("_")[:32] or "unknown"


def retry_reason(error: RetryableError) -> str:
    """Why a piece was retried, as one of a few label values."""
    cause = error.__cause__
    if isinstance(cause, httpx.TimeoutException | trio.TooSlowError):
        return "timeout"
    if isinstance(cause, httpx.TransportError):
        return "connection_error"
    if error.status == 429:
        return "rate_limited"
    if error.status is not None:
        return "server_error"
    return "other"


# ---------------------------------------------------------------- the recording calls


def count_request(answer: int | BaseException) -> None:
    """One HTTP request ended: with a status code, or with a transport error."""
    if (metrics := _active.get()) is None:
        return
    if isinstance(answer, int):
        status = str(answer)
    elif isinstance(answer, httpx.TimeoutException | trio.TooSlowError):
        status = "timeout"
    else:
        status = "connection_error"
    metrics.requests.labels(status).inc()


def count_retry(error: RetryableError) -> None:
    if (metrics := _active.get()) is not None:
        metrics.retries.labels(retry_reason(error)).inc()


def count_piece(result: str) -> None:
    """A piece accounted for without being sent: `reused` (journaled) or `silent`."""
    if (metrics := _active.get()) is not None:
        metrics.pieces.labels(result).inc()


async def timed_piece(work: Awaitable[PieceResult], *, pieces: int = 1) -> PieceResult:
    """Await one request's transcription (all its attempts), counting its `pieces` (stitched
    pieces share a request), its latency and cost."""
    metrics = _active.get()
    started = trio.current_time()
    try:
        result = await work
    except Exception:
        if metrics is not None:
            metrics.pieces.labels("failed").inc(pieces)
        raise
    if metrics is not None:
        metrics.pieces.labels("transcribed").inc(pieces)
        metrics.piece_latency.observe(trio.current_time() - started)
        metrics.cost.inc(result.cost)
    return result


def count_job(summary: dict[str, object]) -> None:
    """A job concluded (the job boundary's summary, as notify.py sends it)."""
    if (metrics := _active.get()) is None:
        return
    outcome = str(summary.get("outcome"))
    metrics.jobs_finished.labels(outcome).inc()
    audio = summary.get("audio_seconds")
    if outcome == "done" and isinstance(audio, int | float):
        metrics.audio_seconds.inc(audio)
