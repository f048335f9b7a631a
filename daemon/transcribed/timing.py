"""Pure timing of text-only answers: a piece's text spread over the speech inside the piece.

gpt-transcribe (and the gpt-4o models) answer a piece with its text and no times. The daemon
heard the piece itself, so it times the text: the piece's 20 ms loudness frames, judged
against the piece's own noise floor (planning.NoiseFloor, as the planner does), give the runs
of speech between pauses. The words are laid along the speech only (silence takes no words), in
proportion to their length; a boundary between two runs then moves to the nearest sentence or
clause end within a few words, since people pause where punctuation is. Each run with words
becomes a segment, with a time for every word, so cues follow the speech, not the piece.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from transcribed.engines.base import Segment, Word
from transcribed.planning import FRAMES_PER_SECOND, SAMPLE_RATE, NoiseFloor, frame_loudness

# gaps shorter than this are inside a phrase (stops, breaths between words), not pauses
MIN_PAUSE_SECONDS = 0.25
# a loud run shorter than this alone is a click or a cough, not speech
MIN_SPEECH_SECONDS = 0.1
# a run boundary may move this many words to reach punctuation
SNAP_WORDS = 3
_SENTENCE_END = (".", "?", "!", "…", '."', '?"', '!"')
_CLAUSE_END = (",", ";", ":")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechRun:
    """Speech between two pauses, in seconds from the start of the piece."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def speech_runs(audio: np.ndarray, *, threshold: float | None = None) -> list[SpeechRun]:
    """Runs of speech in 16 kHz int16 samples, split at pauses of ≥ MIN_PAUSE_SECONDS.
    `threshold` (dBFS) is the recording's pause threshold when known; else the piece's own."""
    loudness = frame_loudness(audio)
    if len(loudness) == 0:
        return []
    if threshold is None:
        floor = NoiseFloor()
        floor.add(loudness)
        threshold = floor.pause_threshold()
    voiced = loudness >= threshold
    min_pause = round(MIN_PAUSE_SECONDS * FRAMES_PER_SECOND)
    min_speech = round(MIN_SPEECH_SECONDS * FRAMES_PER_SECOND)
    runs: list[list[int]] = []
    for start, end in _true_runs(voiced):
        if runs and start - runs[-1][1] < min_pause:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    return [
        SpeechRun(start=start / FRAMES_PER_SECOND, end=end / FRAMES_PER_SECOND)
        for start, end in runs
        if end - start >= min_speech
    ]


def _true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def time_text(text: str, audio: np.ndarray, *, threshold: float | None = None) -> list[Segment]:
    """The piece's text as segments timed at the speech runs of its audio (see the module)."""
    tokens = text.split()
    seconds = len(audio) / SAMPLE_RATE
    if not tokens:
        return []
    runs = speech_runs(audio, threshold=threshold)
    if not runs:
        runs = [SpeechRun(start=0.0, end=seconds)]
    groups = assign_words(tokens, runs)
    segments = []
    for run, words in zip(runs, groups, strict=True):
        if words:
            timed = _spread(words, run.start, run.end)
            segments.append(
                Segment(start=run.start, end=run.end, text=" ".join(words), words=tuple(timed))
            )
    return segments


def assign_words(tokens: Sequence[str], runs: Sequence[SpeechRun]) -> list[list[str]]:
    """The words of each run: laid along the speech time by length, each word going to the run
    that holds its middle, then boundaries snapped to punctuation nearby."""
    weights = [len(t) + 1 for t in tokens]
    total_weight = sum(weights)
    total_speech = sum(run.seconds for run in runs)
    # cumulative speech time at each run's end
    ends: list[float] = []
    at = 0.0
    for run in runs:
        at += run.seconds
        ends.append(at)
    owner: list[int] = []
    at = 0.0
    for weight in weights:
        middle = (at + weight / 2) / total_weight * total_speech
        owner.append(min(bisect.bisect_right(ends, middle), len(runs) - 1))
        at += weight
    # boundaries: index of the first word of each run after the first
    boundaries = [bisect.bisect_left(owner, r) for r in range(1, len(runs))]
    snapped: list[int] = []
    for boundary in boundaries:
        low = snapped[-1] if snapped else 0
        snapped.append(max(low, _snap(tokens, boundary, low)))
    cuts = [0, *snapped, len(tokens)]
    return [list(tokens[cuts[i] : cuts[i + 1]]) for i in range(len(runs))]


def _snap(tokens: Sequence[str], boundary: int, low: int) -> int:
    """The nearest word boundary at a sentence end (else a clause end) within SNAP_WORDS."""
    for ends in (_SENTENCE_END, _CLAUSE_END):
        best: int | None = None
        for candidate in range(
            max(low, boundary - SNAP_WORDS), min(len(tokens), boundary + SNAP_WORDS) + 1
        ):
            if 0 < candidate and tokens[candidate - 1].endswith(ends):
                if best is None or abs(candidate - boundary) < abs(best - boundary):
                    best = candidate
        if best is not None:
            return best
    return boundary


def _spread(tokens: Sequence[str], start: float, end: float) -> list[Word]:
    weights = [len(t) + 1 for t in tokens]
    total = sum(weights)
    words = []
    at = start
    for token, weight in zip(tokens, weights, strict=True):
        length = (end - start) * weight / total
        words.append(Word(start=at, end=at + length, text=token))
        at += length
    return words
