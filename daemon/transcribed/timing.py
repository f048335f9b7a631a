"""Pure timing of text-only answers: a piece's text spread over the speech inside the piece.

gpt-transcribe (and the gpt-4o models) answer a piece with its text and no times. The daemon
heard the piece itself, so it times the text: the piece's 20 ms loudness frames (after
pre-emphasis, which lifts consonants over a room's rumble), judged against the piece's own
noise floor (planning.NoiseFloor, as the planner does), give the runs of speech between pauses. The words are laid along the speech only (silence takes no words), in
proportion to their length: the words are divided over the runs so that each run's words would
take about as long as the run lasts, preferring divisions at sentence and clause ends (people
pause where punctuation is), by dynamic programming. Each run with words
becomes a segment, with a time for every word, so cues follow the speech, not the piece.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from transcribed.engines.base import Segment, Word
from transcribed.planning import FRAMES_PER_SECOND, SAMPLE_RATE, NoiseFloor, frame_loudness

# gaps shorter than this are inside a phrase (stops, breaths between words), not pauses
MIN_PAUSE_SECONDS = 0.25
# a gap shorter than this between two runs, where the words go on mid-phrase, is not a pause
JOIN_GAP_SECONDS = 0.6
# a loud run shorter than this alone is a click or a cough, not speech
MIN_SPEECH_SECONDS = 0.1
# frames at or under this are digital silence (a padded start, a filled gap), never speech
DIGITAL_SILENCE_DB = -90.0
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
    `threshold` (dBFS, of the pre-emphasised signal) overrides the piece's own."""
    loudness = frame_loudness(pre_emphasis(audio))
    if len(loudness) == 0:
        return []
    if threshold is None:
        threshold = silence_threshold(loudness)
    voiced = (loudness >= threshold) & (loudness > DIGITAL_SILENCE_DB)
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


def pre_emphasis(audio: np.ndarray) -> np.ndarray:
    """y[n] = x[n] - 0.97 x[n-1], the usual speech front end: it lifts the consonants and
    damps hum and the low rumble of a room, so quiet consonants stand above the floor."""
    samples = audio.astype(np.float32)
    emphasised = np.empty_like(samples)
    emphasised[:1] = samples[:1]
    emphasised[1:] = samples[1:] - 0.97 * samples[:-1]
    return np.clip(emphasised, -32768, 32767).astype(np.int16)


def silence_threshold(loudness: np.ndarray) -> float:
    """Frames quieter than this are silence. Lower than the planner's pause threshold: inside
    a piece the aim is where words are, and quiet consonants (the s and f of "asked for") lie
    between the floor and the planner's margin; a silence is within a few dB of the floor."""
    floor = NoiseFloor()
    floor.add(loudness)
    low, high = floor.percentile(0.05), floor.percentile(0.90)
    # the planner's threshold sits below the floor when the piece has no dynamic range at all
    return max(min(low + max(4.0, 0.2 * (high - low)), floor.pause_threshold()), low + 3.0)


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
    # runs that hold words, joined where a short gap falls mid-phrase: that was a quiet
    # consonant or a breath, not a pause, and the words around it are one segment
    joined: list[tuple[list[SpeechRun], list[str]]] = []
    for run, words in zip(runs, groups, strict=True):
        if not words:
            continue
        if (
            joined
            and _end_penalty(joined[-1][1][-1]) >= _end_penalty("x")
            and run.start - joined[-1][0][-1].end < JOIN_GAP_SECONDS
        ):
            joined[-1][0].append(run)
            joined[-1][1].extend(words)
        else:
            joined.append(([run], list(words)))
    return [
        Segment(
            start=parts[0].start,
            end=parts[-1].end,
            text=" ".join(words),
            words=tuple(_spread_over(words, parts)),
        )
        for parts, words in joined
    ]


def assign_words(tokens: Sequence[str], runs: Sequence[SpeechRun]) -> list[list[str]]:
    """The words of each run: the division of the words over the runs whose spoken lengths fit
    the runs best (by dynamic programming), where a run ends at a sentence end rather than a
    clause end, and at a clause end rather than mid-phrase."""
    n, m = len(tokens), len(runs)
    weights = [len(t) + 1 for t in tokens]
    prefix = [0]
    for weight in weights:
        prefix.append(prefix[-1] + weight)
    rate = sum(run.seconds for run in runs) / prefix[-1]  # seconds of speech per character
    ends = [_end_penalty(t) for t in tokens]
    # a boundary mid-phrase before a short gap costs little: time_text joins the two runs
    joins = [
        1.0 if j + 1 >= m or runs[j + 1].start - runs[j].end >= JOIN_GAP_SECONDS else 0.2
        for j in range(m)
    ]
    impossible = math.inf
    # best[j][i]: the cost of giving tokens[:i] to runs[:j]
    best = [[impossible] * (n + 1) for _ in range(m + 1)]
    back = [[0] * (n + 1) for _ in range(m + 1)]
    best[0][0] = 0.0
    for j in range(1, m + 1):
        run = runs[j - 1]
        last = j == m
        for i in range(n + 1):
            if last and i != n:
                continue
            # the words run j may hold: its expected span is at most ~3x its length
            for k in range(i, -1, -1):
                previous = best[j - 1][k]
                if previous == impossible:
                    continue
                cost = previous + _fit(run.seconds, rate * (prefix[i] - prefix[k]))
                if i < n and i > k:
                    cost += ends[i - 1] * joins[j - 1]
                if cost < best[j][i]:
                    best[j][i], back[j][i] = cost, k
                if rate * (prefix[i] - prefix[k]) > 3 * run.seconds + 2.0:
                    break
    groups: list[list[str]] = []
    i = n
    for j in range(m, 0, -1):
        k = back[j][i]
        groups.append(list(tokens[k:i]))
        i = k
    return groups[::-1]


def _fit(actual: float, expected: float) -> float:
    """How badly `expected` seconds of words fit a run of `actual` seconds (0: exactly)."""
    if expected == 0:
        return 2.0 + actual  # a run with no words: a cough, a door (possible, not likely)
    return 4.0 * math.log((actual + 0.3) / (expected + 0.3)) ** 2


def _end_penalty(token: str) -> float:
    if token.endswith(_SENTENCE_END):
        return 0.0
    if token.endswith(_CLAUSE_END):
        return 0.5
    return 3.0


def _spread_over(tokens: Sequence[str], runs: Sequence[SpeechRun]) -> list[Word]:
    """Words laid over the speech of one or more runs by length, skipping the gaps between."""
    total = sum(run.seconds for run in runs)
    weights = [len(t) + 1 for t in tokens]
    scale = total / sum(weights)
    words: list[Word] = []
    at = 0.0  # speech time laid so far

    def clock(speech_time: float) -> float:
        for run in runs:
            if speech_time <= run.seconds + 1e-9:
                return run.start + speech_time
            speech_time -= run.seconds
        return runs[-1].end

    for token, weight in zip(tokens, weights, strict=True):
        length = weight * scale
        start = clock(at + 1e-6) if at > 0 else runs[0].start
        words.append(Word(start=start, end=max(start, clock(at + length)), text=token))
        at += length
    return words


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
