"""Faults that are not the file's never fail the file; the daemon's waits and attempt accounting
run on the mock clock with exact virtual times.

The in-process daemon runs with the synthetic decoder (conftest.SyntheticDecoder: no ffmpeg, so
nothing but Trio's clock decides when things happen) and a fake engine, unless a test says
otherwise."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import (
    FakeEngine,
    SyntheticDecoder,
    factory_for,
    jobs_in,
    make_config,
    no_events,
    running,
    synthetic_recording,
)
from transcribed.cli import main, transcribe_files
from transcribed.config import load_config
from transcribed.errors import ConfigError, QuotaExhaustedError
from transcribed.journal import JobRecord, Journal
from transcribed.lock import hold_work_lock
from transcribed.naming import safe_stem

VIRTUAL_WAIT = 3600.0  # a hang in virtual time jumps here at once and fails


def state_of(root: Path, stem: str) -> dict:
    try:
        return json.loads((root / "outbox" / f"{stem}.progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


async def until(check: Callable[[], bool], *, poll: float = 2.0) -> None:
    """Wait in virtual time for `check` (what is asserted are the times the fakes recorded, so
    polling coarsely costs no precision and saves the clock many jumps)."""
    with trio.fail_after(VIRTUAL_WAIT):
        while not check():
            await trio.sleep(poll)


def the_record(root: Path) -> JobRecord:
    (folder,) = jobs_in(root / "work")
    return Journal(root / "work" / folder).load()


# ---------------------------------------------------------------- attempts and restarts


async def test_a_quota_outage_across_five_restarts_fails_nothing(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """While the engine answers insufficient_quota, five routine restarts each cancel the
    waiting job at the drain deadline; no attempt is counted, nothing goes to failed/, and once
    the quota is back the job finishes."""
    config = make_config(tmp_path, drain_timeout=5, max_attempts=3)
    engine = FakeEngine()
    engine.raising = QuotaExhaustedError("the account's quota is exhausted")
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 40)
    for _ in range(5):
        async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
            await until(lambda: (state_of(tmp_path, "hearing").get("waiting_reason") or "").startswith("quota: "))
        assert the_record(tmp_path).attempts == 0
        assert state_of(tmp_path, "hearing")["waiting_reason"].startswith("daemon stopped")
    assert not (tmp_path / "failed").exists() or os.listdir(tmp_path / "failed") == []
    engine.raising = None
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "hearing").get("state") == "done")
    assert (tmp_path / "outbox" / "hearing.txt").exists() and jobs_in(tmp_path / "work") == []


async def test_a_drain_lets_the_pieces_in_flight_finish_and_gives_the_attempt_back(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """Pieces take 10 s. Shut down at t=15: no new piece starts, the two in flight (started at
    t=10) are answered and journaled at t=20, the daemon is gone at t=20, and the job waits in
    work/ with its attempt given back."""
    config = make_config(tmp_path, drain_timeout=60, settle_interval=0, rescan_interval=1000)
    engine = FakeEngine(capacity=2)
    engine.delay = 10.0
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 120)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events) as shutdown:
        await trio.sleep(15 - trio.current_time())
        shutdown.set()
    stopped_at = trio.current_time()
    assert engine.started_at == [0, 0, 10, 10]
    assert engine.answered_at == [10, 10, 20, 20]
    assert 20 <= stopped_at < 20.5  # (the last progress write may wait out its 0.25 s interval)
    assert len(list(tmp_path.glob("work/*/pieces/*.json"))) == 4
    assert the_record(tmp_path).attempts == 0


async def test_the_drain_deadline_ends_a_hung_piece_and_the_job_resumes_later(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """A piece that never answers is cancelled exactly drain_timeout after the shutdown; the
    attempt is given back, and the next start sends only that piece again."""
    config = make_config(tmp_path, drain_timeout=7, settle_interval=0, rescan_interval=1000)
    engine = FakeEngine(capacity=1)
    engine.hang_after = 1
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 20)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events) as shutdown:
        await until(lambda: engine.calls == 2)
        began = trio.current_time()
        shutdown.set()
    assert 7 <= trio.current_time() - began < 7.5
    assert the_record(tmp_path).attempts == 0 and len(list(tmp_path.glob("work/*/pieces/*.json"))) == 1
    engine.hang_after = None
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "hearing").get("state") == "done")
    assert engine.calls == 2 + state_of(tmp_path, "hearing")["pieces"]["total"] - 1


async def _run_with_record(tmp_path: Path, record_changes: dict[str, int], pieces: int) -> dict:
    """Start a daemon on a job that a previous run left behind as described."""
    engine = FakeEngine()
    config = make_config(tmp_path, max_attempts=3)
    job = tmp_path / "work" / "20260101T000000-abcdef"
    synthetic_recording(job / "source.mp3", 30)
    journal = Journal(job)
    record = JobRecord(job_id=job.name, display_name="hearing.mp3", name_b64="", stem="hearing", source_file="source.mp3", claimed_at="2026-01-01T00:00:00Z")
    journal.save(dataclasses.replace(record, **record_changes))
    (job / "pieces").mkdir()
    for index in range(pieces):  # stand-ins: never reused (their spans match no plan)
        (job / "pieces" / f"{900 + index:06d}.json").write_text(json.dumps({"span": {"index": 900 + index, "start": 0, "end": 1, "keep_start": 0, "keep_end": 1}, "segments": [], "cost": 0}))
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "hearing").get("state") in ("done", "failed"))
    return state_of(tmp_path, "hearing")


async def test_crashes_with_progress_in_between_never_make_a_file_poison(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """Three counted crashes, but a new piece was journaled after the last one started: the
    count starts afresh and the job finishes."""
    state = await _run_with_record(tmp_path, {"attempts": 3, "pieces_at_attempt": 2}, pieces=3)
    assert state["state"] == "done"


async def test_crashes_without_progress_make_a_file_poison(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """Three counted crashes with no new piece since the last one started: poison, in failed/."""
    state = await _run_with_record(tmp_path, {"attempts": 3, "pieces_at_attempt": 2}, pieces=2)
    assert state["state"] == "failed"
    explanation = json.loads((tmp_path / "failed" / "hearing.error.json").read_text())
    assert explanation["error"] == "poison" and "before a single new piece" in explanation["reason"]


# ---------------------------------------------------------------- waits in virtual time


async def test_a_full_disk_holds_every_claim_until_space_returns(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """With less than min_free_space_mb free until t=100, a file dropped at t=0 stays in the
    inbox; it is claimed at the first rescan after t=100 plus the settle time."""
    config = make_config(tmp_path, min_free_space_mb=10, settle_interval=2, rescan_interval=5)
    engine = FakeEngine()
    free = lambda path: (1 << 40) if trio.current_time() >= 100 else 0  # noqa: E731
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 10)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events, free_space=free):
        await until(lambda: engine.calls > 0)
        assert (tmp_path / "inbox" / "hearing.mp3").exists() is False
    assert engine.started_at[0] == 102


async def test_a_file_is_claimed_once_it_has_stopped_changing_for_the_settle_time(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """A writer appends every 3 s until t=12.5; with a settle time of 4 s and a rescan every
    1 s, the scan at t=13 sees the last change and the file is claimed at t=17, not before."""
    config = make_config(tmp_path, settle_interval=4, rescan_interval=1)
    engine = FakeEngine()
    target = synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 10)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await trio.sleep(0.5)
        for _ in range(4):
            await trio.sleep(3)
            with target.open("a") as handle:
                handle.write(" ")
        await until(lambda: engine.calls > 0, poll=1)
    assert engine.started_at[0] == 17


# ---------------------------------------------------------------- owners of work/ and the inbox


def test_a_second_daemon_on_the_same_work_folder_exits_78_naming_the_first(tmp_path: Path) -> None:
    """While one daemon holds work/, another started on the same root exits 78 with a sentence
    that names the first one's pid."""
    (tmp_path / "work").mkdir()
    with hold_work_lock(tmp_path / "work"):
        result = subprocess.run(
            [sys.executable, "-m", "transcribed", "run", "--root", str(tmp_path), "--log-format", "json"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == 78
    assert f"pid {os.getpid()}" in result.stderr and "already owns" in result.stderr


async def test_two_daemons_sharing_an_inbox_transcribe_every_file_once(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """Two daemons, each with its own work/ and one shared inbox and outbox: twenty files
    dropped at once are each transcribed exactly once, under twenty distinct names."""
    shared = {"inbox": tmp_path / "inbox", "outbox": tmp_path / "outbox", "done": tmp_path / "done", "failed": tmp_path / "failed"}
    configs = [make_config(tmp_path / f"host{n}", settle_interval=1, rescan_interval=1, log_level="info", **{k: str(v) for k, v in shared.items()}) for n in (1, 2)]
    engines = [FakeEngine(), FakeEngine()]
    for number in range(20):
        synthetic_recording(shared["inbox"] / f"session {number % 10}.mp3" if number < 10 else shared["inbox"] / f"session {number % 10}.wav", 8)
    async with running(configs[0], engines[0], decoder=SyntheticDecoder(), watcher=no_events):
        async with running(configs[1], engines[1], decoder=SyntheticDecoder(), watcher=no_events):
            await until(lambda: len(os.listdir(shared["done"])) == 20 if shared["done"].exists() else False)
    assert all(engine.calls > 0 for engine in engines)
    transcripts = sorted(p.name for p in shared["outbox"].glob("*.txt"))
    assert len(transcripts) == 20, " ".join(sorted(os.listdir(shared["outbox"])))
    assert sum(e.calls for e in engines) == sum(state["pieces"]["done"] for state in (json.loads(p.read_text()) for p in shared["outbox"].glob("*.progress.json")))


# ---------------------------------------------------------------- folders in trouble


async def test_an_unwritable_done_folder_makes_jobs_wait_and_nothing_fails(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """done/ cannot be written (here: it is a file, which even root cannot write into): the
    finished job waits with reason folder, no new file is claimed, nothing goes to failed/; once
    done/ is a folder again both files end done."""
    config = make_config(tmp_path, service_retry_interval=10, settle_interval=1, rescan_interval=1)
    (tmp_path / "done").write_text("not a folder")
    engine = FakeEngine()
    synthetic_recording(tmp_path / "inbox" / "first.mp3", 10)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "first").get("state") == "waiting")
        assert state_of(tmp_path, "first")["waiting_reason"].startswith("folder: cannot move the finished source")
        synthetic_recording(tmp_path / "inbox" / "second.mp3", 10)
        await trio.sleep(30)
        assert (tmp_path / "inbox" / "second.mp3").exists()  # intake pauses meanwhile
        (tmp_path / "done").unlink()
        (tmp_path / "done").mkdir()
        await until(lambda: state_of(tmp_path, "second").get("state") == "done")
    assert state_of(tmp_path, "first")["state"] == "done"
    assert sorted(os.listdir(tmp_path / "done")) == ["first.mp3", "second.mp3"]
    assert os.listdir(tmp_path / "failed") == []


async def test_an_unwritable_outbox_keeps_the_finished_work_and_fails_nothing(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """The outbox is replaced by a file while a job runs: the job waits (reason folder) instead
    of failing as a bug, and once the outbox is back it publishes without sending any piece
    again."""
    config = make_config(tmp_path, service_retry_interval=10)
    engine = FakeEngine()
    engine.delay = 5
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 20)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "hearing").get("state") == "transcribing")
        shutil.move(tmp_path / "outbox", tmp_path / "outbox-away")
        (tmp_path / "outbox").write_text("not a folder")
        await until(lambda: bool(engine.answered_at) and trio.current_time() > engine.answered_at[-1] + 25)
        calls = engine.calls
        assert not (tmp_path / "failed").exists() or os.listdir(tmp_path / "failed") == []
        (tmp_path / "outbox").unlink()
        shutil.move(tmp_path / "outbox-away", tmp_path / "outbox")
        await until(lambda: state_of(tmp_path, "hearing").get("state") == "done")
    assert engine.calls == calls and (tmp_path / "outbox" / "hearing.txt").exists()


async def test_a_corrupt_job_record_is_quarantined_and_the_daemon_goes_on(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """A truncated work/JOB/job.json no longer stops every start: that job's source goes to
    failed/ with an explanation, and a new file is transcribed."""
    job = tmp_path / "work" / "20260101T000000-abcdef"
    synthetic_recording(job / "source.mp3", 10)
    (job / "job.json").write_text('{"job_id": "2026010')
    config = make_config(tmp_path)
    engine = FakeEngine()
    synthetic_recording(tmp_path / "inbox" / "next.mp3", 10)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "next").get("state") == "done")
    (explanation,) = (tmp_path / "failed").glob("*.error.json")
    data = json.loads(explanation.read_text())
    assert data["error"] == "corrupt_job" and Path(data["moved_to"]).read_text().startswith("seconds=")
    assert jobs_in(tmp_path / "work") == []


async def test_a_removed_and_recreated_inbox_is_watched_again(tmp_path: Path, media: Callable[..., Path]) -> None:
    """rm -rf inbox; mkdir inbox while the daemon runs: it stays up, and a file dropped into the
    new inbox is found by the re-armed watcher long before the next rescan."""
    config = make_config(tmp_path, rescan_interval=600, settle_interval=0.2)
    engine = FakeEngine()
    async with running(config, engine):
        await trio.sleep(0.5)
        shutil.rmtree(tmp_path / "inbox")
        (tmp_path / "inbox").mkdir()
        await trio.sleep(1.0)
        shutil.copy(media("hearing.mp3"), tmp_path / "inbox" / "hearing.mp3")
        with trio.fail_after(30):
            while state_of(tmp_path, "hearing").get("state") != "done":
                await trio.sleep(0.05)


async def test_a_copy_that_stalls_past_the_settle_time_ends_as_one_full_transcript(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A producer writes half a recording, pauses longer than the settle time (the daemon claims
    it), then writes the rest into the same file while the job runs: the job notices before it
    publishes, starts over from the whole file, and publishes one transcript of the full length."""
    config = make_config(tmp_path, settle_interval=0.3, rescan_interval=0.2)
    engine = FakeEngine()
    engine.delay = 1.0  # a real engine takes far longer than the producer's pause
    whole = media("hearing.wav").read_bytes()
    (tmp_path / "inbox").mkdir(exist_ok=True)
    async with running(config, engine):
        with (tmp_path / "inbox" / "hearing.wav").open("wb") as handle:
            handle.write(whole[: len(whole) // 2])
            handle.flush()
            with trio.fail_after(30):
                while not list(tmp_path.glob("work/*/source.wav")):
                    await trio.sleep(0.02)
            await trio.sleep(0.2)
            handle.write(whole[len(whole) // 2 :])
        with trio.fail_after(60):
            while state_of(tmp_path, "hearing").get("state") != "done":
                await trio.sleep(0.05)
    document = json.loads((tmp_path / "outbox" / "hearing.json").read_text())
    assert document["audio_seconds"] > 9.5 and document["warnings"] == []
    assert not (tmp_path / "outbox" / "hearing-2.json").exists()


def test_without_ffmpeg_the_daemon_exits_78_naming_what_is_missing(tmp_path: Path) -> None:
    """No ffmpeg, ffprobe or prlimit on PATH: exit 78 at start with their names and the command
    that installs them, not 'ready' and then every file failed."""
    env = {"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "transcribed", "run", "--root", str(tmp_path / "root"), "--log-format", "json"],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 78
    assert "ffmpeg, ffprobe, prlimit not found" in result.stderr and "apt-get install ffmpeg util-linux" in result.stderr
    assert "daemon.ready" not in result.stderr


# ---------------------------------------------------------------- names and the one-shot command


def test_a_name_ending_in_progress_never_takes_another_jobs_progress_file() -> None:
    """talk.progress.wav would write talk.progress.json, which is talk.wav's progress file."""
    assert safe_stem(b"talk.progress.wav") == "talk-progress"
    assert safe_stem(b"talk.error.mp3") == "talk-error"
    assert safe_stem(b"talk.wav") == "talk"


async def test_one_shot_inputs_with_the_same_name_get_two_transcripts(tmp_path: Path, media: Callable[..., Path]) -> None:
    """transcribe a/x.wav b/x.wav --out D writes D/x.* and D/x-2.*, neither overwriting the other."""
    first, second = tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav"
    for path, source in ((first, "beckett"), (second, "two")):
        path.parent.mkdir()
        shutil.copy(media(f"{source}.wav"), path)
    config = make_config(tmp_path / "root")
    engine = FakeEngine()
    failures = await transcribe_files(config, [first, second], tmp_path / "D", engine_factory=factory_for(engine))
    assert failures == 0
    assert (tmp_path / "D" / "x.txt").exists() and (tmp_path / "D" / "x-2.txt").exists()
    assert first.exists() and second.exists()  # sources stay where they are


async def test_a_bad_one_shot_file_fails_alone(tmp_path: Path, media: Callable[..., Path]) -> None:
    """One file that is not media fails (counted once) while the other is transcribed."""
    good, bad = media("good.mp3"), tmp_path / "bad.mp3"
    bad.write_bytes(os.urandom(5000))
    config = make_config(tmp_path / "root")
    failures = await transcribe_files(config, [bad, good], tmp_path / "out", engine_factory=factory_for(FakeEngine()))
    assert failures == 1 and (tmp_path / "out" / "good.txt").exists() and not (tmp_path / "out" / "bad.txt").exists()


# ---------------------------------------------------------------- configuration that could leak


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRANSCRIBED_OPENAI_API_KEY_FILE", "sk-proj-AbCdEf0123456789GhIjKl"),
        ("TRANSCRIBED_OPENAI_MAX_ATTEMPTS", "sk-proj-AbCdEf0123456789GhIjKl"),
        ("TRANSCRIBED_OPENAI_UPLOAD_FORMAT", "sk-proj-AbCdEf0123456789GhIjKl"),
    ],
)
def test_a_key_put_into_another_setting_never_reaches_stderr(variable: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The key pasted where a path, a number or a name belongs: start-up stops naming the
    setting, and no part of the key is printed."""
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr("transcribed.cli.configure_logging", lambda **_: None)  # keep the suite's logging
    monkeypatch.setenv("TRANSCRIBED_ENGINE", "openai")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = main(["run", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 78 and value[:12] not in err and value[-6:] not in err
    assert variable.removeprefix("TRANSCRIBED_OPENAI_").lower() in err


@pytest.mark.parametrize("key", ["max_cost_per_file", "price_per_minute", "request_timeout"])
def test_non_finite_numbers_are_refused(key: str) -> None:
    """nan and inf would switch the cost cap off, write NaN into JSON or crash on SIGTERM."""
    for value in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match="finite"):
            load_config(environ={}, flags={f"openai.{key}": value})
    with pytest.raises(ConfigError, match="finite"):
        load_config(environ={}, flags={"drain_timeout": "nan"})
