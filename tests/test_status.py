"""`transcribed status` tells the truth: the inbox queue, running and waiting jobs, done ones
with their (possibly -2) output names, failed and rejected files with the reason; `stopped`
when no daemon holds work/.lock; names escaped once; JSON for scripts; a missing root is an
error; a closed pipe ends quietly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TWO_CITIES, make_media
from daemon_process import Daemon, FakeServer, wait
from transcribed.cli import main
from transcribed.naming import display_name

STALE = {
    "source": "hearing.mp3", "job_id": "20261201T180000-aaaaaa", "state": "transcribing",
    "waiting_reason": None, "percent": 44.3, "eta_seconds": 26,
    "pieces": {"total": None, "done": 3, "in_flight": 2, "failed": 0},
    "audio_seconds": {"total": 44.4, "done": 19.7}, "engine": "openai", "model": "whisper-1",
    "cost": {"estimated": 0.0044, "spent": 0.002}, "retries": 0, "last_error": None,
    "started_at": "2026-12-01T18:00:00Z", "updated_at": "2026-12-01T18:00:10Z",
    "finished_at": None, "outputs": [],
}  # fmt: skip
ODD_NAME = display_name(b"Sitzung\xff\n2.mp3")  # as the daemon writes it: Sitzung\xff\n2.mp3


def build_root(root: Path) -> None:
    """A root as a daemon leaves it: one file of each kind."""
    for folder in ("inbox", "outbox", "work", "done", "failed"):
        (root / folder).mkdir(parents=True)
    (root / "inbox" / "old.mp3").write_bytes(b"x" * 1000)
    os.utime(root / "inbox" / "old.mp3", (time.time() - 600, time.time() - 600))
    (root / "inbox" / "arriving.mp3").write_bytes(b"x" * 10)
    (root / "inbox" / "copying.mp3.part").write_bytes(b"x")
    (root / "outbox" / "hearing.progress.json").write_text(json.dumps(STALE))
    done = {**STALE, "source": ODD_NAME, "job_id": "20261201T170000-bbbbbb", "state": "done", "percent": 100.0,
            "eta_seconds": None, "outputs": ["beckett-2.txt", "beckett-2.srt", "beckett-2.vtt", "beckett-2.json"]}  # fmt: skip
    (root / "outbox" / "beckett-2.progress.json").write_text(json.dumps(done))
    (root / "failed" / "council.error.json").write_text(json.dumps({
        "source": "council.mp3", "job_id": "20261201T160000-cccccc", "error": "permanent",
        "reason": "the server refused this request (HTTP 400)", "what_to_do": "drop the file again later",
        "moved_to": str(root / "failed" / "council.mp3"), "failed_at": "2026-12-01T16:00:05Z"}))  # fmt: skip
    (root / "failed" / "link.error.json").write_text(json.dumps({
        "source": "link.mp3", "job_id": None, "error": "symlink",
        "reason": "symbolic links are not accepted", "what_to_do": "copy the recording itself into the inbox",
        "moved_to": None, "failed_at": "2026-12-01T16:00:06Z"}))  # fmt: skip


def run_status(*args: str) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", "transcribed", "status", "--web-listen", "", *args],
                            capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")})  # fmt: skip
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[Path]:
    """A process holding work/.lock the way the daemon does (exclusive flock, pid inside)."""
    root = tmp_path / "root"
    build_root(root)
    ready = tmp_path / "locked"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(root / 'work' / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(120)\n")])  # fmt: skip
    wait(ready.exists, "the lock holder")
    yield root
    holder.kill()
    holder.wait()


def test_status_lists_inbox_jobs_done_failed_and_rejected_and_stopped_when_no_daemon_runs(tmp_path: Path) -> None:
    """With no daemon (no lock), the job left at 44.3 % is `stopped`, not transcribing with an
    ETA; the inbox shows the settled file as queued and the fresh one as settling (the .part
    file not at all); done shows the -2 output name; failed and rejected carry their reasons;
    an odd name is printed escaped once, as the daemon wrote it."""
    root = tmp_path / "root"
    build_root(root)
    code, out, err = run_status("--root", str(root))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"root {root}: daemon stopped"
    stale = next(line for line in lines if "hearing.mp3" in line)
    assert stale.startswith("stopped ") and "44.3%" in stale and "0m26s" not in stale
    assert "was transcribing" in stale
    assert any(line.startswith("inbox ") and line.endswith("old.mp3") for line in lines)
    assert any(line.startswith("settling ") and line.endswith("arriving.mp3") for line in lines)
    assert "copying" not in out
    done = next(line for line in lines if line.startswith("done "))
    assert done.endswith(f"{ODD_NAME} -> beckett-2.txt (+.srt .vtt .json)")
    assert "Sitzung\\xff\\n2.mp3" in done and "\\\\" not in out  # one backslash per escape, never two
    assert any(line.startswith("failed ") and "council.mp3: the server refused this request (HTTP 400)" in line and "drop the file again later" in line for line in lines)
    assert any(line.startswith("rejected ") and "link.mp3: symbolic links are not accepted" in line for line in lines)


def test_status_json_is_one_object_with_every_section(tmp_path: Path) -> None:
    """--json prints one JSON object scripts can rely on: daemon, inbox, jobs, done, failed, rejected."""
    root = tmp_path / "root"
    build_root(root)
    code, out, _ = run_status("--root", str(root), "--json")
    data = json.loads(out)
    assert code == 0
    assert data["daemon"] == {"running": False, "pid": None}
    assert data["inbox"]["count"] == 2 and {f["name"]: f["state"] for f in data["inbox"]["files"]} == {"old.mp3": "queued", "arriving.mp3": "settling"}
    assert [(j["source"], j["state"], j["was"]) for j in data["jobs"]] == [("hearing.mp3", "stopped", "transcribing")]
    assert data["done"][0]["outputs"][0] == "beckett-2.txt" and data["done"][0]["source"] == ODD_NAME
    assert [f["source"] for f in data["failed"]] == ["council.mp3"]
    assert [f["source"] for f in data["rejected"]] == ["link.mp3"]


def test_a_job_is_running_while_a_daemon_holds_the_lock(lock_holder: Path) -> None:
    """While some process holds the exclusive flock on work/.lock, the job is shown in its own
    state with its ETA, and the daemon's pid is named."""
    code, out, _ = run_status("--root", str(lock_holder), "--json")
    data = json.loads(out)
    assert code == 0 and data["daemon"]["running"] is True and isinstance(data["daemon"]["pid"], int)
    assert [(j["state"], j["eta_seconds"]) for j in data["jobs"]] == [("transcribing", 26)]


def test_a_missing_root_is_a_configuration_error(tmp_path: Path) -> None:
    """`status --root /does/not/exist` says so on stderr and exits 78 (EX_CONFIG), not "no jobs" and 0."""
    code, out, err = run_status("--root", str(tmp_path / "does" / "not" / "exist"))
    assert code == 78 and out == ""
    assert "is not a folder" in err


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`status | head -1` prints one line and no BrokenPipeError traceback."""
    root = tmp_path / "root"
    build_root(root)
    for number in range(3000):  # enough lines to fill the pipe after head has gone
        (root / "inbox" / f"file-{number:04d}.mp3").write_bytes(b"")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")}
    result = subprocess.run(
        f"{sys.executable} -m transcribed status --web-listen '' --root {root} | head -1",
        shell=True, capture_output=True, text=True, timeout=60, env=environment,
    )  # fmt: skip
    assert result.stdout.startswith("root ") and len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr


def test_status_help_shows_only_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    """`status --help` lists the folders, the page's address and --json, not the daemon's 50 keys."""
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    text = capsys.readouterr().out
    assert "--json" in text and "--root" in text and "--web-listen" in text
    assert "--openai-model" not in text and "--job-workers" not in text and "--embedded-workers" not in text


@pytest.mark.slow
def test_status_reads_the_running_daemon_and_says_stopped_once_it_is_killed(tmp_path: Path) -> None:
    """Against a real daemon transcribing, `status` shows the job live (from the daemon's page);
    after the daemon is killed mid-job, the same job shows as stopped."""
    server = FakeServer(tmp_path, service_per_second=0.5, max_concurrent=1)
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    daemon = Daemon(root, server, "--openai-max-concurrent-requests", "1")
    try:
        recording = make_media(tmp_path / "r.mp3", TWO_CITIES)
        os.rename(recording, root / "inbox" / "hearing.mp3")
        wait(lambda: any(j["state"] == "transcribing" and j["pieces"]["done"] >= 1 for j in daemon.status()["jobs"]), "the job running", 60, daemon.process)
        live = json.loads(subprocess.run([sys.executable, "-m", "transcribed", "status", "--json", "--root", str(root), "--web-listen", f"127.0.0.1:{daemon.port}"],
                                         capture_output=True, text=True, timeout=60, check=True).stdout)  # fmt: skip
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait()
        code, out, _ = run_status("--root", str(root), "--json")
    finally:
        daemon.stop()
        server.stop()
    assert live["daemon"]["running"] is True and live["health"]["status"] == "ok"
    assert [(j["source"], j["state"]) for j in live["jobs"]] == [("hearing.mp3", "transcribing")]
    after = json.loads(out)
    assert code == 0 and after["daemon"]["running"] is False
    assert [(j["source"], j["state"], j["was"], j["eta_seconds"]) for j in after["jobs"]] == [("hearing.mp3", "stopped", "transcribing", None)]
