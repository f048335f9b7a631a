"""The diarization beside the transcription: it starts with the transcribing and ends with the
job; a failed or drained transcription cancels it (its worker killed and reaped, no orphan, no
zombie), its own failure costs only the speakers, a resumed job is labelled, and it hears the
audio track the job transcribes.

The timing of the steps is proved on the mock clock with a stand-in for the diarization (the
synthetic decoder and a fake engine: nothing but Trio's clock decides when things happen); what
happens to the real worker process is proved with real ffmpeg, the real worker and the real
models, in real time under `fail_after` guards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import trio
import trio.testing
from conftest import (
    TWO_CITIES,
    FakeEngine,
    SyntheticDecoder,
    ffmpeg,
    jobs_in,
    make_config,
    no_events,
    running,
    synthetic_recording,
)
from transcribed import jobs
from transcribed.diarization_models import check_model_dir, default_model_dir
from transcribed.diarize import Diarization, KnownSpeakers, diarize_source
from transcribed.engines.base import PieceResult, PreparedPiece
from transcribed.errors import JobError, PermanentError
from transcribed.speakers import SpeakerTurn

VIRTUAL_WAIT = 3600.0
REAL_WAIT = 60.0
needs_models = pytest.mark.skipif(
    check_model_dir(default_model_dir()) is not None,
    reason="speaker models not installed (python -m transcribed.diarization_models install)",
)
pytestmark = needs_models  # speakers = on checks the models at every daemon's start


def state_of(root: Path, stem: str) -> dict:
    try:
        return json.loads((root / "outbox" / f"{stem}.progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


async def until(check: Callable[[], bool], *, poll: float = 1.0, limit: float = VIRTUAL_WAIT) -> None:
    """Wait for `check`; in virtual time each poll costs a clock jump, so poll coarsely."""
    with trio.fail_after(limit):
        while not check():
            await trio.sleep(poll)


class FakeDiarization:
    """Stands in for `diarize_recording`: takes `seconds` of (virtual) time, then answers one
    speaker over the whole recording, or raises `failure`. Records when it started, ended, or
    was cancelled, and the audio track it was asked for."""

    def __init__(self, seconds: float, failure: Exception | None = None) -> None:
        self.seconds = seconds
        self.failure = failure
        self.started_at: list[float] = []
        self.finished_at: list[float] = []
        self.cancelled_at: list[float] = []
        self.tracks: list[int] = []

    async def __call__(self, config: object, known: KnownSpeakers, source: Path, *, audio_track: int) -> Diarization:
        self.started_at.append(trio.current_time())
        self.tracks.append(audio_track)
        try:
            await trio.sleep(self.seconds)
        except trio.Cancelled:
            self.cancelled_at.append(trio.current_time())
            raise
        if self.failure is not None:
            raise self.failure
        self.finished_at.append(trio.current_time())
        turn = SpeakerTurn(start=0.0, end=1e6, speaker="Chair")
        return Diarization(turns=[turn], speakers=["Chair"], wall_seconds=self.seconds, cpu_seconds=0.0, peak_rss_mib=0.0)


@pytest.fixture
def fake_diarization(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeDiarization]:
    def install(seconds: float, failure: Exception | None = None) -> FakeDiarization:
        fake = FakeDiarization(seconds, failure)
        monkeypatch.setattr(jobs, "diarize_recording", fake)
        return fake

    return install


def document(root: Path, stem: str = "hearing") -> dict:
    return json.loads((root / "outbox" / f"{stem}.json").read_text())


# ---------------------------------------------------------------- the steps' timing, virtual


async def test_the_diarization_runs_beside_the_pieces_and_the_job_ends_with_the_later(tmp_path: Path, virtual_clock: trio.testing.MockClock, fake_diarization: Callable[..., FakeDiarization]) -> None:
    """Pieces of 10 s one at a time (30 s in all) and a diarization of 20 s start together;
    the job publishes when the last piece is answered (not 20 s later), every segment labelled."""
    diarization = fake_diarization(20.0)
    config = make_config(tmp_path, speakers="on", settle_interval=0, rescan_interval=1000)
    engine = FakeEngine(capacity=1)
    engine.delay = 10.0
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 20)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "hearing").get("state") == "done")
        done_at = trio.current_time()
    assert diarization.started_at == [engine.started_at[0]]
    assert diarization.finished_at == [diarization.started_at[0] + 20]
    assert len(engine.answered_at) == 3 and engine.answered_at[-1] == engine.started_at[0] + 30
    assert done_at - engine.answered_at[-1] <= 1.0  # (polled once a second)
    segments = document(tmp_path)["segments"]
    assert segments and {s["speaker"] for s in segments} == {"Chair"}
    assert document(tmp_path)["speakers"] == [{"name": "Chair", "seconds": pytest.approx(1e6)}]


async def test_a_failed_transcription_cancels_the_diarization_at_once(tmp_path: Path, virtual_clock: trio.testing.MockClock, fake_diarization: Callable[..., FakeDiarization]) -> None:
    """The first piece fails for good at t+10 while the diarization would take 100 s: the
    diarization is cancelled at t+10 and the job fails with the engine's own error (not an
    exception group, not a diarizer's)."""
    diarization = fake_diarization(100.0)
    config = make_config(tmp_path, speakers="on", settle_interval=0, rescan_interval=1000)
    engine = FakeEngine(capacity=1)
    engine.delay = 10.0
    engine.fail[1] = PermanentError("the server refused this piece")
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 20)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "hearing").get("state") == "failed")
    assert diarization.cancelled_at == [diarization.started_at[0] + 10] and diarization.finished_at == []
    explanation = json.loads((tmp_path / "failed" / "hearing.error.json").read_text())
    assert explanation["error"] == "permanent" and "refused this piece" in explanation["reason"]


async def test_a_drain_cancels_the_diarization_and_the_resumed_job_is_labelled(tmp_path: Path, virtual_clock: trio.testing.MockClock, fake_diarization: Callable[..., FakeDiarization]) -> None:
    """Shut down at t=15 with pieces of 10 s: the piece in flight ends at t=20 and so does the
    diarization (cancelled, not waited for: it needed 100 s); the next start reuses the two
    journaled pieces, diarizes again from the start and publishes every segment labelled."""
    diarization = fake_diarization(100.0)
    config = make_config(tmp_path, speakers="on", drain_timeout=60, settle_interval=0, rescan_interval=1000)
    engine = FakeEngine(capacity=1)
    engine.delay = 10.0
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 40)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events) as shutdown:
        await trio.sleep(15 - trio.current_time())
        shutdown.set()
    stopped_at = trio.current_time()
    assert engine.answered_at == [10, 20]
    assert diarization.cancelled_at == [20] and 20 <= stopped_at < 20.5
    assert len(list(tmp_path.glob("work/*/pieces/*.json"))) == 2

    diarization.seconds = 5.0
    engine.delay = 0.0
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "hearing").get("state") == "done")
    assert len(diarization.started_at) == 2 and len(diarization.finished_at) == 1
    assert engine.calls == state_of(tmp_path, "hearing")["pieces"]["total"]  # two reused, none twice
    assert {s["speaker"] for s in document(tmp_path)["segments"]} == {"Chair"}


async def test_a_drain_while_only_the_diarization_runs_stops_the_job_at_once(tmp_path: Path, virtual_clock: trio.testing.MockClock, fake_diarization: Callable[..., FakeDiarization]) -> None:
    """Every piece is journaled by t=3 and the diarization needs 100 s: a shutdown at t=30
    stops the daemon at t=30 (the job stays in work/ and resumes), not at the drain deadline."""
    diarization = fake_diarization(100.0)
    config = make_config(tmp_path, speakers="on", drain_timeout=60, settle_interval=0, rescan_interval=1000)
    engine = FakeEngine(capacity=1)
    engine.delay = 1.0
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 20)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events) as shutdown:
        await trio.sleep(30 - trio.current_time())
        state = state_of(tmp_path, "hearing")
        assert engine.answered_at[-1] == 3 and state["state"] == "merging"
        assert state["waiting_reason"] == "speakers: every piece is transcribed; finding who spoke when"
        shutdown.set()
    assert 30 <= trio.current_time() < 30.5
    assert diarization.cancelled_at == [30] and len(jobs_in(tmp_path / "work")) == 1
    assert not (tmp_path / "outbox" / "hearing.json").exists()


async def test_a_failed_diarization_costs_the_speakers_not_the_transcript(tmp_path: Path, virtual_clock: trio.testing.MockClock, fake_diarization: Callable[..., FakeDiarization]) -> None:
    """The diarizer fails at t+5 while the pieces go on to t+30: the transcript is published
    with every segment, none labelled, no speakers' list, and a warning saying why."""
    fake_diarization(5.0, JobError("the diarization worker stopped unexpectedly (exit status -9)"))
    config = make_config(tmp_path, speakers="on", settle_interval=0, rescan_interval=1000)
    engine = FakeEngine(capacity=1)
    engine.delay = 10.0
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 20)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        await until(lambda: state_of(tmp_path, "hearing").get("state") == "done")
    published = document(tmp_path)
    assert len(published["segments"]) == 3 and all("speaker" not in s for s in published["segments"])
    assert "speakers" not in published
    assert published["warnings"] == ["speakers could not be labelled: the diarization worker stopped unexpectedly (exit status -9)"]


# ---------------------------------------------------------------- the real worker process


class GatedEngine(FakeEngine):
    """A fake engine whose pieces wait for `gate`, then answer (or raise `failure`)."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.gate = trio.Event()
        self.failure: Exception | None = None
        self.arrived = 0

    async def transcribe(self, piece: PreparedPiece) -> PieceResult:
        self.arrived += 1
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return await super().transcribe(piece)


def looped_speech(path: Path, minutes: float) -> Path:
    """Real speech (the moonshine wheel's 44 s reading, looped) as a 16 kHz WAV: quick to make,
    and as long a diarization as wanted (about 0.03 CPU s per second of audio)."""
    loops = max(0, round(minutes * 60 / 44.37) - 1)
    ffmpeg("-stream_loop", str(loops), "-i", str(TWO_CITIES), "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(path))
    return path


def children_about(source_name: str) -> dict[int, str]:
    """This process's descendants that are the diarization worker or read the job's source."""
    found = {}
    for process in psutil.Process().children(recursive=True):
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "transcribed.diarize_worker" in line:
            found[process.pid] = "worker"
        elif source_name in line or "source." in line:
            found[process.pid] = "ffmpeg"
    return found


def gone(pids: dict[int, str]) -> dict[int, str]:
    """Those of `pids` that still exist (running, or a zombie nobody reaped)."""
    return {pid: kind for pid, kind in pids.items() if psutil.pid_exists(pid)}


async def wait_for_worker(seen: dict[int, str], source_name: str) -> None:
    """Until the diarization worker is up (collecting every child seen on the way)."""
    with trio.fail_after(REAL_WAIT):
        while "worker" not in seen.values():
            seen.update(children_about(source_name))
            await trio.sleep(0.05)
    await trio.sleep(1.0)  # past its start: it is diarizing
    seen.update(children_about(source_name))


@needs_models
async def test_a_failed_transcription_kills_and_reaps_the_real_worker(tmp_path: Path) -> None:
    """A 30-minute recording (at least 50 CPU s to diarize): the engine fails for good once the
    worker is diarizing; the job is recorded failed within 20 s with the engine's error, and by
    then the worker and every ffmpeg of the job are gone (no orphan, no zombie)."""
    recording = looped_speech(tmp_path / "long.wav", 30)
    config = make_config(tmp_path / "root", speakers="on")
    engine = GatedEngine(capacity=1)
    seen: dict[int, str] = {}
    async with running(config, engine):
        shutil.move(recording, tmp_path / "root" / "inbox" / "hearing.wav")
        await wait_for_worker(seen, "hearing.wav")
        assert engine.arrived >= 1
        engine.failure = PermanentError("the server refused this piece")
        engine.gate.set()
        with trio.fail_after(20):
            await until(lambda: state_of(tmp_path / "root", "hearing").get("state") == "failed", poll=0.05, limit=20)
        assert gone(seen) == {}
    explanation = json.loads((tmp_path / "root" / "failed" / "hearing.error.json").read_text())
    assert explanation["error"] == "permanent"


@needs_models
async def test_a_drain_kills_the_real_worker_and_the_resumed_job_gets_speakers(tmp_path: Path) -> None:
    """Shut down while the first pieces are in flight and the worker diarizes 6 minutes of
    speech: the daemon is gone within 15 s, the worker and every ffmpeg with it; the next start
    reuses the journaled pieces, diarizes the whole recording again and labels every segment."""
    recording = looped_speech(tmp_path / "reading.wav", 6)
    root = tmp_path / "root"
    config = make_config(root, speakers="on", drain_timeout=30)
    engine = GatedEngine(capacity=2)
    seen: dict[int, str] = {}
    with trio.fail_after(REAL_WAIT):
        async with running(config, engine) as shutdown:
            shutil.move(recording, root / "inbox" / "hearing.wav")
            await wait_for_worker(seen, "hearing.wav")
            await until(lambda: engine.arrived == 2, poll=0.05, limit=REAL_WAIT)
            shutdown.set()
            await trio.sleep(0.5)  # the daemon is draining: no new piece starts
            engine.gate.set()  # the two in flight are answered
            began = trio.current_time()
    assert trio.current_time() - began < 15
    assert gone(seen) == {}
    journaled = len(list(root.glob("work/*/pieces/*.json")))
    assert journaled == 2

    resumed = FakeEngine(capacity=2)
    with trio.fail_after(3 * REAL_WAIT):
        async with running(config, resumed):
            await until(lambda: state_of(root, "hearing").get("state") in ("done", "failed"), poll=0.1, limit=3 * REAL_WAIT)
    state = state_of(root, "hearing")
    assert state["state"] == "done" and resumed.calls == state["pieces"]["total"] - journaled
    published = document(root)
    assert published["speakers"][0]["name"] == "Speaker 1" and published["speakers"][0]["seconds"] > 200
    assert {s.get("speaker") for s in published["segments"]} == {"Speaker 1"}


@needs_models
async def test_a_worker_that_crashes_costs_the_speakers_and_says_so(tmp_path: Path) -> None:
    """The diarization worker is killed (as by a native crash) while the pieces wait: the job
    still publishes every piece's segment, unlabelled, with a warning naming the crash."""
    recording = looped_speech(tmp_path / "reading.wav", 6)
    root = tmp_path / "root"
    config = make_config(root, speakers="on")
    engine = GatedEngine(capacity=2)
    seen: dict[int, str] = {}
    async with running(config, engine):
        shutil.move(recording, root / "inbox" / "hearing.wav")
        await wait_for_worker(seen, "hearing.wav")
        (worker,) = [pid for pid, kind in seen.items() if kind == "worker"]
        os.kill(worker, signal.SIGKILL)
        engine.gate.set()
        await until(lambda: state_of(root, "hearing").get("state") in ("done", "failed"), poll=0.1, limit=REAL_WAIT)
    assert state_of(root, "hearing")["state"] == "done"
    published = document(root)
    assert len(published["segments"]) == engine.calls > 30
    assert "speakers" not in published and all("speaker" not in s for s in published["segments"])
    assert published["warnings"] == [
        "speakers could not be labelled: the diarization worker stopped unexpectedly (exit status -9)"
    ]


# ---------------------------------------------------------------- the chosen audio track


def two_tracks(path: Path, *, voice_default: bool) -> Path:
    """A Matroska file: track 1 is silence, track 2 the 44 s reading; the default disposition
    on track 2 when `voice_default`, else on track 1."""
    first, second = ("0", "default") if voice_default else ("default", "0")
    ffmpeg(
        "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-i", str(TWO_CITIES),
        "-map", "0:a", "-map", "1:a", "-shortest", "-c:a", "flac",
        "-disposition:a:0", first, "-disposition:a:1", second, str(path),
    )  # fmt: skip
    return path


@needs_models
async def test_the_diarization_hears_the_track_the_job_transcribes(tmp_path: Path) -> None:
    """In a two-track file whose default track is the second (a reader; the first is silence),
    the job transcribes the second and the diarizer hears it: one speaker, their turns covering
    the reading. Track 1 alone gives the diarizer no one, so the labels come from the chosen
    track (before, the pass decoded track 1 whatever the job chose)."""
    source = two_tracks(tmp_path / "hearing.mkv", voice_default=True)
    with trio.fail_after(REAL_WAIT):
        silent = await diarize_source(source, model_dir=default_model_dir(), audio_track=0)
    assert silent.speakers == [] and silent.turns == []
    root = tmp_path / "root"
    config = make_config(root, speakers="on")
    engine = FakeEngine()
    async with running(config, engine):
        shutil.copy(source, root / "inbox" / ".hearing.mkv")
        os.rename(root / "inbox" / ".hearing.mkv", root / "inbox" / "hearing.mkv")
        await until(lambda: state_of(root, "hearing").get("state") in ("done", "failed"), poll=0.1, limit=REAL_WAIT)
    published = document(root)
    assert any("track 2 (default) was transcribed" in w for w in published["warnings"])
    assert [s["name"] for s in published["speakers"]] == ["Speaker 1"]
    assert 25.0 < published["speakers"][0]["seconds"] < 44.4
    assert published["segments"] and {s.get("speaker") for s in published["segments"]} == {"Speaker 1"}


def test_the_two_track_file_marks_the_chosen_track_default(tmp_path: Path) -> None:
    """The test file above is what it claims: ffprobe sees two audio tracks, the second default."""
    source = two_tracks(tmp_path / "hearing.mkv", voice_default=True)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index:stream_disposition=default", "-of", "json", str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    defaults = [stream["disposition"]["default"] for stream in json.loads(probe.stdout)["streams"]]
    assert defaults == [0, 1]
