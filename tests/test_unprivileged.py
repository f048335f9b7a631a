"""The daemon as an unprivileged user (nobody), as it runs under systemd: permissions are real
here, where root would ignore them. A file its user cannot read fails as "unreadable" (not as
"not media"), and a done/ folder it cannot write makes the finished job wait, fail nothing, and
finish once the folder is writable again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_crash_recovery import Server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody"),
]


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ENV = {"PATH": os.environ["PATH"], "HOME": "/tmp", "LANG": "C.UTF-8"}


def wait(check: Callable[[], bool], what: str | Callable[[], str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def nobody_can_run_the_package() -> None:
    """The checkout must be reachable by nobody (a clone under a private folder, such as
    mktemp -d's, is not): otherwise the daemon could not even start, whatever it does."""
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import transcribed"], env=ENV, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run {sys.executable} with the package (is a parent folder private?): {probe.stderr.strip()[-300:]}")


def state_of(root: Path, stem: str) -> dict:
    try:
        return json.loads((root / "outbox" / f"{stem}.progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, PermissionError):
        return {}


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A root folder nobody may use (pytest's own tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="transcribed-nobody-"))
    root.chmod(0o777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_permissions_are_faults_of_the_service_or_of_the_file_as_they_really_are(open_root: Path, media: Callable[..., Path], tmp_path: Path) -> None:
    """As nobody: an unreadable recording goes to failed/ as `unreadable`; with done/ made
    read-only, a finished job waits (reason folder), then ends done when done/ is writable."""
    server = Server(tmp_path)
    log = tmp_path / "daemon.log"
    command = [
        *AS_NOBODY, sys.executable, "-m", "transcribed", "run", "--root", str(open_root), "--engine", "openai",
        "--openai-base-url", server.url, "--settle-interval", "0.2", "--rescan-interval", "0.5",
        "--min-free-space-mb", "0", "--service-retry-interval", "1", "--log-format", "json",
    ]  # fmt: skip
    with log.open("ab") as handle:
        process = subprocess.Popen(command, env=ENV, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle)
    try:
        wait(lambda: b"daemon.ready" in log.read_bytes(), lambda: f"the daemon did not start: {log.read_text()[-2000:]}")
        secret = open_root / "inbox" / "private.mp3"
        shutil.copy(media("private.mp3"), secret)
        secret.chmod(0o600)  # root's, unreadable by nobody
        wait(lambda: (open_root / "failed" / "private.error.json").exists(), "the unreadable file was not rejected")
        explanation = json.loads((open_root / "failed" / "private.error.json").read_text())
        assert explanation["error"] == "unreadable" and "cannot read" in explanation["reason"]

        (open_root / "done").chmod(0o555)
        good = open_root / "inbox" / "hearing.mp3"
        shutil.copy(media("hearing.mp3"), good)
        good.chmod(0o644)
        wait(lambda: (state_of(open_root, "hearing").get("waiting_reason") or "").startswith("folder: "), "the job did not wait for done/")
        assert (open_root / "outbox" / "hearing.txt").exists()  # the transcript is kept meanwhile
        assert not (open_root / "failed" / "hearing.error.json").exists()
        (open_root / "done").chmod(0o755)
        wait(lambda: state_of(open_root, "hearing").get("state") == "done", "the job did not finish")
        assert (open_root / "done" / "hearing.mp3").exists() and process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=60)
        server.stop()
