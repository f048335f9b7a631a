"""notify.command and notify.webhook_url against a real daemon process: one summary per
concluded job (done or failed) on the command's stdin and POSTed to the webhook, with retries;
the API key reaches neither; a failing or hanging hook changes nothing else."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio
from conftest import SUITE_CANARY_KEY, TWO_CITIES, make_media
from daemon_process import Daemon, FakeServer, wait
from transcribed.config import load_config
from transcribed.notify import run_hooks

HOOK = """\
import json, os, sys
folder = sys.argv[1]
data = sys.stdin.buffer.read()
name = json.loads(data)["job_id"]
with open(os.path.join(folder, name + ".env.json"), "w") as handle:
    json.dump(dict(os.environ), handle)
with open(os.path.join(folder, name + ".json"), "wb") as handle:
    handle.write(data)
"""


class Webhook:
    """A real HTTP server on 127.0.0.1 that fails the first `failures` POSTs with a 500."""

    def __init__(self, failures: int = 0) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.failures = failures
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                hook.headers.append({k.lower(): v for k, v in self.headers.items()})
                hook.bodies.append(body)
                status = 500 if len(hook.bodies) <= hook.failures else 204
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeServer]:
    running = FakeServer(tmp_path)
    yield running
    running.stop()


def drop(root: Path, source: Path, name: str) -> None:
    staging = root / "inbox" / f".{name}.part"
    shutil.copy(source, staging)
    os.rename(staging, root / "inbox" / name)


@pytest.mark.slow
def test_each_concluded_job_is_told_once_to_the_command_and_the_webhook_without_the_key(tmp_path: Path, server: FakeServer) -> None:
    """A done job and a rejected file each run the command once with the summary on stdin and
    POST the same summary to the webhook (which failed once and was retried); the summary
    names outputs that exist, the reason and what to do; the command's environment has no
    OPENAI_API_KEY and the key appears in no summary, environment or webhook request."""
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    told = tmp_path / "told"
    told.mkdir()
    (tmp_path / "hook.py").write_text(HOOK)
    webhook = Webhook(failures=1)
    command = shlex.join([sys.executable, str(tmp_path / "hook.py"), str(told)])
    daemon = Daemon(root, server, "--notify-command", command, "--notify-webhook-url", webhook.url, "--notify-timeout", "10",
                    env={"OPENAI_API_KEY": SUITE_CANARY_KEY})  # fmt: skip
    try:
        drop(root, make_media(tmp_path / "hearing.mp3", TWO_CITIES), "hearing.mp3")
        wait(lambda: len(list(told.glob("*.env.json"))) == 1 and len(webhook.bodies) == 2, "the done job's hooks", 120, daemon.process)
        (root / "inbox" / "notes.mp3").write_bytes(b"minutes of the meeting, typed\n")
        wait(lambda: len(list(told.glob("*.env.json"))) == 2 and len(webhook.bodies) == 3, "the failed job's hooks", 60, daemon.process)
    finally:
        assert daemon.stop() == 0
        webhook.stop()

    summaries = {json.loads(p.read_text())["source"]: json.loads(p.read_text()) for p in told.glob("*.json") if not p.name.endswith(".env.json")}
    done, failed = summaries["hearing.mp3"], summaries["notes.mp3"]
    assert done["outcome"] == "done" and done["error"] is None and done["reason"] is None
    assert [Path(p).name for p in done["outputs"]] == ["hearing.txt", "hearing.srt", "hearing.vtt", "hearing.docx", "hearing.json"]
    assert all(Path(p).is_file() for p in done["outputs"])
    assert 44 < done["audio_seconds"] < 45 and done["cost"] > 0 and done["seconds"] > 0 and done["finished_at"]
    assert failed["outcome"] == "failed" and failed["outputs"] == [] and failed["error"] == "not_media"
    assert failed["reason"].startswith("this is not a recording") and failed["what_to_do"]
    webhook_summaries = [json.loads(body) for body in webhook.bodies]
    assert webhook_summaries[0] == webhook_summaries[1] == done  # the retry sent the same summary
    assert webhook_summaries[2] == failed
    assert all(h["content-type"] == "application/json" for h in webhook.headers)
    for env_file in told.glob("*.env.json"):
        environment = json.loads(env_file.read_text())
        assert "OPENAI_API_KEY" not in environment and SUITE_CANARY_KEY not in json.dumps(environment)
    everything = json.dumps(summaries) + repr(webhook.headers) + b"".join(webhook.bodies).decode()
    assert SUITE_CANARY_KEY not in everything
    assert [line["event"] for line in daemon.log_lines()].count("notify.sent") == 4


@pytest.mark.slow
def test_a_failing_or_hanging_hook_is_logged_and_fails_nothing(tmp_path: Path, server: FakeServer) -> None:
    """A command that exits 3 and a webhook nobody listens on are logged as notify.failed; the
    job is done, its outputs are there, and the daemon goes on serving and stops cleanly."""
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    command = shlex.join([sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(3)"])
    daemon = Daemon(root, server, "--notify-command", command, "--notify-webhook-url", "http://127.0.0.1:9/nobody",
                    "--notify-webhook-attempts", "2")  # fmt: skip
    try:
        drop(root, make_media(tmp_path / "hearing.mp3", TWO_CITIES), "hearing.mp3")
        wait(lambda: [line["hook"] for line in daemon.log_lines() if line["event"] == "notify.failed"].count("webhook") == 1, "the failures logged", 120, daemon.process)
        healthy = daemon.get("/healthz").status_code
    finally:
        assert daemon.stop() == 0

    failures = {line["hook"]: line for line in daemon.log_lines() if line["event"] == "notify.failed"}
    assert failures["command"]["error"] == "the command exited with 3"
    assert failures["webhook"]["error"].startswith("gave up after 2 attempts")
    assert (root / "outbox" / "hearing.txt").is_file() and (root / "done" / "hearing.mp3").is_file()
    assert json.loads((root / "outbox" / "hearing.progress.json").read_text())["state"] == "done"
    assert healthy == 200


async def test_a_hanging_command_is_killed_at_the_timeout_and_logged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A command that never ends is stopped after notify.timeout and reported; run_hooks
    returns instead of hanging the job worker."""
    config = load_config(environ={}, flags={"root": str(tmp_path), "notify.command": shlex.join([sys.executable, "-c", "import time; time.sleep(60)"]), "notify.timeout": "1", "web.listen": ""})
    with trio.fail_after(20):
        started = trio.current_time()
        await run_hooks(config, {"job_id": "j", "source": "x.mp3", "outcome": "done"})
        elapsed = trio.current_time() - started
    assert 0.9 < elapsed < 10
    captured = capsys.readouterr()
    assert "took longer than 1 s" in captured.out + captured.err


def test_the_command_is_an_argv_list_from_toml_or_split_like_a_shell_from_a_flag(tmp_path: Path) -> None:
    """notify.command is a TOML list or, in the environment and on the command line, words
    split as a shell would; an empty list is refused."""
    config_file = tmp_path / "t.toml"
    config_file.write_text('[notify]\ncommand = ["/usr/local/bin/tell", "--to", "clerks office"]\n')
    from_file = load_config(path=config_file, environ={})
    from_env = load_config(environ={"TRANSCRIBED_NOTIFY_COMMAND": "/usr/local/bin/tell --to 'clerks office'"})
    assert from_file.notify.command == from_env.notify.command == ("/usr/local/bin/tell", "--to", "clerks office")
    config_file.write_text("[notify]\ncommand = []\n")
    from transcribed.errors import ConfigError

    with pytest.raises(ConfigError, match=r"notify\.command"):
        load_config(path=config_file, environ={})
