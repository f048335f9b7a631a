"""The daemon times text-only answers itself, and uploads carry no encoder delay."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import trio

from transcribed.engines.openai import encode_piece, upload_format
from transcribed.timing import assign_words, speech_runs, time_text

RATE = 16_000


def bursts(layout: list[tuple[float, float]], seconds: float, seed: int = 3) -> np.ndarray:
    """Noise at about -50 dBFS with louder voice-like bursts (a 150 Hz sawtooth, rich in
    harmonics like a voice, about -20 dBFS) at the given spans."""
    rng = np.random.default_rng(seed)
    audio = rng.standard_normal(round(seconds * RATE)) * 100
    for start, end in layout:
        span = slice(round(start * RATE), round(end * RATE))
        t = np.arange(span.stop - span.start) / RATE
        voice = 2 * ((150 * t) % 1.0) - 1
        audio[span] += voice * 3000 * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
    return np.clip(audio, -32768, 32767).astype(np.int16)


def test_speech_runs_are_found_between_pauses_against_the_floor() -> None:
    """Three bursts separated by 0.6 s and 1.5 s pauses are three runs, each within 40 ms."""
    layout = [(0.5, 2.0), (2.6, 5.1), (6.6, 7.4)]
    runs = speech_runs(bursts(layout, 8.0))
    assert len(runs) == 3
    for run, (start, end) in zip(runs, layout, strict=True):
        assert abs(run.start - start) <= 0.04 and abs(run.end - end) <= 0.04


def test_text_is_split_at_the_pauses_and_boundaries_snap_to_punctuation() -> None:
    """A piece's text becomes one segment per run of speech; the words go to the run their
    share of the speech time puts them in, moved to the sentence end nearby."""
    layout = [(0.5, 2.0), (2.6, 5.1), (6.6, 7.4)]
    text = "The meeting is open. Item one is the budget for next year. Agreed."
    segments = time_text(text, bursts(layout, 8.0))
    assert [s.text for s in segments] == ["The meeting is open.", "Item one is the budget for next year.", "Agreed."]
    assert [round(s.start, 1) for s in segments] == [0.5, 2.6, 6.6]
    assert all(len(s.words) == len(s.text.split()) for s in segments)
    assert segments[1].words[0].start == pytest.approx(2.6, abs=0.04)


def test_silence_takes_no_words_and_no_speech_gives_one_segment() -> None:
    """Speech-time spreading skips a long pause; a piece with no measurable pause gets the
    text spread over the piece."""
    groups = assign_words("a b c d".split(), speech_runs(bursts([(0.0, 1.0), (9.0, 10.0)], 10.0)))
    assert groups == [["a", "b"], ["c", "d"]]
    flat = np.full(RATE * 4, 2000, dtype=np.int16)
    [segment] = time_text("all one thing", flat)
    assert segment.start == 0.0 and segment.end == pytest.approx(4.0, abs=0.03)


async def test_an_mp3_upload_decodes_without_the_encoders_delay() -> None:
    """A click at 1.000 s of a piece is at 1.000 s of the decoded mp3 upload (the LAME header
    declares the 1105 priming samples; through a pipe they stayed in, 69 ms)."""
    audio = np.zeros(RATE * 3, dtype=np.int16)
    audio[RATE : RATE + 3200] = (np.random.default_rng(1).standard_normal(3200) * 8000).astype(np.int16)
    with trio.fail_after(30):
        data = await encode_piece(audio, upload_format("mp3"))
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", "16000", "pipe:1"],
        input=data, capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    heard = np.frombuffer(decoded, dtype=np.int16).astype(float)
    template = audio[RATE - 100 : RATE + 3300].astype(float)
    lag = int(np.argmax(np.correlate(heard, template, mode="valid"))) - (RATE - 100)
    assert abs(lag) <= 16  # within 1 ms


def test_digital_silence_is_never_speech() -> None:
    """Zeros (a padded start, a filled timestamp gap) hold no run of speech, and text given
    for them falls back to spanning the piece."""
    silence = np.zeros(RATE * 30, dtype=np.int16)
    assert speech_runs(silence) == []
    [segment] = time_text("something", silence)
    assert (segment.start, segment.end) == (0.0, 30.0)
