"""Cut pieces just in time from one sequential decode, holding at most one window of audio.

The decoder's PCM blocks stream through: loudness frames feed the planner, and as soon as a
cut is decided the piece before it is handed on with its samples. Memory is bounded by the
planner's window (`max_seconds` + overlap) whatever the length of the recording, and nothing
touches the disk. Offsets are decoded sample counts, never a container's claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transcribed.planning import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Cut,
    PieceLimits,
    PiecePlanner,
    PieceSpan,
    frame_loudness,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Piece:
    """One piece of a recording: where it lies and its 16 kHz mono int16 samples."""

    span: PieceSpan
    audio: np.ndarray
    silent: bool

    @property
    def index(self) -> int:
        return self.span.index


class PieceCutter:
    """Push decoded blocks in with `feed`, get finished pieces back; `finish` flushes the last."""

    def __init__(self, limits: PieceLimits) -> None:
        self._planner = PiecePlanner(limits)
        self._overlap = round(limits.overlap_seconds * SAMPLE_RATE)
        self._buffer = np.empty(0, dtype=np.int16)
        self._buffer_start = 0  # absolute sample index of _buffer[0]
        self._analysed = 0  # absolute samples whose frames went to the planner
        self._previous = Cut(frame=0, in_pause=True)
        self._index = 0

    @property
    def pieces_planned(self) -> int:
        return self._index

    @property
    def samples_seen(self) -> int:
        return self._buffer_start + len(self._buffer)

    def feed(self, block: np.ndarray) -> list[Piece]:
        self._buffer = np.concatenate([self._buffer, block])
        whole = (self.samples_seen - self._analysed) // FRAME_SAMPLES * FRAME_SAMPLES
        if whole == 0:
            return []
        offset = self._analysed - self._buffer_start
        loudness = frame_loudness(self._buffer[offset : offset + whole])
        self._analysed += whole
        return [self._emit(cut) for cut in self._planner.feed(loudness)]

    def finish(self) -> list[Piece]:
        """The last piece, from the last cut to the end of the audio (none if that is empty)."""
        end = self.samples_seen
        start = self._previous.frame * FRAME_SAMPLES
        if end <= start:
            return []
        return [self._piece(end=end, keep_end=end)]

    def _emit(self, cut: Cut) -> Piece:
        keep_end = cut.frame * FRAME_SAMPLES
        end = keep_end if cut.in_pause else keep_end + self._overlap
        piece = self._piece(end=end, keep_end=keep_end)
        self._previous = cut
        # keep only what the next piece needs: from the cut, less the overlap if it was forced
        keep_from = keep_end if cut.in_pause else keep_end - self._overlap
        drop = max(0, keep_from - self._buffer_start)
        self._buffer = self._buffer[drop:].copy()
        self._buffer_start += drop
        return piece

    def _piece(self, *, end: int, keep_end: int) -> Piece:
        keep_start = self._previous.frame * FRAME_SAMPLES
        start = keep_start if self._previous.in_pause else max(0, keep_start - self._overlap)
        end = min(end, self.samples_seen)
        audio = self._buffer[start - self._buffer_start : end - self._buffer_start].copy()
        span = PieceSpan(
            index=self._index, start=start, end=end, keep_start=keep_start, keep_end=keep_end
        )
        self._index += 1
        loudness = frame_loudness(audio)
        smooth = (
            np.convolve(loudness, np.ones(10) / 10, mode="valid")
            if len(loudness) >= 10
            else loudness
        )
        silent = bool(len(smooth) == 0 or float(smooth.max()) < self._planner.threshold)
        return Piece(span=span, audio=audio, silent=silent)
