"""The one-shot `transcribe` command's face: JSON per file on stdout and JSON log lines only on
stderr off a terminal; on a terminal, bars that end at 100 % per file with the log lines above
them, never glued on; a missing input exits 2; --version."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BECKETT, TWO_CITIES, make_media
from daemon_process import FakeServer

pytestmark = pytest.mark.slow

ENGINE = ["--engine", "openai", "--openai-piece-target-seconds", "5", "--openai-piece-max-seconds", "10", "--min-free-space-mb", "0"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeServer]:
    running = FakeServer(tmp_path, service_per_second=0.02)
    yield running
    running.stop()


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")} | {"COLUMNS": "160", "TERM": "xterm-256color"}


def test_off_a_terminal_stdout_has_one_json_object_per_file_and_stderr_only_json_lines(tmp_path: Path, server: FakeServer) -> None:
    """`transcribe good.mp3 bad.mp3 > out 2> err`: two JSON objects on stdout (done with its
    outputs, failed with the reason), every stderr line is JSON (so `2>&1 | jq` works), exit 1."""
    good = make_media(tmp_path / "good.mp3", TWO_CITIES)
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not a recording\n")
    result = subprocess.run(
        [sys.executable, "-m", "transcribed", "transcribe", str(good), str(bad), "--out", str(tmp_path / "out"), *ENGINE, "--openai-base-url", server.url],
        capture_output=True, text=True, timeout=120, env=environment(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    by_source = {Path(o["source"]).name: o for o in objects}
    assert len(objects) == 2 and set(by_source) == {"good.mp3", "bad.mp3"}
    assert by_source["good.mp3"]["outcome"] == "done" and all(Path(p).is_file() for p in by_source["good.mp3"]["outputs"])
    assert by_source["bad.mp3"]["outcome"] == "failed" and by_source["bad.mp3"]["error"] == "not_media"
    assert by_source["bad.mp3"]["reason"].startswith("this is not a recording")
    lines = result.stderr.splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), result.stderr
    assert {json.loads(line).get("outcome") for line in lines if json.loads(line)["event"] == "job.finished"} == {"done", "failed"}


def test_a_missing_input_file_is_a_usage_error(tmp_path: Path) -> None:
    """A file that does not exist exits 2 (usage), not 78 (configuration error), naming it."""
    result = subprocess.run([sys.executable, "-m", "transcribed", "transcribe", str(tmp_path / "nope.mp3")],
                            capture_output=True, text=True, timeout=60, env=environment())  # fmt: skip
    assert result.returncode == 2
    assert "nope.mp3" in result.stderr and "configuration" not in result.stderr


def test_version_names_the_package_version() -> None:
    """`transcribed --version` prints the installed version."""
    from importlib.metadata import version

    result = subprocess.run([sys.executable, "-m", "transcribed", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"transcribed {version('transcribed')}"


_CURSOR = re.compile(r"\x1b\[[0-9;?]*[A-HJKSTfhl]")  # cursor moves and erases: a new screen line
_STYLE = re.compile(r"\x1b\[[0-9;]*m|\x1b\][^\x07]*\x07")


def test_on_a_terminal_each_bar_ends_at_100_percent_and_log_lines_never_glue_onto_it(tmp_path: Path, server: FakeServer) -> None:
    """On a terminal with two files, the last drawing of each file's bar is 100 % and `[done]`,
    and every log line starts a screen line of its own (no `0:00:032026-…` splices)."""
    first = make_media(tmp_path / "first.mp3", TWO_CITIES)
    second = make_media(tmp_path / "second.mp3", BECKETT)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "transcribed", "transcribe", str(first), str(second), "--out", str(tmp_path / "out"), *ENGINE,
         "--openai-base-url", server.url, "--log-format", "console"],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=environment(),
    )  # fmt: skip
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(timeout=30) == 0
    text = _STYLE.sub("", _CURSOR.sub("\n", output.decode("utf-8", "replace"))).replace("\r", "\n")
    screen_lines = [line.strip() for line in text.split("\n") if line.strip()]
    for name in ("first.mp3", "second.mp3"):
        drawings = [line for line in screen_lines if line.startswith(name) and "%" in line]
        assert drawings, f"no bar for {name}"
        assert "[done]" in drawings[-1] and "100.0%" in drawings[-1], drawings[-1]
    logged = [line for line in screen_lines if "job.finished" in line or "engine.ready" in line]
    assert logged
    for line in logged:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line), f"a log line glued onto something: {line!r}"
    assert sum("✓" in line for line in screen_lines) == 2
