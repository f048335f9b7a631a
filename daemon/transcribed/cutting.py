"""Cut pieces just in time from one sequential decode, holding at most one window of audio.

The decoder's PCM blocks stream through: loudness frames (plain and pre-emphasised) feed the
planner, and as soon as a cut is decided the piece before it is handed on with its samples and
whether the planner found it silent (a silent piece is never sent). Memory is bounded by the
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
from transcribed.timing import pre_emphasis


@dataclass(frozen=True, slots=True, kw_only=True)
class Piece:
    """One piece of a recording: where it lies and its 16 kHz mono int16 samples."""

    span: PieceSpan
    audio: np.ndarray
    silent: bool
    joins: bool = False  # sent in one request with the pieces before it (planning: stitching)

    @property
    def index(self) -> int:
        return self.span.index


class PieceCutter:
    """Push decoded blocks in with `feed`, get finished pieces back; `finish` flushes the last."""

    def __init__(self, limits: PieceLimits) -> None:
        self._planner = PiecePlanner(limits)
        self._overlap = round(limits.overlap_seconds * SAMPLE_RATE)
        # the samples since the last cut (less the overlap), in a store that grows by half when
        # full: appending a block copies only the block (concatenating the whole window each
        # time cost ~0.4 s before the first 3-minute piece could be sent)
        self._store = np.empty(SAMPLE_RATE * 60, dtype=np.int16)
        self._length = 0
        self._buffer_start = 0  # absolute sample index of _buffer[0]
        self._analysed = 0  # absolute samples whose frames went to the planner
        self._before_analysed = np.zeros(1, dtype=np.int16)  # the sample before those
        self._previous = Cut(frame=0, in_pause=True)
        self._index = 0

    @property
    def pieces_planned(self) -> int:
        return self._index

    @property
    def samples_seen(self) -> int:
        return self._buffer_start + self._length

    @property
    def _buffer(self) -> np.ndarray:
        return self._store[: self._length]

    def _append(self, block: np.ndarray) -> None:
        needed = self._length + len(block)
        if needed > len(self._store):
            grown = np.empty(max(needed, len(self._store) * 3 // 2), dtype=np.int16)
            grown[: self._length] = self._store[: self._length]
            self._store = grown
        self._store[self._length : needed] = block
        self._length = needed

    def _drop(self, count: int) -> None:
        """Forget the first `count` samples held (they belong to pieces already handed on)."""
        if count <= 0:
            return
        rest = self._length - count
        self._store[:rest] = self._store[count : self._length]  # (numpy handles the overlap)
        self._length = rest
        self._buffer_start += count

    def feed(self, block: np.ndarray) -> list[Piece]:
        self._append(block)
        whole = (self.samples_seen - self._analysed) // FRAME_SAMPLES * FRAME_SAMPLES
        if whole == 0:
            return []
        offset = self._analysed - self._buffer_start
        samples = self._buffer[offset : offset + whole]
        # pre-emphasis over the stream, each sample after its true predecessor
        emphasised = pre_emphasis(np.concatenate([self._before_analysed, samples]))[1:]
        self._before_analysed = samples[-1:]
        self._analysed += whole
        cuts = self._planner.feed(frame_loudness(samples), frame_loudness(emphasised))
        return [self._emit(cut) for cut in cuts]

    def finish(self) -> list[Piece]:
        """The last piece, from the last cut to the end of the audio (none if that is empty)."""
        end = self.samples_seen
        start = self._previous.frame * FRAME_SAMPLES
        if end <= start:
            return []
        silent = self._planner.finish()
        return [self._piece(end=end, keep_end=end, silent=silent, joins=self._planner.final_joins)]

    def _emit(self, cut: Cut) -> Piece:
        keep_end = cut.frame * FRAME_SAMPLES
        end = keep_end if cut.in_pause else keep_end + self._overlap
        piece = self._piece(end=end, keep_end=keep_end, silent=cut.silent, joins=cut.joins)
        self._previous = cut
        # keep only what the next piece needs: from the cut, less the overlap if it was forced
        keep_from = keep_end if cut.in_pause else keep_end - self._overlap
        self._drop(keep_from - self._buffer_start)
        return piece

    def _piece(self, *, end: int, keep_end: int, silent: bool, joins: bool = False) -> Piece:
        keep_start = self._previous.frame * FRAME_SAMPLES
        start = keep_start if self._previous.in_pause else max(0, keep_start - self._overlap)
        end = min(end, self.samples_seen)
        audio = self._buffer[start - self._buffer_start : end - self._buffer_start].copy()
        span = PieceSpan(
            index=self._index, start=start, end=end, keep_start=keep_start, keep_end=keep_end
        )
        self._index += 1
        return Piece(span=span, audio=audio, silent=silent, joins=joins)
