"""End to end: the real daemon process and the real Moonshine engine on real speech, from inbox to
outbox, plus the one-shot and status commands. Slow (model load, real transcription)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BECKETT, TWO_CITIES, jobs_in, make_media

pytestmark = pytest.mark.slow

TRANSCRIBED = [sys.executable, "-m", "transcribed"]
BECKETT_TEXT = "ever tried ever failed no matter try again fail again fail better"


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def spoken_text(transcript: Path) -> str:
    """A .txt transcript's words, without each paragraph's `[hh:mm:ss] Speaker N:` opening."""
    opening = re.compile(r"^\[\d\d:\d\d:\d\d\]( [^:\n]+:)? ?", re.MULTILINE)
    return opening.sub("", transcript.read_text())


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(1, len(ref))


def wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"daemon exited with {process.returncode} before {path.name} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.2)


def test_the_daemon_process_transcribes_real_speech_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """A file left in the inbox while the daemon was down and one dropped while it runs both end
    as accurate transcripts; logs are JSON lines with one job.finished per job; SIGTERM exits 0."""
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    make_media(root / "inbox" / "beckett.mp3", BECKETT)
    log = (tmp_path / "daemon.log").open("wb")
    process = subprocess.Popen(
        [*TRANSCRIBED, "run", "--root", str(root), "--settle-interval", "0.3", "--rescan-interval", "1", "--log-format", "json", "--min-free-space-mb", "0"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        wait_for(root / "outbox" / "beckett.json", process)
        make_media(tmp_path / "two_cities.m4a", TWO_CITIES)
        os.rename(tmp_path / "two_cities.m4a", root / "inbox" / "two_cities.m4a")
        wait_for(root / "outbox" / "two_cities.json", process)
        time.sleep(0.5)  # the progress writer's last write
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()

    beckett = spoken_text(root / "outbox" / "beckett.txt")
    assert word_error_rate(BECKETT_TEXT, beckett) <= 0.1, beckett
    document = json.loads((root / "outbox" / "two_cities.json").read_text())
    assert "best of times" in document["text"].lower() and "superlative degree" in document["text"].lower()
    starts = [s["start"] for s in document["segments"]]
    assert starts == sorted(starts) and 0.5 < starts[0] < 1.5  # the first words are spoken at ~1 s
    assert 43 < document["audio_seconds"] < 45
    assert sorted(os.listdir(root / "done")) == ["beckett.mp3", "two_cities.m4a"]
    assert jobs_in(root / "work") == [] and os.listdir(root / "inbox") == []
    progress = json.loads((root / "outbox" / "two_cities.progress.json").read_text())
    assert progress["state"] == "done" and progress["percent"] == 100.0

    lines = [json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines() if line.startswith("{")]
    finished = [line for line in lines if line["event"] == "job.finished"]
    assert len(finished) == 2 and all(line["outcome"] == "done" for line in finished)
    assert all({"seconds", "pieces", "audio_seconds", "job_id"} <= line.keys() for line in finished)
    assert any(line["event"] == "daemon.stopped" for line in lines)

    status = subprocess.run([*TRANSCRIBED, "status", "--root", str(root)], capture_output=True, text=True, check=True)
    assert "two_cities.m4a" in status.stdout and "done" in status.stdout


def test_the_one_shot_command_writes_outputs_and_leaves_the_source(tmp_path: Path) -> None:
    """`transcribed transcribe FILE --out DIR` writes the five outputs and exits 0; a bad file
    makes it exit 1 with the reason on stderr."""
    source = make_media(tmp_path / "beckett.flac", BECKETT)
    (tmp_path / "broken.mp3").write_bytes(b"not audio at all" * 100)
    result = subprocess.run(
        [*TRANSCRIBED, "transcribe", str(source), str(tmp_path / "broken.mp3"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 1
    assert "broken.mp3" in result.stderr and "not a recording" in result.stderr
    assert source.exists()
    assert sorted(os.listdir(tmp_path / "out")) == ["beckett.docx", "beckett.json", "beckett.srt", "beckett.txt", "beckett.vtt"]
    assert word_error_rate(BECKETT_TEXT, spoken_text(tmp_path / "out" / "beckett.txt")) <= 0.1
    shutil.rmtree(tmp_path / "out")
