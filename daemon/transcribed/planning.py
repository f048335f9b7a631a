"""Pure piece planning: loudness frames in, cut points out, decided as the audio streams by.

A recording is cut into pieces of about `target_seconds`, never longer than `max_seconds`.
Cuts go in pauses, and a pause is judged against the recording's own noise floor (a hearing
room hums; a fixed dB threshold would find no pause there, or pauses everywhere). The floor is
a low percentile of every frame heard so far, kept in a fixed-size histogram, so planning is
one streaming pass in constant memory and gives the same plan every time it is run on the same
audio (a resumed job re-plans to exactly the pieces it journaled).

Where speech runs on for a whole window without a pause, the cut goes at the quietest moment
and the two neighbours overlap by `overlap_seconds`; the merge keeps each line once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms
FRAMES_PER_SECOND = SAMPLE_RATE // FRAME_SAMPLES
_FLOOR_DB = -100.0
_HIST_BINS = 200  # 0.5 dB bins from -100 dB to 0 dB


@dataclass(frozen=True, slots=True, kw_only=True)
class PieceLimits:
    """How an engine wants its pieces: all in seconds."""

    target_seconds: float
    max_seconds: float
    overlap_seconds: float = 1.0
    min_pause_seconds: float = 0.3

    @property
    def min_seconds(self) -> float:
        return self.target_seconds / 2

    def as_dict(self) -> dict[str, float]:
        return {
            "target_seconds": self.target_seconds,
            "max_seconds": self.max_seconds,
            "overlap_seconds": self.overlap_seconds,
            "min_pause_seconds": self.min_pause_seconds,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Cut:
    """A decided cut, in frames from the start of the recording."""

    frame: int
    in_pause: bool


def frame_loudness(samples: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each whole 20 ms frame of int16 samples (a partial tail is ignored)."""
    whole = len(samples) - len(samples) % FRAME_SAMPLES
    if whole == 0:
        return np.empty(0, dtype=np.float32)
    frames = samples[:whole].astype(np.float32).reshape(-1, FRAME_SAMPLES) / 32768.0
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    loudness: np.ndarray = np.maximum(20.0 * np.log10(np.maximum(rms, 1e-10)), _FLOOR_DB)
    return loudness.astype(np.float32)


class NoiseFloor:
    """Running percentiles of frame loudness, in constant memory."""

    def __init__(self) -> None:
        self._counts = np.zeros(_HIST_BINS, dtype=np.int64)

    def add(self, loudness: np.ndarray) -> None:
        bins = ((loudness - _FLOOR_DB) * (_HIST_BINS / -_FLOOR_DB)).astype(np.int64)
        self._counts += np.bincount(np.clip(bins, 0, _HIST_BINS - 1), minlength=_HIST_BINS)

    def percentile(self, fraction: float) -> float:
        total = int(self._counts.sum())
        if total == 0:
            return _FLOOR_DB
        index = int(np.searchsorted(np.cumsum(self._counts), fraction * total))
        return _FLOOR_DB + (index + 0.5) * (-_FLOOR_DB / _HIST_BINS)

    def pause_threshold(self) -> float:
        """Frames quieter than this are pause: a margin above the floor that grows with the
        recording's dynamic range (speech level minus floor), never less than 6 dB, and always
        at least 10 dB below the speech level (in unbroken speech the low percentile is speech
        too, and its dips are not pauses)."""
        floor = self.percentile(0.05)
        speech = self.percentile(0.90)
        return min(floor + max(6.0, 0.35 * (speech - floor)), speech - 10.0)


class PiecePlanner:
    """Feed loudness frames in order; get cuts back as soon as each one can be decided.

    A cut is decided once a whole `max_seconds` window after the previous cut has been heard,
    so the caller needs to hold at most `max_seconds + overlap_seconds` of audio.
    """

    def __init__(self, limits: PieceLimits) -> None:
        self.limits = limits
        self._floor = NoiseFloor()
        self._pending = np.empty(0, dtype=np.float32)  # frames since the last cut
        self._pending_start = 0  # absolute frame index of _pending[0]
        self._min = max(1, round(limits.min_seconds * FRAMES_PER_SECOND))
        self._target = round(limits.target_seconds * FRAMES_PER_SECOND)
        self._max = round(limits.max_seconds * FRAMES_PER_SECOND)
        self._overlap = round(limits.overlap_seconds * FRAMES_PER_SECOND)
        self._min_pause = max(1, round(limits.min_pause_seconds * FRAMES_PER_SECOND))

    @property
    def threshold(self) -> float:
        return self._floor.pause_threshold()

    def feed(self, loudness: np.ndarray) -> list[Cut]:
        self._floor.add(loudness)
        self._pending = np.concatenate([self._pending, loudness])
        cuts: list[Cut] = []
        while len(self._pending) >= self._max:
            cut = self._decide(self._pending[: self._max])
            cuts.append(Cut(frame=self._pending_start + cut.frame, in_pause=cut.in_pause))
            self._pending = self._pending[cut.frame :]
            self._pending_start += cut.frame
        return cuts

    def _decide(self, window: np.ndarray) -> Cut:
        threshold = self._floor.pause_threshold()
        quiet = window < threshold
        best: tuple[float, int] | None = None
        for start, end in _runs(quiet):
            length = end - start
            center = (start + end) // 2
            if length < self._min_pause or not self._min <= center < self._max:
                continue
            # longest pause wins; among similar ones, the one nearest the target
            score = length * (1.0 - 0.5 * abs(center - self._target) / self._max)
            if best is None or score > best[0]:
                best = (score, center)
        if best is not None:
            return Cut(frame=best[1], in_pause=True)
        # No pause: cut at the quietest 200 ms between the target and the end of the window,
        # leaving room for the overlap with the next piece.
        low = min(self._target, self._max - self._overlap - 1)
        high = max(low + 1, self._max - self._overlap)
        smooth = np.convolve(window, np.ones(10) / 10, mode="same")
        return Cut(frame=low + int(np.argmin(smooth[low:high])), in_pause=False)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a boolean array."""
    if len(mask) == 0:
        return []
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class PieceSpan:
    """Where a piece lies, in samples: what is sent [start, end) and what is kept [keep_start,
    keep_end). They differ only around a cut that fell outside a pause (overlap)."""

    index: int
    start: int
    end: int
    keep_start: int
    keep_end: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE
