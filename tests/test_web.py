"""The daemon's HTTP face against a real daemon process: /api/status, /healthz, /metrics, and
the outbox route that serves only what the daemon published (hostile names, `..`, links)."""

from __future__ import annotations

import math
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import TWO_CITIES, make_media
from daemon_process import Daemon, FakeServer, wait

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeServer]:
    running = FakeServer(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    return make_media(tmp_path / "recording.mp3", TWO_CITIES)


def drop(root: Path, source: Path, name: str) -> None:
    staging = root / "inbox" / f".{name}.part"
    shutil.copy(source, staging)
    os.rename(staging, root / "inbox" / name)


def raw_get(port: int, target: str, *, host: str | None = None, method: str = "GET", extra: str = "") -> tuple[int, bytes]:
    """One request sent byte for byte as given (no client normalises `..` away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\n{extra}\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def done_job(daemon: Daemon, source: str) -> dict:
    return wait(lambda: next((job for job in daemon.status()["done"] if job["source"] == source), None), f"{source} done", 120, daemon.process)


def test_the_outbox_route_serves_published_transcripts_and_nothing_else(tmp_path: Path, server: FakeServer, recording: Path) -> None:
    """A published transcript (hostile name included) is served as it is on disk; `..` in any
    spelling, files the daemon did not publish, progress files, links planted in the outbox or
    put in place of a published output, a foreign Host, a POST or a body all get no file."""
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    hostile = "Sitzung <script>alert(1)</script> Ü %2e%2e & 'x'.mp3".replace("/", "")
    daemon = Daemon(root, server)
    try:
        drop(root, recording, hostile)
        drop(root, recording, "plain.mp3")
        job = done_job(daemon, hostile)
        done_job(daemon, "plain.mp3")
        outbox = root / "outbox"
        assert len(job["outputs"]) == 5  # txt srt vtt docx json
        for name in job["outputs"]:
            answer = daemon.get("/outbox/" + quote(name))
            assert answer.status_code == 200, name
            assert answer.content == (outbox / name).read_bytes()
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert "sandbox" in answer.headers["content-security-policy"]
        (outbox / "planted.txt").write_text("not the daemon's\n")
        os.symlink("/etc/passwd", outbox / "link.txt")
        (outbox / "plain.srt").unlink()
        os.symlink("/etc/passwd", outbox / "plain.srt")  # a published name, now a link
        (tmp_path / "secret.txt").write_text("outside the outbox\n")
        refused = [
            "/outbox/planted.txt",
            "/outbox/link.txt",
            "/outbox/plain.srt",
            "/outbox/plain.progress.json",
            "/outbox/../secret.txt",
            "/outbox/..%2Fsecret.txt",
            "/outbox/%2e%2e%2fsecret.txt",
            "/outbox/%2e%2e/%2e%2e/secret.txt",
            "/outbox/..%5Csecret.txt",
            "/outbox/plain.txt%00.json",
            "/outbox/",
            "/outbox/%ff%fe.txt",
            "/../secret.txt",
            "/outbox//etc/passwd",
            "/etc/passwd",
        ]
        answers = {target: raw_get(daemon.port, target) for target in refused}
        assert raw_get(daemon.port, "/outbox/plain.txt")[0] == 200
        foreign_host = raw_get(daemon.port, "/outbox/plain.txt", host="evil.example:80")
        posted = raw_get(daemon.port, "/api/status", method="POST")
        with_body = raw_get(daemon.port, "/api/status", method="GET", extra="Content-Length: 5\r\n")
    finally:
        assert daemon.stop() == 0

    for target, (status_code, body) in answers.items():
        assert status_code == 404, target
        assert b"root:" not in body and b"outside the outbox" not in body and b"not the daemon" not in body, target
    assert foreign_host[0] == 421
    assert posted[0] == 405
    assert with_body[0] == 413


def test_healthz_is_200_while_serving_and_503_with_the_reason_when_spending_stops_or_draining(tmp_path: Path, server: FakeServer, recording: Path) -> None:
    """/healthz says ok while the daemon serves; when the account's quota runs out it says 503
    naming the quota (and /metrics counts the waiting job by reason); while it drains after
    SIGTERM it says 503 naming the drain."""
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    daemon = Daemon(root, server, "--drain-timeout", "5", "--openai-max-concurrent-requests", "1")
    try:
        healthy = daemon.get("/healthz")
        server.control(script=["quota"])
        drop(root, recording, "hearing.mp3")
        quota = wait(lambda: (a := daemon.get("/healthz")).status_code == 503 and a, "a 503 for the quota", 60, daemon.process)
        waiting = wait(lambda: daemon.metrics().get('transcribed_waiting{reason="quota"}') == 1 and daemon.metrics(), "the waiting gauge", 30)
        job = daemon.status()["jobs"][0]
        daemon.process.send_signal(15)
        draining = wait(lambda: "draining" in (a := daemon.get("/healthz")).text and a, "a 503 for the drain", 30)
    finally:
        assert daemon.stop() == 0

    assert healthy.status_code == 200 and healthy.json()["status"] == "ok" and healthy.json()["reasons"] == []
    assert quota.json()["status"] == "unhealthy"
    assert any(reason.startswith("quota:") for reason in quota.json()["reasons"])
    assert waiting["transcribed_jobs_running"] == 1
    assert job["state"] == "waiting" and job["waiting_reason"].startswith("quota: ")
    assert draining.status_code == 503 and any(r.startswith("draining") for r in draining.json()["reasons"])


def test_metrics_count_jobs_pieces_requests_retries_audio_cost_and_latency(tmp_path: Path, server: FakeServer, recording: Path) -> None:
    """After one job that met one server error and one file that was rejected, every counter
    agrees with what happened: jobs by outcome, pieces, requests by status, the retry by
    reason, audio seconds, cost and the latency histogram; while a job runs the gauges show it
    and a file waiting in the inbox."""
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    daemon = Daemon(root, server, "--job-workers", "1", "--openai-max-concurrent-requests", "1")
    try:
        before = daemon.metrics()
        server.control(script=["server_error"], service_per_second=0.1)
        drop(root, recording, "hearing.mp3")
        running = wait(lambda: (m := daemon.metrics())["transcribed_pieces_in_flight"] >= 1 and m, "a piece in flight", 60, daemon.process)
        drop(root, recording, "second.mp3")
        drop(root, recording, "third.mp3")
        waiting = wait(lambda: (m := daemon.metrics())["transcribed_inbox_files"] == 1 and m, "a file waiting in the inbox", 60, daemon.process)
        server.control(service_per_second=0.0)
        (root / "inbox" / "notes.mp3").write_bytes(b"not a recording\n")
        jobs = [done_job(daemon, name) for name in ("hearing.mp3", "second.mp3", "third.mp3")]
        wait(lambda: daemon.metrics()['transcribed_jobs_finished_total{outcome="failed"}'] == 1, "the rejected file counted", 60)
        after = daemon.metrics()
    finally:
        assert daemon.stop() == 0

    pieces = sum(job["pieces"]["total"] for job in jobs)
    assert before['transcribed_jobs_finished_total{outcome="done"}'] == 0
    assert running["transcribed_jobs_running"] == 1
    assert waiting["transcribed_inbox_files"] == 1
    assert after['transcribed_jobs_finished_total{outcome="done"}'] == 3
    assert after['transcribed_jobs_finished_total{outcome="failed"}'] == 1
    assert after['transcribed_pieces_total{result="transcribed"}'] == pieces
    assert after['transcribed_requests_total{status="200"}'] == pieces
    assert after['transcribed_requests_total{status="500"}'] == 1
    assert after['transcribed_retries_total{reason="server_error"}'] == 1
    assert after["transcribed_piece_latency_seconds_count"] == pieces
    assert after["transcribed_piece_latency_seconds_sum"] > 0
    assert math.isclose(after["transcribed_audio_seconds_total"], sum(job["audio_seconds"]["total"] for job in jobs), abs_tol=0.05)
    assert math.isclose(after["transcribed_cost_dollars_total"], sum(job["cost"]["spent"] for job in jobs), abs_tol=0.0005)
    assert after["transcribed_cost_dollars_total"] > 0
    assert after["transcribed_jobs_running"] == 0 and after["transcribed_pieces_in_flight"] == 0
