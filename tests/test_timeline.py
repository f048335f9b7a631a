"""Times on the recording's own timeline: late-starting audio, timestamp gaps, several tracks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from conftest import BECKETT, make_config, running, wait_for
from transcribed.engines.base import EngineTraits, PieceResult, PreparedPiece, Segment
from transcribed.retry import RetryPolicy
from transcribed.planning import PieceLimits
from transcribed.timing import speech_runs


class WhereSpeechIs:
    """An engine that answers each piece with one segment per run of speech it hears, so the
    transcript's times show exactly where the decoded audio put the speech."""

    traits = EngineTraits(
        name="where", model="runs-1", capacity=2, retry=RetryPolicy(max_attempts=1),
        limits=PieceLimits(target_seconds=30, max_seconds=45),
    )  # fmt: skip

    async def prepare(self, audio: np.ndarray) -> PreparedPiece:
        return PreparedPiece(seconds=len(audio) / 16000, audio=audio)

    async def transcribe(self, piece: PreparedPiece) -> PieceResult:
        assert piece.audio is not None
        audio = piece.audio
        return PieceResult(
            segments=[Segment(start=r.start, end=r.end, text="speech") for r in speech_runs(audio)]
        )


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120)


def beckett_onset() -> float:
    """Where speech starts in beckett.wav itself."""
    pcm = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(BECKETT), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return speech_runs(np.frombuffer(pcm, dtype="<i2"))[0].start


async def transcribe(tmp_path: Path, name: str) -> dict:
    config = make_config(tmp_path)
    async with running(config, WhereSpeechIs()):
        (tmp_path / "inbox" / f".{name}").rename(tmp_path / "inbox" / name)
        await wait_for(tmp_path / "outbox" / f"{Path(name).stem}.json")
    return json.loads((tmp_path / "outbox" / f"{Path(name).stem}.json").read_text())


def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def test_a_video_whose_audio_starts_late_keeps_the_videos_timeline(tmp_path: Path) -> None:
    """Audio that begins 4.9 s into an mp4 gives segments 4.9 s into the transcript, not at 0."""
    ffmpeg(
        "-f", "lavfi", "-i", "color=c=black:s=64x64:r=10:d=20", "-itsoffset", "4.9", "-i", str(BECKETT),
        "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-c:a", "aac", str(inbox(tmp_path) / ".late.mp4"),
    )  # fmt: skip
    document = await transcribe(tmp_path, "late.mp4")
    first = document["segments"][0]["start"]
    assert abs(first - (4.9 + beckett_onset())) <= 0.5, first


async def test_a_gap_in_the_timestamps_is_filled_not_closed(tmp_path: Path) -> None:
    """An mkv whose timestamps jump 600 s after 5 s puts the later speech 600 s later."""
    ffmpeg(
        "-i", str(BECKETT), "-af", "asetpts='if(gte(T,5),PTS+600/TB,PTS)'", "-c:a", "flac",
        str(inbox(tmp_path) / ".gap.mkv"),
    )  # fmt: skip
    document = await transcribe(tmp_path, "gap.mkv")
    starts = [s["start"] for s in document["segments"]]
    assert any(s < 5.0 for s in starts) and any(604.5 <= s <= 606.0 for s in starts), starts
    assert not [s for s in starts if 10.0 < s < 600.0]
    assert document["audio_seconds"] > 605


async def test_the_default_audio_track_is_taken_and_the_choice_is_reported(tmp_path: Path) -> None:
    """Of two tracks, the silent first one and the default second one with speech, the default
    one is transcribed, and the json's warnings say so."""
    ffmpeg(
        "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-i", str(BECKETT), "-map", "0:a", "-map", "1:a",
        "-t", "9", "-c:a", "flac", "-metadata:s:a:1", "language=eng",
        "-disposition:a:0", "0", "-disposition:a:1", "default", str(inbox(tmp_path) / ".two.mkv"),
    )  # fmt: skip
    document = await transcribe(tmp_path, "two.mkv")
    assert document["segments"], "the default track's speech was transcribed"
    assert any("2 audio tracks" in w and "track 2 (eng, default)" in w for w in document["warnings"]), document["warnings"]


async def test_continuous_audio_decodes_as_before_and_without_warnings(tmp_path: Path) -> None:
    """A plain wav: segments where its speech is, and no timeline warning."""
    (inbox(tmp_path) / ".plain.wav").write_bytes(BECKETT.read_bytes())
    document = await transcribe(tmp_path, "plain.wav")
    assert abs(document["segments"][0]["start"] - beckett_onset()) < 0.05
    assert document["warnings"] == []
    assert abs(document["audio_seconds"] - 9.963) < 0.01
