"""The piece plan through the daemon, on real files and real ffmpeg, with a fake engine that
counts its calls: silent recordings cost no request, and a resumed job keeps the schedule (the
claimed length and the parallelism) its first planning aimed at."""

from __future__ import annotations

import json
import shutil
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import speech_corpus
from conftest import (
    TWO_CITIES,
    FakeEngine,
    ffmpeg,
    finished,
    jobs_in,
    make_config,
    running,
    wait_until,
)
from test_planning import room_tone
from transcribed.engines.base import PieceResult, PreparedPiece
from transcribed.planning import SAMPLE_RATE, PieceLimits


def write_wav(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(samples.astype("<i2").tobytes())
    return path


class RecordingEngine(FakeEngine):
    """The fake engine, also keeping the loudest 20 ms of every piece it is sent (dBFS)."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.peaks: list[float] = []

    async def transcribe(self, piece: PreparedPiece) -> PieceResult:
        assert piece.audio is not None
        whole = len(piece.audio) - len(piece.audio) % 320
        frames = piece.audio[:whole].astype(np.float64).reshape(-1, 320)
        peak = float(np.sqrt((frames**2).mean(axis=1)).max()) if whole else 0.0
        self.peaks.append(20 * np.log10(max(peak, 1e-10) / 32768))
        return await super().transcribe(piece)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (.ci/setup)")
async def test_silent_recordings_cost_no_request(tmp_path: Path) -> None:
    """Ten muted minutes, five minutes of room tone, and five muted minutes before a minute of
    speech, dropped together: the engine hears only the speech (3 requests; before this, 40,
    every silent piece among them)."""
    source = tmp_path / "sources"
    source.mkdir()
    speech = source / "speech.wav"
    speech_corpus.build(speech, 60.0, seed=5)
    with wave.open(str(speech)) as reader:
        voice = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    muted = np.zeros(300 * SAMPLE_RATE, dtype=np.int16)
    files = {
        "muted": write_wav(source / "muted.wav", np.zeros(600 * SAMPLE_RATE, dtype=np.int16)),
        "room": write_wav(source / "room.wav", room_tone(300, level_db=-55)),
        "late": write_wav(source / "late.wav", np.concatenate([muted, voice])),
    }
    engine = RecordingEngine(capacity=4, limits=PieceLimits(target_seconds=30, max_seconds=45))
    config = make_config(tmp_path)
    async with running(config, engine):
        for name, path in files.items():
            shutil.copy(path, tmp_path / "inbox" / f"{name}.wav")
        states = {name: await finished(tmp_path, name) for name in files}
    assert all(state["state"] == "done" for state in states.values())
    assert states["muted"]["pieces"]["total"] >= 10 and states["room"]["pieces"]["total"] >= 5
    sent_seconds = sum(engine.pieces_seen) / SAMPLE_RATE
    assert 1 <= engine.calls <= 4 and sent_seconds <= 61.5
    assert min(engine.peaks) > -40  # every piece sent holds speech
    for name in ("muted", "room"):
        assert json.loads((tmp_path / "outbox" / f"{name}.json").read_text())["segments"] == []
    late = json.loads((tmp_path / "outbox" / "late.json").read_text())["segments"]
    assert late and min(segment["start"] for segment in late) >= 299.0


async def test_a_resumed_job_keeps_the_schedule_of_its_first_planning(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A job planned for 2 slots, interrupted after two pieces and resumed by an engine with 6
    slots, sends only the rest of the same plan (its journal recorded the claimed length and
    the parallelism), and its transcript is identical to an uninterrupted run's."""
    looped = tmp_path / "media" / "looped.wav"
    looped.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-stream_loop", "3", "-i", str(TWO_CITIES), "-ac", "1", "-ar", "16000", str(looped))
    source = media("long.mp3", looped)
    limits = PieceLimits(target_seconds=30, max_seconds=45, min_target_seconds=5)

    clean_root = tmp_path / "clean"
    clean_engine = FakeEngine(capacity=2, limits=limits)
    async with running(make_config(clean_root), clean_engine):
        shutil.copy(source, clean_root / "inbox" / "long.mp3")
        await finished(clean_root, "long")
    total = clean_engine.calls
    lengths = np.array(clean_engine.pieces_seen) / SAMPLE_RATE
    assert total >= 6 and lengths[-3:].max() < 0.6 * lengths[1:4].min()  # the pieces shrank (after the quick first one)

    crashed = tmp_path / "crashed"
    hanging_engine = FakeEngine(capacity=2, limits=limits)
    hanging_engine.hang_after = 2
    async with running(make_config(crashed, drain_timeout=0), hanging_engine):
        shutil.copy(source, crashed / "inbox" / "long.mp3")
        await wait_until(lambda: len(list((crashed / "work").glob("*/pieces/*.json"))) >= 2)
    journaled = len(list((crashed / "work").glob("*/pieces/*.json")))
    (job_file,) = (crashed / "work").glob("*/job.json")
    recorded = json.loads(job_file.read_text())["limits"]
    assert recorded["parallelism"] == 2 and 170 < recorded["total_seconds"] < 180

    resumed_engine = FakeEngine(capacity=6, limits=limits)
    async with running(make_config(crashed), resumed_engine):
        await finished(crashed, "long")
    assert resumed_engine.calls == total - journaled
    for suffix in (".txt", ".srt", ".vtt"):
        assert (crashed / "outbox" / f"long{suffix}").read_text() == (clean_root / "outbox" / f"long{suffix}").read_text()
    assert jobs_in(crashed / "work") == []
