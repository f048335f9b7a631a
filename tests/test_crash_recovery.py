"""kill -9 at every step of a job: a restart always finishes it, with outputs byte-identical to an
uninterrupted run, nothing left in work/, the source in done/, no temp file in the outbox, and
no piece that was journaled before the kill sent (or paid for) again.

The daemon runs as a real process. `TRANSCRIBED_FAILPOINT` makes it SIGKILL itself at a named
point (see transcribed/failpoints.py), as a power cut or the OOM killer would. The failpoint
runs use the OpenAI engine against the fake OpenAI server (tests/openai_server.py, a separate
process whose counters survive the daemon's death); kills from outside with pieces in flight
run on both engines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TWO_CITIES, jobs_in, make_media

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent
OUTPUTS = ("recording.txt", "recording.srt", "recording.vtt", "recording.docx", "recording.json")
COMMON_FLAGS = ["--settle-interval", "0.2", "--rescan-interval", "0.5", "--log-format", "json", "--min-free-space-mb", "0"]
ENGINE_FLAGS = {
    "embedded": ["--embedded-piece-target-seconds", "12", "--embedded-piece-max-seconds", "20"],
    "openai": ["--engine", "openai", "--openai-piece-target-seconds", "5", "--openai-piece-max-seconds", "10"],
}
# The 44 s recording is cut into at least six pieces at 5-10 s, so one job makes at least 15
# durable writes: claim record, claimed record, attempt count, piece limits, the pieces, five
# outputs, the concluded record. atomic.rename:N dies just before the N-th of them is renamed.
FAILPOINTS = [
    "claim.recorded",
    "claim.renamed",
    "job.started",
    "job.probed",
    "job.transcribing",
    "journal.piece:1",
    "journal.piece:3",
    *[f"atomic.rename:{n}" for n in range(1, 16)],
    "outputs.txt_written",
    "outputs.srt_written",
    "outputs.vtt_written",
    "outputs.json_written",
    "job.concluded",
    "job.source_disposed",
    "journal.remove",
]


class Server:
    """The fake OpenAI server in its own process."""

    def __init__(self, folder: Path) -> None:
        port_file = folder / "port"
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "openai_server.py"), "--port-file", str(port_file)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert time.monotonic() < deadline and self.process.poll() is None, "the fake server did not start"
            time.sleep(0.05)
        self.url = port_file.read_text().strip()

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url.rsplit("/v1", 1)[0] + "/_stats", timeout=10) as answer:
            return json.loads(answer.read())

    def control(self, **changes: object) -> None:
        """Change the server's settings (service times, faults) while it runs."""
        request = urllib.request.Request(self.url.rsplit("/v1", 1)[0] + "/_control", data=json.dumps(changes).encode(), method="POST")
        urllib.request.urlopen(request, timeout=10).read()

    def settled_stats(self) -> dict:
        """The counters once the requests a killed client left behind are finished."""
        deadline = time.monotonic() + 30
        while (stats := self.stats())["in_flight"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return stats

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    yield running
    running.stop()


def start(root: Path, log: Path, engine: str, server: Server | None, failpoint: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSCRIBED_", "OPENAI_"))}
    if failpoint:
        env["TRANSCRIBED_FAILPOINT"] = failpoint
    flags = [*COMMON_FLAGS, *ENGINE_FLAGS[engine], *extra]
    if server is not None:
        flags += ["--openai-base-url", server.url]
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "transcribed", "run", "--root", str(root), *flags],
            env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
        )


def job_done(root: Path) -> bool:
    progress = root / "outbox" / "recording.progress.json"
    try:
        return json.loads(progress.read_text())["state"] == "done" and not jobs_in(root / "work")
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


def run_to_completion(root: Path, log: Path, engine: str, server: Server | None, extra: tuple[str, ...] = ()) -> None:
    process = start(root, log, engine, server, extra=extra)
    try:
        deadline = time.monotonic() + 240
        while not job_done(root):
            assert process.poll() is None, f"daemon exited with {process.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def new_root(tmp_path: Path, recording: Path) -> Path:
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / "recording.mp3").write_bytes(recording.read_bytes())
    return root


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """44 s of real speech as mp3."""
    return make_media(tmp_path_factory.mktemp("source") / "recording.mp3", TWO_CITIES)


@pytest.fixture(scope="module")
def clean_runs(recording: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Each engine's outputs from an uninterrupted run."""
    outputs = {}
    for engine in ENGINE_FLAGS:
        folder = tmp_path_factory.mktemp(f"clean-{engine}")
        server = Server(folder) if engine == "openai" else None
        try:
            root = new_root(folder, recording)
            run_to_completion(root, folder / "daemon.log", engine, server)
        finally:
            if server is not None:
                server.stop()
        outputs[engine] = {name: (root / "outbox" / name).read_bytes() for name in OUTPUTS}
    return outputs


def check_finished_like_clean(root: Path, clean: dict[str, bytes]) -> None:
    for name in OUTPUTS:
        assert (root / "outbox" / name).read_bytes() == clean[name], f"{name} differs from a clean run"
    assert sorted(os.listdir(root / "outbox")) == sorted([*OUTPUTS, "recording.progress.json"])
    assert jobs_in(root / "work") == [] and os.listdir(root / "inbox") == []
    assert os.listdir(root / "done") == ["recording.mp3"]
    assert os.listdir(root / "failed") == []


def journaled(root: Path) -> int:
    return len([p for p in root.glob("work/*/pieces/*.json")])


def check_nothing_journaled_was_sent_again(before: dict, after: dict, journaled_at_kill: int) -> None:
    """Pieces answered before the kill and sent again after it are at most those answered but
    not yet journaled when the kill came (they were still in flight for the daemon)."""
    answered_before = Counter(before["answered"])
    received_after = Counter(after["bodies_received"]) - Counter(before["bodies_received"])
    sent_again = [piece for piece in received_after if answered_before[piece]]
    assert len(sent_again) <= max(0, len(answered_before) - journaled_at_kill)
    assert all(count == 1 for count in (Counter(after["answered"]) - answered_before).values())


def wait_for_pieces(root: Path, process: subprocess.Popen[bytes], done: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and process.poll() is None
        try:
            state = json.loads((root / "outbox" / "recording.progress.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = None
        if state and state["pieces"]["done"] >= done and state["pieces"]["in_flight"] >= 1:
            return
        time.sleep(0.01)


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_a_kill_at_any_failpoint_is_recovered_by_a_restart(
    failpoint: str, recording: Path, clean_runs: dict[str, dict[str, bytes]], server: Server, tmp_path: Path
) -> None:
    """SIGKILL at this point of the job, restart: the outputs equal a clean run's and nothing
    journaled is paid for twice."""
    root = new_root(tmp_path, recording)
    log = tmp_path / "daemon.log"
    process = start(root, log, "openai", server, failpoint)
    try:
        assert process.wait(timeout=180) == -signal.SIGKILL, f"failpoint {failpoint} was never reached"
    finally:
        if process.poll() is None:
            process.kill()
    at_kill, pieces_at_kill = server.settled_stats(), journaled(root)
    run_to_completion(root, log, "openai", server)
    check_finished_like_clean(root, clean_runs["openai"])
    check_nothing_journaled_was_sent_again(at_kill, server.stats(), pieces_at_kill)


@pytest.mark.parametrize(("engine", "journaled_first"), [("openai", 0), ("openai", 2), ("embedded", 1)])
def test_a_kill_with_pieces_in_flight_is_recovered(
    engine: str, journaled_first: int, recording: Path, clean_runs: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    """SIGKILL from outside while the engine works on pieces (after some are journaled)."""
    server = Server(tmp_path) if engine == "openai" else None
    if server is not None:  # slow answers, so the kill lands with requests in flight
        server.control(service_base=0.5)
    try:
        root = new_root(tmp_path, recording)
        log = tmp_path / "daemon.log"
        # two requests at a time, so pieces finish one by one and the kill finds some in flight
        process = start(root, log, engine, server, extra=("--openai-max-concurrent-requests", "2"))
        try:
            wait_for_pieces(root, process, journaled_first)
            process.kill()
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        assert not job_done(root)
        at_kill, pieces_at_kill = (server.settled_stats() if server else None), journaled(root)
        run_to_completion(root, log, engine, server)
        check_finished_like_clean(root, clean_runs[engine])
        if server is not None:
            check_nothing_journaled_was_sent_again(at_kill, server.stats(), pieces_at_kill)
    finally:
        if server is not None:
            server.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_mid_job_drains_exits_0_and_the_next_start_finishes(
    signum: int, recording: Path, clean_runs: dict[str, dict[str, bytes]], server: Server, tmp_path: Path
) -> None:
    """SIGTERM (or SIGHUP, which drains the same way) with pieces in flight: they finish and are
    journaled, the daemon exits 0 within drain_timeout plus a few seconds, and the next start
    completes the job like a clean run."""
    server.control(service_base=1.0)
    root = new_root(tmp_path, recording)
    log = tmp_path / "daemon.log"
    drain = ("--drain-timeout", "10", "--openai-max-concurrent-requests", "2")
    process = start(root, log, "openai", server, extra=drain)
    try:
        wait_for_pieces(root, process, 1)
        journaled_before = journaled(root)
        sent = time.monotonic()
        process.send_signal(signum)
        assert process.wait(timeout=30) == 0
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    assert took < 10 + 5
    assert journaled(root) > journaled_before  # the pieces in flight were finished and kept
    state = json.loads((root / "outbox" / "recording.progress.json").read_text())
    assert state["state"] == "waiting" and "resumes" in state["waiting_reason"]
    at_stop, pieces_at_stop = server.settled_stats(), journaled(root)
    run_to_completion(root, log, "openai", server)
    check_finished_like_clean(root, clean_runs["openai"])
    check_nothing_journaled_was_sent_again(at_stop, server.stats(), pieces_at_stop)


def test_a_second_sigterm_stops_at_once_and_loses_nothing_journaled(
    recording: Path, clean_runs: dict[str, dict[str, bytes]], server: Server, tmp_path: Path
) -> None:
    """A second SIGTERM during a long drain stops the daemon in seconds; a restart finishes."""
    server.control(service_base=30.0)
    root = new_root(tmp_path, recording)
    log = tmp_path / "daemon.log"
    process = start(root, log, "openai", server, extra=("--drain-timeout", "120"))
    try:
        wait_for_pieces(root, process, 0)
        process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert process.poll() is None  # draining: the answers take 30 s
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - sent < 5
    finally:
        if process.poll() is None:
            process.kill()
    server.control(service_base=0.0)
    run_to_completion(root, log, "openai", server)
    check_finished_like_clean(root, clean_runs["openai"])


def test_twelve_kills_during_one_long_job_never_make_it_poison(recording: Path, tmp_path: Path) -> None:
    """Twelve kill -9s from outside (the OOM killer, power cuts), each after the job journaled
    one more piece, with max_attempts 3: the file is never declared poison, and the last start
    ends byte-identical to a clean run with nothing journaled paid for twice."""
    small = ("--openai-piece-target-seconds", "5", "--openai-piece-max-seconds", "10", "--openai-max-concurrent-requests", "1", "--max-attempts", "3")
    long_recording = tmp_path / "long.mp3"  # 2 min 13 s, each third at its own level so no two pieces are alike
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *["-i", str(recording)] * 3, "-filter_complex",
         "[0:a]volume=1.0[a];[1:a]volume=0.8[b];[2:a]volume=0.6[c];[a][b][c]concat=n=3:v=0:a=1",
         "-c:a", "libmp3lame", "-b:a", "64k", str(long_recording)],
        check=True, timeout=60,
    )  # fmt: skip
    recording = long_recording
    (tmp_path / "clean").mkdir()
    clean_server = Server(tmp_path / "clean")
    try:
        clean_root = new_root(tmp_path / "clean", recording)
        run_to_completion(clean_root, tmp_path / "clean.log", "openai", clean_server, extra=small)
        clean = {name: (clean_root / "outbox" / name).read_bytes() for name in OUTPUTS}
    finally:
        clean_server.stop()
    server = Server(tmp_path)  # its counters then tell this run's requests alone
    server.control(service_base=0.15)
    try:
        root = new_root(tmp_path, recording)
        log = tmp_path / "daemon.log"
        for kill in range(12):
            before = journaled(root)
            process = start(root, log, "openai", server, extra=small)
            try:
                deadline = time.monotonic() + 120
                while journaled(root) <= before:
                    assert process.poll() is None, f"the daemon exited before kill {kill + 1}: {log.read_text()[-2000:]}"
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            finally:
                process.kill()
                process.wait(timeout=10)
            assert not job_done(root) and os.listdir(root / "failed") == [], f"after kill {kill + 1}"
        at_kill, pieces_at_kill = server.settled_stats(), journaled(root)
        run_to_completion(root, log, "openai", server, extra=small)
        check_finished_like_clean(root, clean)
        check_nothing_journaled_was_sent_again(at_kill, server.stats(), pieces_at_kill)
    finally:
        server.stop()


def test_ctrl_c_in_a_terminal_drains_without_tracebacks(recording: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches the daemon's process group, not its children's: the daemon drains
    and exits 0, and the log has no KeyboardInterrupt traceback and no "worker stopped
    unexpectedly" for the clean stop."""
    root = new_root(tmp_path, recording)
    log = tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSCRIBED_", "OPENAI_"))}
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "transcribed", "run", "--root", str(root), *COMMON_FLAGS, *ENGINE_FLAGS["embedded"], "--drain-timeout", "60"],
            env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_pieces(root, process, 0)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert "KeyboardInterrupt" not in text and "Traceback" not in text
    assert "stopped unexpectedly" not in text and '"daemon.stopped"' in text
    # the signal reached no child either: a worker still importing, or ffmpeg mid-decode, died of
    # it before each ran in a process group of its own
    assert '"job.decode_incomplete"' not in text and '"job.diarization_failed"' not in text
