"""Fast checks of the operator-facing pieces alone: the web routes in-process (no daemon),
metric labels and recording calls, web.listen parsing, the lock probe, the log sink, --help."""

from __future__ import annotations

import fcntl
import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio.lowlevel
from conftest import FakeEngine, SyntheticDecoder, make_config
from rich.console import Console
from transcribed import metrics
from transcribed.cli import main
from transcribed.engines import gate_for
from transcribed.errors import ConfigError, RetryableError
from transcribed.jobs import Services
from transcribed.progress import JobProgress, ProgressBoard
from transcribed.reporting import ConsoleSink
from transcribed.status import daemon_state
from transcribed.web import Address, parse_listen, serve_web


@asynccontextmanager
async def site(root: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services, ProgressBoard]]:
    """serve_web on a free loopback port over real services, and a client for it."""
    config = make_config(root, **{"web.listen": "127.0.0.1:0"})
    for folder in config.folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    engine = FakeEngine()
    board = ProgressBoard(config.folder("outbox"))
    services = Services(config=config, engine=engine, gate=gate_for(config, engine.traits), board=board, decoder=SyntheticDecoder())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        address: Address = await nursery.start(serve_web, config, services, metrics.Metrics())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{address.port}", timeout=10) as client:
            yield client, services, board
        nursery.cancel_scope.cancel()


async def test_healthz_turns_503_with_the_reason_while_draining(tmp_path: Path) -> None:
    """/healthz is 200 while serving and 503 naming the drain once the daemon stops."""
    with trio.fail_after(20):
        async with site(tmp_path) as (client, services, _):
            ok = await client.get("/healthz")
            services.draining.set()
            draining = await client.get("/healthz")
    assert ok.status_code == 200 and ok.json()["reasons"] == []
    assert draining.status_code == 503 and draining.json()["reasons"][0].startswith("draining")


async def test_the_api_shows_the_live_board_and_the_page_ships_its_own_script(tmp_path: Path) -> None:
    """/api/status lists a job on the board with its progress; / and /page.js come from the
    package with a policy that allows no script from elsewhere."""
    with trio.fail_after(20):
        async with site(tmp_path) as (client, _, board):
            progress = board.add(JobProgress(source="a.mp3", job_id="j1", engine="fake", model="fake-1"), "a")
            board.update(progress, state="transcribing", audio_seconds_total=100.0, audio_seconds_done=25.0, pieces_in_flight=2)
            data = (await client.get("/api/status")).json()
            page = await client.get("/")
            script = await client.get("/page.js")
            head = await client.head("/")
    assert [(j["source"], j["state"], j["percent"]) for j in data["jobs"]] == [("a.mp3", "transcribing", 25.0)]
    assert data["daemon"]["running"] is True and data["engine"] == {"name": "fake", "model": "fake-1"}
    assert page.status_code == 200 and '<script src="/page.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200 and "textContent" in script.text and "innerHTML" not in script.text
    assert head.status_code == 200 and head.content == b""


async def test_metrics_gauges_come_from_the_board_at_scrape_time(tmp_path: Path) -> None:
    """jobs_running, pieces_in_flight and waiting{reason} are what the board says when scraped."""
    with trio.fail_after(20):
        async with site(tmp_path) as (client, _, board):
            running = board.add(JobProgress(source="a.mp3", job_id="a", engine="fake", model="m"), "a")
            waiting = board.add(JobProgress(source="b.mp3", job_id="b", engine="fake", model="m"), "b")
            board.update(running, state="transcribing", pieces_in_flight=3)
            board.update(waiting, state="waiting", waiting_reason="disk: less than 512 MiB free under /x")
            (tmp_path / "inbox" / "c.mp3").write_bytes(b"x")
            first = (await client.get("/metrics")).text
            board.update(waiting, state="transcribing", waiting_reason=None)
            second = (await client.get("/metrics")).text
    assert "transcribed_jobs_running 2.0" in first and "transcribed_pieces_in_flight 3.0" in first
    assert 'transcribed_waiting{reason="disk"} 1.0' in first and "transcribed_inbox_files 1.0" in first
    assert 'transcribed_waiting{reason="disk"} 0.0' in second


def test_retry_reasons_and_waiting_labels_are_a_few_bounded_values() -> None:
    """Labels come from the error's type and status, never from free text."""
    assert metrics.retry_reason(RetryableError("x", status=429)) == "rate_limited"
    assert metrics.retry_reason(RetryableError("x", status=503)) == "server_error"
    timeout = RetryableError("x")
    timeout.__cause__ = httpx.ReadTimeout("t")
    assert metrics.retry_reason(timeout) == "timeout"
    broken = RetryableError("x")
    broken.__cause__ = httpx.ConnectError("c")
    assert metrics.retry_reason(broken) == "connection_error"
    assert metrics.retry_reason(RetryableError("worker crashed")) == "other"
    assert metrics.waiting_label("quota") == "quota"
    assert metrics.waiting_label("disk: less than 512 MiB free under /srv/a") == "disk"
    assert metrics.waiting_label("daemon stopped; resumes at its next start") == "daemon_stopped"
    assert metrics.waiting_label(None) == "unknown"


async def test_recording_calls_feed_only_the_active_metrics_and_count_a_failed_piece() -> None:
    """Without an active Metrics the calls do nothing; with one, a failed piece is counted
    failed and a transcribed one adds its latency and cost; a request of three stitched pieces
    counts three pieces, once for its cost."""
    from transcribed.engines.base import PieceResult

    metrics.count_request(200)  # no active metrics in this task: nothing to feed, no error
    active = metrics.activate(metrics.Metrics())

    async def good() -> PieceResult:
        await trio.lowlevel.checkpoint()
        return PieceResult(cost=0.25)

    async def bad() -> PieceResult:
        raise RetryableError("no")

    await metrics.timed_piece(good())
    with pytest.raises(RetryableError):
        await metrics.timed_piece(bad())
    metrics.count_request(httpx.ReadTimeout("t"))
    text = active.render(None, 0).decode()
    assert 'transcribed_pieces_total{result="transcribed"} 1.0' in text
    assert 'transcribed_pieces_total{result="failed"} 1.0' in text
    assert "transcribed_cost_dollars_total 0.25" in text
    await metrics.timed_piece(good(), pieces=3)
    text = active.render(None, 0).decode()
    assert 'transcribed_pieces_total{result="transcribed"} 4.0' in text
    assert "transcribed_cost_dollars_total 0.5" in text
    assert 'transcribed_requests_total{status="timeout"} 1.0' in text


def test_web_listen_accepts_host_port_forms_and_refuses_others() -> None:
    """HOST:PORT, [IPv6]:PORT and :PORT parse; anything else is a configuration error."""
    assert parse_listen("127.0.0.1:8750") == Address(host="127.0.0.1", port=8750)
    assert parse_listen("[::1]:9000") == Address(host="::1", port=9000)
    assert parse_listen(":8750").host == "127.0.0.1" and parse_listen(":8750").loopback
    assert not parse_listen("0.0.0.0:8750").loopback
    for bad in ("8750", "localhost", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match=r"web\.listen"):
            parse_listen(bad)


def test_the_lock_probe_sees_a_held_flock_and_releases_its_own(tmp_path: Path) -> None:
    """No file or an unlocked file means no daemon; an exclusive flock held elsewhere means one
    runs (its pid read from the file); probing leaves the lock free for a daemon to take."""
    assert daemon_state(tmp_path).running is False
    lock = tmp_path / ".lock"
    lock.write_text("4242\n")
    assert daemon_state(tmp_path).running is False
    holder = os.open(lock, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        state = daemon_state(tmp_path)
    finally:
        os.close(holder)
    assert state.running is True and state.pid == 4242
    taker = os.open(lock, os.O_RDWR)
    fcntl.flock(taker, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if the probe had kept a lock
    os.close(taker)


def test_the_console_sink_prints_whole_lines_however_they_are_written() -> None:
    """structlog writes a message and its newline separately; the sink prints each line whole."""
    buffer = io.StringIO()
    sink = ConsoleSink(Console(file=buffer, force_terminal=False, width=200))
    sink.write("2026-12-01T18:22:57Z [info] job.finished")
    assert buffer.getvalue() == ""
    sink.write("\n")
    sink.write("second\nthird")
    assert buffer.getvalue().splitlines() == ["2026-12-01T18:22:57Z [info] job.finished", "second"]


def test_help_shows_every_keys_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`run --help` names each key's default (the issue: --help showed no defaults)."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 5.0)" in text and "(default: 127.0.0.1:8750)" in text
    assert "--job-workers JOB_WORKERS jobs worked on at the same time (default: 2)" in text


async def test_a_port_in_use_leaves_the_daemon_without_its_page_but_working(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """When web.listen cannot be bound, serve_web logs web.unavailable and reports None
    instead of failing (transcription must not stop for the page)."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = make_config(tmp_path, **{"web.listen": f"127.0.0.1:{port}"})
    engine = FakeEngine()
    services = Services(config=config, engine=engine, gate=gate_for(config, engine.traits), board=ProgressBoard(None), decoder=SyntheticDecoder())  # type: ignore[arg-type]
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                address = await nursery.start(serve_web, config, services, metrics.Metrics())
    finally:
        taken.close()
    captured = capsys.readouterr()
    assert address is None and "web.unavailable" in captured.out + captured.err


async def test_healthz_names_a_worker_whose_job_stopped_moving(tmp_path: Path) -> None:
    """A transcribing job untouched for longer than twice the longest step turns /healthz 503
    naming it; a job waiting (for quota, for disk) for as long does not."""
    from datetime import UTC, datetime, timedelta

    with trio.fail_after(20):
        async with site(tmp_path) as (client, services, board):
            clock = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
            board.now = lambda: clock[0]
            stuck = board.add(JobProgress(source="stuck.mp3", job_id="s", engine="fake", model="m"), "s")
            waiting = board.add(JobProgress(source="patient.mp3", job_id="w", engine="fake", model="m"), "w")
            board.update(stuck, state="transcribing")
            board.update(waiting, state="waiting", waiting_reason="quota")
            fresh = await client.get("/healthz")
            limit = 2 * max(services.config.decode_stall_timeout, services.config.openai.request_timeout)
            clock[0] += timedelta(seconds=limit + 5)
            stale = await client.get("/healthz")
    assert fresh.status_code == 200
    assert stale.status_code == 503
    assert stale.json()["reasons"] == [f"worker: stuck.mp3 (transcribing) made no progress for {limit + 5:.0f} s"]
