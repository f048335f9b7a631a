"""Pure: speaker turns onto transcript segments, and each speaker's talk time.

The transcript's segments come from the engine (Moonshine's lines, or the API's segments) and
carry no word times, so a segment takes the speaker who talks most during it (the largest
overlap with their turns); a segment that no turn touches takes the nearest turn's speaker
within NEAREST_SECONDS, else none.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transcribed.engines.base import Segment

NEAREST_SECONDS = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerTurn:
    """A stretch of one speaker's speech; seconds from the start of the recording."""

    start: float
    end: float
    speaker: str


def assign_speakers(segments: Sequence[Segment], turns: Sequence[SpeakerTurn]) -> list[Segment]:
    """Each segment with the speaker it overlaps most (turns sorted by start, not overlapping)."""
    ordered = sorted(turns, key=lambda turn: turn.start)
    starts = [turn.start for turn in ordered]
    out = []
    for segment in segments:
        overlap: dict[str, float] = {}
        first = max(0, bisect.bisect_right(starts, segment.start) - 1)
        for turn in ordered[first:]:
            if turn.start >= segment.end:
                break
            shared = min(turn.end, segment.end) - max(turn.start, segment.start)
            if shared > 0:
                overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
        speaker = (
            max(overlap, key=lambda name: overlap[name]) if overlap else _nearest(ordered, segment)
        )
        out.append(dataclasses.replace(segment, speaker=speaker))
    return out


def _nearest(turns: Sequence[SpeakerTurn], segment: Segment) -> str | None:
    best: tuple[float, str] | None = None
    for turn in turns:
        gap = max(turn.start - segment.end, segment.start - turn.end, 0.0)
        if gap <= NEAREST_SECONDS and (best is None or gap < best[0]):
            best = (gap, turn.speaker)
    return best[1] if best else None


def talk_times(turns: Sequence[SpeakerTurn], speakers: Sequence[str]) -> list[dict[str, Any]]:
    """[{"name": speaker, "seconds": total talk time}], in the order of `speakers`."""
    total = dict.fromkeys(speakers, 0.0)
    for turn in turns:
        total[turn.speaker] = total.get(turn.speaker, 0.0) + (turn.end - turn.start)
    return [{"name": name, "seconds": round(seconds, 2)} for name, seconds in total.items()]
