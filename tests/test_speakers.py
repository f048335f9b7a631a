"""Who spoke when: speakers onto segments, naming, the worker on real speech, reference clips,
the .docx, and the job's outputs carrying speakers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import trio

from transcribed.diarization_models import check_model_dir, default_model_dir
from transcribed.diarize import KnownSpeakers, diarize_source, load_known_speakers
from transcribed.diarize_worker import name_speakers
from transcribed.docx_output import paragraph_text, render_docx, turn_paragraphs
from transcribed.engines.base import Segment
from transcribed.errors import ConfigError
from transcribed.speakers import SpeakerTurn, assign_speakers, talk_times

from conftest import TWO_CITIES

MODELS = default_model_dir()
needs_models = pytest.mark.skipif(
    check_model_dir(MODELS) is not None,
    reason="speaker models not installed (python -m transcribed.diarization_models install)",
)


def _write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as sink:
        sink.setnchannels(1)
        sink.setsampwidth(2)
        sink.setframerate(16_000)
        sink.writeframes(np.clip(samples * 32767, -32768, 32767).astype("<i2").tobytes())
    return path


def _decode(path: Path) -> np.ndarray:
    raw = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-ac",
            "1",
            "-ar",
            "16000",
            "-f",
            "s16le",
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


# ---------------------------------------------------------------- pure: turns onto segments


def test_a_segment_takes_the_speaker_it_overlaps_most() -> None:
    """Majority overlap decides; a segment in a gap takes the nearest turn within 1 s, else none."""
    turns = [
        SpeakerTurn(start=0.0, end=4.0, speaker="Chair"),
        SpeakerTurn(start=4.2, end=10.0, speaker="Speaker 1"),
        SpeakerTurn(start=20.0, end=25.0, speaker="Chair"),
    ]
    segments = [
        Segment(start=0.5, end=3.0, text="Order."),
        Segment(start=3.0, end=6.0, text="Thank you."),  # 1 s Chair, 1.8 s Speaker 1
        Segment(start=10.4, end=11.0, text="Yes."),  # 0.4 s after Speaker 1's turn
        Segment(start=14.0, end=15.0, text="Hm."),  # 4 s from anyone
        Segment(start=19.0, end=21.0, text="Next."),
    ]
    labelled = assign_speakers(segments, turns)
    assert [s.speaker for s in labelled] == ["Chair", "Speaker 1", "Speaker 1", None, "Chair"]
    assert [s.text for s in labelled] == [s.text for s in segments]


def test_talk_time_adds_up_each_speakers_turns() -> None:
    """The speakers' list keeps the given order and sums every turn of each."""
    turns = [
        SpeakerTurn(start=0.0, end=4.0, speaker="Chair"),
        SpeakerTurn(start=5.0, end=6.5, speaker="Speaker 1"),
        SpeakerTurn(start=7.0, end=8.0, speaker="Chair"),
    ]
    assert talk_times(turns, ["Chair", "Speaker 1"]) == [
        {"name": "Chair", "seconds": 5.0},
        {"name": "Speaker 1", "seconds": 1.5},
    ]


def test_speaker_survives_the_journal_round_trip() -> None:
    """A segment's speaker goes into its dict (and the .json) and comes back; none is left out."""
    labelled = Segment(start=1.0, end=2.0, text="Aye.", speaker="Clerk")
    assert Segment.from_dict(labelled.as_dict()) == labelled
    assert "speaker" not in Segment(start=1.0, end=2.0, text="Aye.").as_dict()
    assert labelled.shifted(10.0).speaker == "Clerk"


def test_names_go_to_the_matching_voices_and_the_rest_are_numbered() -> None:
    """A reference names the speaker whose voice matches it (one each); the others are
    Speaker 1, 2... in order of first appearance, and a poor match names no one."""
    rng = np.random.default_rng(3)
    voices = rng.standard_normal((3, 256)).astype(np.float32)
    voices /= np.linalg.norm(voices, axis=1, keepdims=True)
    close = voices[2] + 0.02 * rng.standard_normal(256).astype(np.float32)  # similarity ~0.95
    close /= np.linalg.norm(close)
    stranger = rng.standard_normal(256).astype(np.float32)
    stranger /= np.linalg.norm(stranger)
    references = np.stack([close, stranger])
    labels = name_speakers(voices, ["Chair", "Nobody"], references, order=[1, 2, 0])
    assert labels == ["Speaker 2", "Speaker 1", "Chair"]


# ---------------------------------------------------------------- the .docx


SEGMENTS = [
    Segment(start=1.2, end=3.0, text="Good evening.", speaker="Chair"),
    Segment(start=3.1, end=5.0, text="We begin with item one.", speaker="Chair"),
    Segment(start=6.0, end=9.0, text="Thank you, Chair.", speaker="Speaker 1"),
    Segment(start=3725.0, end=3727.0, text="Motion carried.", speaker="Chair"),
]


def test_turns_join_one_speakers_consecutive_segments() -> None:
    """Consecutive segments of one speaker are one paragraph, opening with its time and name."""
    texts = [paragraph_text(p) for p in turn_paragraphs(SEGMENTS)]
    assert texts == [
        "[00:00:01] Chair: Good evening. We begin with item one.",
        "[00:00:06] Speaker 1: Thank you, Chair.",
        "[01:02:05] Chair: Motion carried.",
    ]
    unlabelled = [Segment(start=s.start, end=s.end, text=s.text) for s in SEGMENTS[:2]]
    assert [paragraph_text(p) for p in turn_paragraphs(unlabelled)] == [
        "[00:00:01] Good evening.",
        "[00:00:03] We begin with item one.",
    ]


def test_the_same_transcript_gives_the_same_docx_bytes() -> None:
    """No time of writing leaks into the package: a resumed job's .docx is byte-identical."""
    metadata = {"source": "hearing.mp3", "engine": "embedded", "audio_seconds": 3727.0}
    first = render_docx(SEGMENTS, metadata, date="2026-12-01")
    assert render_docx(SEGMENTS, metadata, date="2026-12-01") == first


@pytest.mark.slow
def test_the_docx_opens_in_libreoffice_with_the_transcripts_text(tmp_path: Path) -> None:
    """LibreOffice converts the .docx to PDF headless, and the PDF's text has the title
    block, the speakers' list and every turn paragraph."""
    soffice, pdftotext = shutil.which("soffice"), shutil.which("pdftotext")
    assert soffice and pdftotext, (
        "bash .ci/setup installs libreoffice-writer-nogui and poppler-utils"
    )
    metadata = {
        "source": "hearing.mp3",
        "engine": "embedded",
        "model": "base-en",
        "audio_seconds": 3727.0,
    }
    speakers = [{"name": "Chair", "seconds": 5.7}, {"name": "Speaker 1", "seconds": 3.0}]
    document = tmp_path / "hearing.docx"
    document.write_bytes(render_docx(SEGMENTS, metadata, date="2026-12-01", speakers=speakers))
    subprocess.run(
        [
            soffice,
            "--headless",
            f"-env:UserInstallation=file://{tmp_path}/profile",
            "--convert-to",
            "pdf",
            "--outdir",
            str(tmp_path),
            str(document),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    text = subprocess.run(
        [pdftotext, str(tmp_path / "hearing.pdf"), "-"], check=True, capture_output=True, text=True
    ).stdout
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    for expected in (
        "Transcript of hearing.mp3",
        "Source: hearing.mp3",
        "Date: 2026-12-01",
        "Duration: 01:02:07",
        "Engine: embedded (base-en)",
        "Chair: 00:00:05",
        "Speaker 1: 00:00:03",
        *(paragraph_text(p) for p in turn_paragraphs(SEGMENTS)),
    ):
        assert any(expected in line for line in lines), (expected, lines)


# ---------------------------------------------------------------- the real models


@needs_models
async def test_one_reader_is_one_speaker_with_their_speech_covered(tmp_path: Path) -> None:
    """The worker, fed a real 44 s reading as it streams, finds one speaker whose turns cover
    the reading's utterances and not its silences."""
    with trio.fail_after(120):
        result = await diarize_source(TWO_CITIES, model_dir=MODELS)
    assert result.speakers == ["Speaker 1"]
    covered = sum(t.end - t.start for t in result.turns)
    assert 30.0 < covered < 44.4
    assert result.turns[0].start == pytest.approx(1.21, abs=0.3)  # first utterance's onset
    assert result.peak_rss_mib < 400


@needs_models
async def test_reference_clips_are_checked_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A good clip (in a folder given relative to the working directory) gives a voiceprint
    named by its stem; a clip under 2 s, over 30 s, or with no speech stops start-up with a
    ConfigError naming the file."""
    monkeypatch.chdir(tmp_path)
    reading = _decode(TWO_CITIES)
    good = tmp_path / "good"
    good.mkdir()
    _write_wav(good / "Clerk – Ms Okafor.wav", reading[16_000 : 16_000 * 12])
    with trio.fail_after(120):
        known = await load_known_speakers(Path("good"), model_dir=MODELS)
    assert known.names == ("Clerk – Ms Okafor",)
    assert len(known.voiceprints[0]) == 256
    assert np.linalg.norm(known.voiceprints[0]) == pytest.approx(1.0, abs=1e-3)

    noise = np.random.default_rng(0).standard_normal(16_000 * 5).astype(np.float32) * 0.01
    for name, samples, complaint in (
        ("short.wav", reading[16_000 : 16_000 * 2 + 8000], "too short"),
        (
            "long.wav",
            np.tile(reading, 1)[: 16_000 * 31]
            if len(reading) > 16_000 * 31
            else np.concatenate([reading, reading])[: 16_000 * 31],
            "too long",
        ),
        ("hum.wav", noise, "no speech"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        _write_wav(folder / name, samples)
        with trio.fail_after(120), pytest.raises(ConfigError, match=complaint) as caught:
            await load_known_speakers(folder, model_dir=MODELS)
        assert name in str(caught.value)


@needs_models
@pytest.mark.slow
async def test_two_real_voices_in_turns_get_two_labels_and_a_name(tmp_path: Path) -> None:
    """Two different real people (one of the pyannote-audio wheel's sample conversation,
    fetched pinned by bench/diarization.py, and the moonshine-voice wheel's reader) in
    alternating turns: two speakers, DER under 15 %, and a reference clip of the reader (not
    in the recording) names the reader's turns."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import diarization as bench

    material, _ = bench.voices()
    a = [u.audio for u in material["pyannote-a"]]
    b = [u.audio for u in material["dickens"]]
    gap = np.zeros(8000, np.float32)
    timeline, truth, position = [], [], 0.0
    for turn in range(6):
        voice, clips = ("a", a) if turn % 2 == 0 else ("b", b)
        start = position
        for clip in clips[:4]:
            timeline += [clip, gap]
            position += (len(clip) + len(gap)) / 16_000
        truth.append((start, position - 0.5, voice))
    recording = _write_wav(tmp_path / "turns.wav", np.concatenate(timeline))
    speakers = tmp_path / "speakers"
    speakers.mkdir()
    _write_wav(
        speakers / "Reader.wav", _decode(TWO_CITIES)[int(32.8 * 16_000) : int(41.6 * 16_000)]
    )
    with trio.fail_after(300):
        known = await load_known_speakers(speakers, model_dir=MODELS)
        result = await diarize_source(recording, model_dir=MODELS, known=known)
    score = bench.diarization_error(truth, [(t.start, t.end, t.speaker) for t in result.turns])
    assert len(result.speakers) == 2
    assert score["der"] < 0.15
    assert (
        bench.named_share(truth, [(t.start, t.end, t.speaker) for t in result.turns], "b", "Reader")
        > 0.9
    )


# ---------------------------------------------------------------- a job's outputs


@needs_models
@pytest.mark.slow
def test_transcribe_writes_speakers_into_every_output(tmp_path: Path) -> None:
    """`transcribed transcribe` on the embedded engine labels the segments in .json (with the
    speakers' list and talk time) and writes a .docx whose turns carry the speaker."""
    out = tmp_path / "out"
    source = tmp_path / "reading.wav"
    shutil.copy(TWO_CITIES, source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "transcribed",
            "transcribe",
            str(source),
            "--out",
            str(out),
            "--log-format",
            "json",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    document = json.loads((out / "reading.json").read_text())
    assert document["speakers"][0]["name"] == "Speaker 1"
    assert 25.0 < document["speakers"][0]["seconds"] < 44.4
    assert {segment.get("speaker") for segment in document["segments"]} == {"Speaker 1"}
    from docx import Document

    paragraphs = [p.text for p in Document(str(out / "reading.docx")).paragraphs]
    assert any(
        re.match(r"\[00:00:0\d\] Speaker 1: It was the best of times", p) for p in paragraphs
    )
    assert "Speakers" in paragraphs and "Transcript" in paragraphs


# ---------------------------------------------------------------- choosing the outputs


def test_outputs_chooses_which_files_are_written(tmp_path: Path) -> None:
    """`outputs` comes from a TOML list or a comma-separated environment value, refuses an
    unknown format by name, and write_outputs writes exactly the chosen files."""
    from transcribed.config import load_config
    from transcribed.outputs import write_outputs

    path = tmp_path / "transcribed.toml"
    path.write_text('outputs = ["txt", "docx"]\n')
    assert load_config(path=path, environ={}).outputs == ("txt", "docx")
    assert load_config(environ={"TRANSCRIBED_OUTPUTS": "json, srt"}).outputs == ("json", "srt")
    assert load_config(environ={}).outputs == ("txt", "srt", "vtt", "json", "docx")
    with pytest.raises(ConfigError, match="'pdf' is not one of"):
        load_config(environ={"TRANSCRIBED_OUTPUTS": "txt,pdf"})

    folder = tmp_path / "out"
    folder.mkdir()
    written = write_outputs(
        folder, "hearing", SEGMENTS, {"source": "hearing.mp3"}, formats=("txt", "docx")
    )
    assert (
        sorted(p.name for p in written)
        == sorted(p.name for p in folder.iterdir())
        == ["hearing.docx", "hearing.txt"]
    )


async def test_speakers_auto_means_the_embedded_engine_and_missing_models_stop_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto labels speakers for the embedded engine only, on for any engine, off for none;
    when they are wanted, missing or altered model files are a configuration error at start."""
    from transcribed import diarize
    from transcribed.config import load_config

    auto, on, off = (
        load_config(environ={"TRANSCRIBED_SPEAKERS": v}) for v in ("auto", "on", "off")
    )
    assert [diarize.speakers_wanted(auto, e) for e in ("embedded", "openai")] == [True, False]
    assert [diarize.speakers_wanted(on, e) for e in ("embedded", "openai")] == [True, True]
    assert [diarize.speakers_wanted(off, e) for e in ("embedded", "openai")] == [False, False]

    broken = tmp_path / "models"
    broken.mkdir()
    (broken / "segmentation.ort").write_bytes(b"not the model")
    monkeypatch.setattr(diarize, "default_model_dir", lambda: broken)
    with trio.fail_after(10):
        assert await diarize.prepare_speakers(off, "embedded") == diarize.KnownSpeakers()
        assert await diarize.prepare_speakers(auto, "openai") == diarize.KnownSpeakers()
        with pytest.raises(ConfigError, match="speaker model .*(is missing|sha256 mismatch)"):
            await diarize.prepare_speakers(auto, "embedded")
