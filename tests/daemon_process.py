"""A real daemon process (OpenAI engine) against the fake OpenAI server in another process, for
the tests of what operators see: the page, /healthz, /metrics, the notify hooks, `status`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

TESTS = Path(__file__).parent
DAEMON_FLAGS = [
    "--engine", "openai", "--settle-interval", "0.2", "--rescan-interval", "0.5",
    "--log-format", "json", "--min-free-space-mb", "0",
    "--openai-piece-target-seconds", "5", "--openai-piece-max-seconds", "10",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait(check: Callable[[], Any], what: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> Any:
    """Poll `check` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the daemon exited with {process.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class FakeServer:
    """tests/openai_server.py in its own process."""

    def __init__(self, folder: Path, **settings: object) -> None:
        port_file = folder / "server-port"
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "openai_server.py"), "--port-file", str(port_file), "--settings", json.dumps(settings)],
            stdin=subprocess.DEVNULL,
        )
        wait(lambda: port_file.exists() and port_file.read_text(), "the fake server", 30)
        self.url = port_file.read_text().strip()

    def control(self, **changes: object) -> None:
        httpx.post(self.url.rsplit("/v1", 1)[0] + "/_control", json=changes, timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class Daemon:
    """`transcribed run` as a real process, with its page on a free loopback port."""

    def __init__(self, root: Path, server: FakeServer, *extra: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = root.parent / f"{root.name}-daemon.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")}
        environment.update(env or {})
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "transcribed", "run", "--root", str(root), *DAEMON_FLAGS,
                 "--openai-base-url", server.url, "--web-listen", f"127.0.0.1:{self.port}", *extra],
                env=environment, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
            )  # fmt: skip
        wait(self._answers, "the daemon's page", 60, self.process)

    def _answers(self) -> bool:
        try:
            return httpx.get(self.base + "/healthz", timeout=2).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    def get(self, path: str, **options: Any) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10, **options)

    def status(self) -> dict[str, Any]:
        answer = self.get("/api/status")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def metrics(self) -> dict[str, float]:
        """The /metrics samples as {'name{labels}': value} (comments and _created dropped)."""
        answer = self.get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        samples = {}
        for line in answer.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                if "_created" not in name:
                    samples[name] = float(value)
        return samples

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
