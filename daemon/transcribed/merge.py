"""Pure merge: each piece's segments, shifted by the piece's true offset, into one transcript.

Offsets come from decoded sample counts (the piece spans), never from a container's claim. Where
two pieces overlap (a cut outside a pause), each segment is kept by the piece whose own region
holds the segment's middle, so a line heard by both is written once.

Text is tidied where pieces and engine lines meet: doubled punctuation (`Differs,, from`) is
collapsed, space before punctuation removed, and a line that continues an unfinished sentence
does not open with a capital the transcript elsewhere writes in lower case (`most, And` →
`most, and`); names keep theirs, because they are never written in lower case.
"""

from __future__ import annotations

import re
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
                merged.append(
                    Segment(
                        start=start,
                        end=end,
                        text=text,
                        words=tuple(w.shifted(offset) for w in segment.words if w.text.strip()),
                        speaker=segment.speaker,
                    )
                )
    merged.sort(key=lambda s: s.start)
    # Segments of neighbouring pieces may touch; never let one start before the last ended.
    for i in range(1, len(merged)):
        if merged[i].start < merged[i - 1].end:
            previous = merged[i - 1]
            merged[i - 1] = Segment(
                start=previous.start,
                end=max(previous.start, merged[i].start),
                text=previous.text,
                words=previous.words,
                speaker=previous.speaker,
            )
    return tidy_text(merged)


_DOUBLED = re.compile(r"([,;:!?])(?:\s*\1)+")
_TWO_DOTS = re.compile(r"(?<!\.)\.\.(?!\.)")
_SPACE_BEFORE = re.compile(r"\s+([,;:!?](?:\s|$)|\.(?:\s|$))")
_SENTENCE_END = (".", "?", "!", "…", '"', "'", ")")
_NEVER_LOWERED = frozenset({"I", "I'm", "I've", "I'll", "I'd", "OK"})


def tidy_punctuation(text: str) -> str:
    """`Differs,, from most ,` → `Differs, from most,`; an ellipsis stays."""
    text = _DOUBLED.sub(r"\1", text)
    text = _TWO_DOTS.sub(".", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    return " ".join(text.split())


def tidy_text(segments: list[Segment]) -> list[Segment]:
    """Punctuation tidied in every segment; continuation capitals lowered (see the docstring)."""
    lower_words = {
        word.rstrip(",.;:?!") for s in segments for word in s.text.split() if word[:1].islower()
    }
    tidied: list[Segment] = []
    for segment in segments:
        text = tidy_punctuation(segment.text)
        if tidied and text and not tidied[-1].text.endswith(_SENTENCE_END):
            first, _, rest = text.partition(" ")
            lowered = first[:1].lower() + first[1:]
            if (
                first not in _NEVER_LOWERED
                and first[:1].isupper()
                and first[1:] == first[1:].lower()
                and lowered.rstrip(",.;:?!") in lower_words
            ):
                text = f"{lowered} {rest}".rstrip()
        if text:
            tidied.append(
                Segment(
                    start=segment.start,
                    end=segment.end,
                    text=text,
                    words=segment.words,
                    speaker=segment.speaker,
                )
            )
    return tidied
