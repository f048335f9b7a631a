"""Several pieces in one request, and the answer split back into one result per piece.

The planner stitches the pieces on either side of a long silence into one group (planning.py,
"Stitching"): the group is sent as one upload, its pieces' samples end to end, the silence
between them left out (each side keeps half a second of it, so the seam is a pause). The
answer's times are the upload's; `split_result` gives each piece the segments that lie in its
stretch of the upload, in its own time, so the journal, a resumed job and the merge see pieces
as if each had been sent alone.

A segment that runs across a seam is split there. With word times, each piece gets the words
whose middle it holds, and the segment's text is cut where the first of those words stands in
it, so punctuation, words the answer left out of its word list and text written without spaces
stay as they were. Without word times, each piece gets the part of the segment's time it holds
and the share of its text in proportion (cut between words where the text has spaces): a line
that ran across the silence starts where its speech starts, on either side. The request's cost,
and what its failed attempts may have cost, are shared by the pieces in proportion to their
length.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
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
    """The segment, in the pieces it lies in: whole, or split at the seams it crosses."""
    whole = [(_piece_at((segment.start + segment.end) / 2, starts), segment)]
    if segment.words:
        owners = [_piece_at((w.start + w.end) / 2, starts) for w in segment.words]
        runs = [i for i in range(len(owners)) if i == 0 or owners[i] != owners[i - 1]]
        if len(runs) == 1:
            return [(owners[0], segment)]
        cuts = _cuts_at_words(segment.text, segment.words, runs[1:])
        if cuts is None:
            cuts = _cuts_in_proportion(segment.text, [i / len(owners) for i in runs[1:]])
        ends = [*runs[1:], len(owners)]
        parts = []
        for first, end, text in zip(runs, ends, _slices(segment.text, cuts), strict=True):
            words = segment.words[first:end]
            if not text.strip():  # a proportional cut found no text for these words
                text = " ".join(w.text.strip() for w in words)
            parts.append(
                (
                    owners[first],
                    _part(segment, words[0].start, words[-1].end, text, words),
                )
            )
        return parts
    overlaps = []
    for index, start in enumerate(starts):
        until = starts[index + 1] if index + 1 < len(starts) else math.inf
        low, high = max(segment.start, start), min(segment.end, until)
        if high > low:
            overlaps.append((index, low, high))
    if len(overlaps) < 2:
        return whole
    duration = sum(high - low for _, low, high in overlaps)
    shares = np.cumsum([high - low for _, low, high in overlaps[:-1]]) / duration
    cuts = _cuts_in_proportion(segment.text, shares.tolist())
    parts = [
        (index, _part(segment, low, high, text))
        for (index, low, high), text in zip(overlaps, _slices(segment.text, cuts), strict=True)
        if text.strip()
    ]
    return parts or whole


def _part(
    segment: Segment, start: float, end: float, text: str, words: tuple[Word, ...] = ()
) -> Segment:
    """Part of a split segment: its own stretch and text, the segment's leading space kept."""
    lead = " " if segment.text.startswith(" ") else ""
    return Segment(
        start=start, end=end, text=lead + text.strip(), words=words, speaker=segment.speaker
    )


def _slices(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _cuts_at_words(text: str, words: Sequence[Word], firsts: Sequence[int]) -> list[int] | None:
    """Where in `text` each of the words numbered `firsts` begins, found in order (a whole word
    where the text has word boundaries, else the letters anywhere after the last one); None
    when the words cannot all be found."""
    folded = text.lower()
    if len(folded) != len(text):  # a letter whose lower case is longer: no places to map back
        return None
    cursor, places = 0, []
    for word in words:
        key = _key(word.text)
        if not key:
            places.append(cursor)
            continue
        found = re.compile(rf"(?<!\w){re.escape(key)}(?!\w)").search(folded, cursor)
        at = found.start() if found else folded.find(key, cursor)
        if at < 0:
            return None
        places.append(at)
        cursor = at + len(key)
    cuts = [places[i] for i in firsts]
    return cuts if all(a < b for a, b in itertools.pairwise([0, *cuts])) else None


def _cuts_in_proportion(text: str, shares: Sequence[float]) -> list[int]:
    """Cuts at these fractions of `text`, moved to the nearest space where it has spaces."""
    lead = len(text) - len(text.lstrip())
    spaces = [i for i, c in enumerate(text) if c.isspace() and i > lead]
    cuts: list[int] = []
    for share in shares:
        at = round(share * len(text))
        if spaces:
            at = min(spaces, key=lambda i: abs(i - at))
        cuts.append(max(at, cuts[-1] if cuts else 0))
    return cuts


def _key(text: str) -> str:
    """A word as it is looked for in its segment's text: in lower case (which keeps the text's
    length, so a place found is a place in the text), without punctuation or symbols at its
    ends."""
    folded = text.strip().lower()
    start, end = 0, len(folded)
    while start < end and unicodedata.category(folded[start])[0] in "PS":
        start += 1
    while end > start and unicodedata.category(folded[end - 1])[0] in "PS":
        end -= 1
    return folded[start:end]


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
