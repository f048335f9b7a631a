"""Planning and cutting: cuts land in pauses judged against the noise floor, pieces tile the
recording exactly, and the plan does not depend on how the decoder happened to chunk its output."""

from __future__ import annotations

import numpy as np
import pytest
from transcribed.cutting import PieceCutter
from transcribed.planning import (
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    NoiseFloor,
    PieceLimits,
    PiecePlanner,
    frame_loudness,
)

LIMITS = PieceLimits(target_seconds=30, max_seconds=45, overlap_seconds=1.0)


def loudness_track(layout: list[tuple[float, float]], *, floor_db: float = -50.0, speech_db: float = -20.0) -> np.ndarray:
    """Frame loudness for alternating (speech seconds, pause seconds) pairs, with some jitter."""
    rng = np.random.default_rng(7)
    parts = []
    for speech, pause in layout:
        parts.append(speech_db + rng.normal(0, 3, round(speech * FRAMES_PER_SECOND)))
        parts.append(floor_db + rng.normal(0, 1, round(pause * FRAMES_PER_SECOND)))
    return np.concatenate(parts).astype(np.float32)


def plan(loudness: np.ndarray, limits: PieceLimits = LIMITS, block: int = 50) -> list:
    planner = PiecePlanner(limits)
    cuts = []
    for i in range(0, len(loudness), block):
        cuts += planner.feed(loudness[i : i + block])
    return cuts


def test_cuts_fall_inside_pauses_and_pieces_stay_within_limits() -> None:
    """With regular pauses every ~8 s, every cut is in a pause and every piece is 15-45 s."""
    layout = [(7.5, 0.6)] * 60
    loudness = loudness_track(layout)
    cuts = plan(loudness)
    assert cuts, "a 8-minute track must be cut"
    pause_frames = loudness < -40
    for cut in cuts:
        assert cut.in_pause
        assert pause_frames[cut.frame], f"cut at frame {cut.frame} is not in a pause"
    bounds = [0] + [c.frame for c in cuts]
    lengths = np.diff(bounds) / FRAMES_PER_SECOND
    assert lengths.min() >= LIMITS.min_seconds and lengths.max() <= LIMITS.max_seconds


def test_the_longest_pause_in_the_window_wins() -> None:
    """A 2 s pause at 25 s is chosen over short 0.4 s pauses nearer the target."""
    layout = [(12.0, 0.4), (12.6, 2.0), (3.0, 0.4), (10.0, 0.4), (30.0, 0.4)]
    loudness = loudness_track(layout)
    first = plan(loudness)[0]
    assert 25.0 <= first.frame / FRAMES_PER_SECOND <= 27.0


def test_pauses_are_judged_against_the_noise_floor_not_a_fixed_level() -> None:
    """In a humming room (floor -32 dB, speech -15 dB) pauses are still found."""
    layout = [(9.0, 0.8)] * 30
    loudness = loudness_track(layout, floor_db=-32.0, speech_db=-15.0)
    cuts = plan(loudness)
    assert cuts and all(c.in_pause for c in cuts)
    floor = NoiseFloor()
    floor.add(loudness)
    assert -34 < floor.percentile(0.05) < -30


def test_speech_without_pauses_is_cut_at_the_quietest_moment_with_overlap() -> None:
    """Ninety seconds of unbroken speech gets forced cuts, and the pieces overlap around them."""
    rng = np.random.default_rng(1)
    loudness = (-20 + rng.normal(0, 2, 90 * FRAMES_PER_SECOND)).astype(np.float32)
    quiet_at = 35 * FRAMES_PER_SECOND
    loudness[quiet_at : quiet_at + 5] = -28  # a dip, but not a pause
    cuts = plan(loudness)
    assert cuts[0].in_pause is False
    assert abs(cuts[0].frame - (quiet_at + 2)) <= 5
    # the cutter overlaps the neighbours of a forced cut on the real samples
    rng = np.random.default_rng(5)
    speech = np.clip(rng.normal(0, 3000, 90 * SAMPLE_RATE), -32768, 32767).astype(np.int16)
    pieces = cut_all(speech, [SAMPLE_RATE])
    first, second = pieces[0].span, pieces[1].span
    assert first.end - first.keep_end == SAMPLE_RATE * LIMITS.overlap_seconds
    assert second.keep_start - second.start == SAMPLE_RATE * LIMITS.overlap_seconds
    assert second.keep_start == first.keep_end


def test_frame_loudness_measures_dbfs() -> None:
    """A full-scale square wave is 0 dBFS and digital silence is the floor."""
    square = np.tile(np.array([32767, -32767] * 160, dtype=np.int16), 3)
    assert np.allclose(frame_loudness(square), 0.0, atol=0.01)
    assert frame_loudness(np.zeros(640, dtype=np.int16)).max() == -100.0


def synthetic_audio(seconds: float, seed: int = 3) -> np.ndarray:
    """Noise bursts (speech-like loudness) separated by quiet gaps over a faint noise floor."""
    rng = np.random.default_rng(seed)
    audio = rng.normal(0, 30, round(seconds * SAMPLE_RATE))
    position = 0
    while position < len(audio):
        burst = int(rng.uniform(2, 9) * SAMPLE_RATE)
        audio[position : position + burst] += rng.normal(0, 3000, len(audio[position : position + burst]))
        position += burst + int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)
    return np.clip(audio, -32768, 32767).astype(np.int16)


def cut_all(audio: np.ndarray, block_sizes: list[int]) -> list:
    cutter = PieceCutter(LIMITS)
    pieces, position, i = [], 0, 0
    while position < len(audio):
        size = block_sizes[i % len(block_sizes)]
        pieces += cutter.feed(audio[position : position + size])
        position += size
        i += 1
    return pieces + cutter.finish()


@pytest.mark.parametrize("block_sizes", [[65536], [1, 999, 32000, 7], [320 * 50]])
def test_pieces_tile_the_audio_exactly_whatever_the_decoder_block_size(block_sizes: list[int]) -> None:
    """Kept regions cover every sample once, each piece's samples are the source's, and the plan
    is the same for every way of chunking the stream (so a resumed job re-plans identically)."""
    audio = synthetic_audio(200)
    pieces = cut_all(audio, block_sizes)
    reference = cut_all(audio, [65536])
    assert [p.span for p in pieces] == [p.span for p in reference]
    assert pieces[0].span.keep_start == 0 and pieces[-1].span.keep_end == len(audio)
    for before, after in zip(pieces, pieces[1:], strict=False):
        assert before.span.keep_end == after.span.keep_start
    for piece in pieces:
        assert np.array_equal(piece.audio, audio[piece.span.start : piece.span.end])
        assert piece.span.end - piece.span.start <= (LIMITS.max_seconds + 2 * LIMITS.overlap_seconds) * SAMPLE_RATE


def test_silent_pieces_are_marked_and_speech_pieces_are_not() -> None:
    """A minute of room tone between speech is flagged silent, so no engine time is spent on it."""
    rng = np.random.default_rng(5)
    speech = synthetic_audio(40, seed=9)
    tone = rng.normal(0, 30, 100 * SAMPLE_RATE).astype(np.int16)
    pieces = cut_all(np.concatenate([speech, tone, speech]), [48000])
    silent = [p for p in pieces if p.silent]
    assert silent, "the room tone must give at least one silent piece"
    for piece in silent:
        assert piece.span.start >= 40 * SAMPLE_RATE - SAMPLE_RATE and piece.span.end <= 141 * SAMPLE_RATE
    assert not pieces[0].silent and not pieces[-1].silent
