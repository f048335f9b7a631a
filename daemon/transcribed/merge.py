"""Pure merge: each piece's segments, shifted by the piece's true offset, into one transcript.

Offsets come from decoded sample counts (the piece spans), never from a container's claim. Where
two pieces overlap (a cut outside a pause), each segment is kept by the piece whose own region
holds the segment's middle, so a line heard by both is written once.
"""

from __future__ import annotations

from collections.abc import Iterable

from transcribed.engines.base import Segment
from transcribed.planning import SAMPLE_RATE, PieceSpan


def merge_pieces(pieces: Iterable[tuple[PieceSpan, list[Segment]]]) -> list[Segment]:
    merged: list[Segment] = []
    for span, segments in sorted(pieces, key=lambda item: item[0].start):
        offset = span.start / SAMPLE_RATE
        keep_start = span.keep_start / SAMPLE_RATE
        keep_end = span.keep_end / SAMPLE_RATE
        piece_end = span.end / SAMPLE_RATE
        for segment in segments:
            text = " ".join(segment.text.split())
            if not text:
                continue
            start = max(offset, segment.start + offset)
            end = min(piece_end, max(start, segment.end + offset))
            middle = (start + end) / 2
            if keep_start <= middle < keep_end:
                merged.append(Segment(start=start, end=end, text=text))
    merged.sort(key=lambda s: s.start)
    # Segments of neighbouring pieces may touch; never let one start before the last ended.
    for i in range(1, len(merged)):
        if merged[i].start < merged[i - 1].end:
            previous = merged[i - 1]
            merged[i - 1] = Segment(
                start=previous.start, end=max(previous.start, merged[i].start), text=previous.text
            )
    return merged
