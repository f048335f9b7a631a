"""The API key never reaches a log, a progress file, an error file, an output, or a child
process's environment or command line, even when the server echoes it back in a 401."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import BECKETT, make_media
from transcribed.media import child_environment

TESTS = Path(__file__).parent


def test_media_children_get_only_path_and_lang(monkeypatch: pytest.MonkeyPatch) -> None:
    """ffmpeg, ffprobe and engine workers start from an environment of PATH and LANG alone."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-unit")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/transcribed.service")
    assert set(child_environment()) == {"PATH", "LANG"}


def fragments(key: str) -> list[str]:
    """The key and every 8-character run of its secret part: an echo like OpenAI's
    'sk-can***...wjh3' contains none of them, a leak contains at least one."""
    secret = key.removeprefix("sk-canary-")
    return [key, *(secret[i : i + 8] for i in range(len(secret) - 7))]


def leaks(data: bytes, key: str) -> bool:
    return any(fragment.encode() in data for fragment in fragments(key))


@pytest.mark.slow
def test_a_canary_key_is_found_nowhere_it_must_not_be(tmp_path: Path) -> None:
    """With a canary key, one job that succeeds and one refused with a 401 that echoes the key
    leave no trace of it in any file under the root, the log, or any child process."""
    key = "sk-canary-" + secrets.token_hex(16)
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, str(TESTS / "openai_server.py"), "--port-file", str(port_file), "--settings", json.dumps({"api_key": key})],
        stdin=subprocess.DEVNULL,
    )
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    log = tmp_path / "daemon.log"
    child_views: list[str] = []
    daemon = None
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = port_file.read_text().strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")} | {"OPENAI_API_KEY": key}
        with log.open("wb") as handle:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "transcribed", "run", "--root", str(root), "--engine", "openai",
                 "--openai-base-url", url, "--openai-piece-target-seconds", "5", "--openai-piece-max-seconds", "10",
                 "--settle-interval", "0.2", "--log-format", "json", "--min-free-space-mb", "0", "--log-level", "debug",
                 "--drain-timeout", "2"],
                env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
            )  # fmt: skip
        stop = threading.Event()

        def watch_children() -> None:
            parent = psutil.Process(daemon.pid)
            own = parent.cmdline()
            pending: dict[int, float] = {}  # children still showing the daemon's own view
            while not stop.is_set():
                for child in parent.children(recursive=True):
                    try:
                        cmdline, environ = child.cmdline(), child.environ()
                    except psutil.Error:
                        continue
                    if cmdline == own:
                        # forked and not yet exec'd: for a moment the child is the daemon itself
                        # (its environment included); only a copy that stays so is a finding
                        first = pending.setdefault(child.pid, time.monotonic())
                        if time.monotonic() - first < 0.5:
                            continue
                    child_views.append(json.dumps([cmdline, environ]))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch_children, daemon=True)
        watcher.start()
        make_media(root / "inbox" / ".good.mp3", BECKETT)
        os.rename(root / "inbox" / ".good.mp3", root / "inbox" / "good.mp3")
        wait = time.monotonic() + 120
        while not (root / "outbox" / "good.json").exists():
            assert time.monotonic() < wait and daemon.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        control = urllib.request.Request(url.rsplit("/v1", 1)[0] + "/_control", data=json.dumps({"fault_rates": {"unauthorized": 1.0}}).encode(), method="POST")
        urllib.request.urlopen(control, timeout=10).read()
        make_media(root / "inbox" / ".refused.mp3", BECKETT)
        os.rename(root / "inbox" / ".refused.mp3", root / "inbox" / "refused.mp3")
        progress = root / "outbox" / "refused.progress.json"
        # a refused key is the service's fault: the job waits (reason key), it does not fail
        while not progress.exists() or not (json.loads(progress.read_text()).get("waiting_reason") or "").startswith("key: "):
            assert time.monotonic() < wait and daemon.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
        stop.set()
        watcher.join(timeout=5)
    finally:
        for process in (daemon, server):
            if process is not None and process.poll() is None:
                process.kill()

    refused = json.loads((root / "outbox" / "refused.progress.json").read_text())
    assert refused["state"] == "waiting"  # (it waited for the key, above; now stopped, it resumes later)
    assert not (root / "failed" / "refused.error.json").exists()
    assert child_views, "no child process was seen"
    assert not any(leaks(view.encode(), key) for view in child_views)
    written = [path for path in root.rglob("*") if path.is_file()] + [log]
    assert len(written) >= 8
    for path in written:
        assert not leaks(path.read_bytes(), key), f"the key leaked into {path}"
