"""kill -9 at every step of a job: a restart always finishes it, with outputs byte-identical to an
uninterrupted run, nothing left in work/, the source in done/, and no temp file in the outbox.

The daemon runs as a real process on the real engine; `TRANSCRIBED_FAILPOINT` makes it SIGKILL
itself at a named point (see transcribed/failpoints.py), as a power cut or the OOM killer would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BECKETT, ffmpeg

pytestmark = pytest.mark.slow

OUTPUTS = ("recording.txt", "recording.srt", "recording.vtt", "recording.json")
DAEMON_FLAGS = [
    "--settle-interval", "0.2", "--rescan-interval", "0.5", "--log-format", "json",
    "--embedded-piece-target-seconds", "5", "--embedded-piece-max-seconds", "10",
]
# Durable writes of one job, in order: claim record, claimed record, attempt count, piece limits,
# three pieces, four outputs, published record. atomic.rename:N dies before the N-th rename.
DURABLE_WRITES = 12
FAILPOINTS = [
    "claim.recorded",
    "claim.renamed",
    "job.started",
    "job.probed",
    "job.transcribing",
    "journal.piece:1",
    "journal.piece:2",
    "journal.piece:3",
    *[f"atomic.rename:{n}" for n in range(1, DURABLE_WRITES + 1)],
    "outputs.txt_written",
    "outputs.srt_written",
    "outputs.vtt_written",
    "outputs.json_written",
    "job.concluded",
    "job.source_disposed",
    "journal.remove",
]


def start(root: Path, log: Path, failpoint: str | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")}
    if failpoint:
        env["TRANSCRIBED_FAILPOINT"] = failpoint
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "transcribed", "run", "--root", str(root), *DAEMON_FLAGS],
            env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
        )


def job_done(root: Path) -> bool:
    progress = root / "outbox" / "recording.progress.json"
    try:
        return json.loads(progress.read_text())["state"] == "done" and not os.listdir(root / "work")
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


def run_to_completion(root: Path, log: Path) -> None:
    process = start(root, log)
    try:
        deadline = time.monotonic() + 180
        while not job_done(root):
            assert process.poll() is None, f"daemon exited with {process.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.1)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty seconds of real speech as mp3: three pieces at the test's piece limits."""
    folder = tmp_path_factory.mktemp("source")
    target = folder / "recording.mp3"
    ffmpeg("-i", str(BECKETT), "-i", str(BECKETT), "-filter_complex", "[0:a][1:a]concat=n=2:v=0:a=1", "-c:a", "libmp3lame", "-b:a", "64k", str(target))
    return target


@pytest.fixture(scope="module")
def clean_run(recording: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("clean")
    (root / "inbox").mkdir()
    (root / "inbox" / "recording.mp3").write_bytes(recording.read_bytes())
    run_to_completion(root, root / "daemon.log")
    assert len(list((root / "outbox").glob("*.json"))) == 2
    return {name: (root / "outbox" / name).read_bytes() for name in OUTPUTS}


def check_finished_like_clean(root: Path, clean: dict[str, bytes]) -> None:
    for name in OUTPUTS:
        assert (root / "outbox" / name).read_bytes() == clean[name], f"{name} differs from a clean run"
    assert sorted(os.listdir(root / "outbox")) == sorted([*OUTPUTS, "recording.progress.json"])
    assert os.listdir(root / "work") == [] and os.listdir(root / "inbox") == []
    assert os.listdir(root / "done") == ["recording.mp3"]
    assert os.listdir(root / "failed") == []


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_a_kill_at_any_failpoint_is_recovered_by_a_restart(failpoint: str, recording: Path, clean_run: dict[str, bytes], tmp_path: Path) -> None:
    """SIGKILL at this point of the job, restart: the outputs equal a clean run's."""
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / "recording.mp3").write_bytes(recording.read_bytes())
    log = tmp_path / "daemon.log"
    process = start(root, log, failpoint)
    try:
        assert process.wait(timeout=180) == -signal.SIGKILL, f"failpoint {failpoint} was never reached"
    finally:
        if process.poll() is None:
            process.kill()
    run_to_completion(root, log)
    check_finished_like_clean(root, clean_run)


@pytest.mark.parametrize("wait_for_pieces", [0, 1])
def test_a_kill_with_pieces_in_flight_is_recovered(wait_for_pieces: int, recording: Path, clean_run: dict[str, bytes], tmp_path: Path) -> None:
    """SIGKILL from outside while the engine is working on pieces (after 0 or 1 journaled)."""
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / "recording.mp3").write_bytes(recording.read_bytes())
    log = tmp_path / "daemon.log"
    process = start(root, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and process.poll() is None
            try:
                state = json.loads((root / "outbox" / "recording.progress.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                state = None
            if state and state["pieces"]["in_flight"] >= 1 and state["pieces"]["done"] >= wait_for_pieces:
                break
            time.sleep(0.02)
        process.kill()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert not job_done(root)
    run_to_completion(root, log)
    check_finished_like_clean(root, clean_run)
