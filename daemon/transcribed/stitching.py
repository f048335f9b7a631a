"""Several pieces in one request, and the answer split back into one result per piece.

The planner stitches the pieces on either side of a long silence into one group (planning.py,
"Stitching"): the group is sent as one upload, its pieces' samples end to end, the silence
between them left out (each side keeps half a second of it, so the seam is a pause). The
answer's times are the upload's; `split_result` gives each piece the segments that lie in its
stretch of the upload, in its own time, so the journal, a resumed job and the merge see pieces
as if each had been sent alone.

A segment that runs across a seam is split there by its words when it has them (its text
split with them, when the text has one token per word), else given whole to the piece that
holds its middle and clipped to that piece. The request's cost, and what its failed attempts
may have cost, are shared by the pieces in proportion to their length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transcribed.engines.base import PieceResult, Segment, Word


def stitched(audios: Sequence[np.ndarray]) -> np.ndarray:
    """The pieces' samples end to end: the one upload of a group."""
    return audios[0] if len(audios) == 1 else np.concatenate(audios)


def split_result(result: PieceResult, lengths: Sequence[float]) -> list[PieceResult]:
    """One result per piece of a group of pieces `lengths` seconds long, sent end to end."""
    if len(lengths) == 1:
        return [result]
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]]).tolist()
    parts: list[list[Segment]] = [[] for _ in lengths]
    for segment in result.segments:
        for index, part in _cut(segment, starts):
            start, length = starts[index], lengths[index]
            parts[index].append(_clipped(part.shifted(-start), length))
    total = sum(lengths) or 1.0
    return [
        PieceResult(
            segments=segments,
            cost=result.cost * length / total,
            possibly_billed_cost=result.possibly_billed_cost * length / total,
        )
        for segments, length in zip(parts, lengths, strict=True)
    ]


def _piece_at(moment: float, starts: Sequence[float]) -> int:
    """The index of the piece whose stretch of the upload holds `moment`."""
    return max(0, int(np.searchsorted(starts, moment, side="right")) - 1)


def _cut(segment: Segment, starts: Sequence[float]) -> list[tuple[int, Segment]]:
    """The segment, in the pieces it lies in: whole, or split at seams by its words."""
    middle = _piece_at((segment.start + segment.end) / 2, starts)
    if not segment.words:
        return [(middle, segment)]
    owners = [_piece_at((w.start + w.end) / 2, starts) for w in segment.words]
    if len(set(owners)) == 1:
        return [(owners[0], segment)]
    tokens = segment.text.split()
    by_tokens = len(tokens) == len(segment.words)
    pieces: list[tuple[int, Segment]] = []
    first = 0
    for i in range(1, len(owners) + 1):
        if i == len(owners) or owners[i] != owners[first]:
            words = segment.words[first:i]
            text = " ".join(tokens[first:i] if by_tokens else (w.text.strip() for w in words))
            pieces.append(
                (
                    owners[first],
                    Segment(
                        start=words[0].start,
                        end=words[-1].end,
                        text=(" " if segment.text.startswith(" ") else "") + text,
                        words=words,
                        speaker=segment.speaker,
                    ),
                )
            )
            first = i
    return pieces


def _clipped(segment: Segment, length: float) -> Segment:
    """The segment (in its piece's time) held within the piece."""

    def clip(t: float) -> float:
        return min(max(t, 0.0), length)

    return Segment(
        start=clip(segment.start),
        end=max(clip(segment.start), clip(segment.end)),
        text=segment.text,
        words=tuple(
            Word(
                start=clip(w.start),
                end=max(clip(w.start), clip(w.end)),
                text=w.text,
                speaker=w.speaker,
            )
            for w in segment.words
        ),
        speaker=segment.speaker,
    )
