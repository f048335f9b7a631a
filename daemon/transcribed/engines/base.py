"""The one small interface every engine satisfies: a piece in, timed segments out, plus cost.

Planning, scheduling, merging and outputs only know this interface, never which engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from transcribed.planning import PieceLimits


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """A stretch of speech with its text; times in seconds from the start of the piece (or,
    after merging, of the recording)."""

    start: float
    end: float
    text: str
    speaker: str | None = None

    def shifted(self, offset: float) -> Segment:
        return Segment(
            start=self.start + offset, end=self.end + offset, text=self.text, speaker=self.speaker
        )

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
        }
        if self.speaker is not None:
            data["speaker"] = self.speaker
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        speaker = data.get("speaker")
        return cls(
            start=float(data["start"]),
            end=float(data["end"]),
            text=str(data["text"]),
            speaker=None if speaker is None else str(speaker),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PieceResult:
    """What an engine made of one piece."""

    segments: list[Segment] = field(default_factory=list)
    cost: float = 0.0  # in US dollars; 0 for the embedded engine


class Engine(Protocol):
    """A transcription engine shared by every job of the daemon."""

    name: str
    model: str
    limits: PieceLimits
    capacity: int  # how many pieces it can usefully work on at once

    async def transcribe(self, audio: np.ndarray) -> PieceResult:
        """Transcribe 16 kHz mono int16 samples. Raises RetryableError or PermanentError."""
        ...
