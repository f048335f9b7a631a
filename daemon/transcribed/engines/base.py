"""The one small interface every engine satisfies: a piece in, timed segments out, plus cost.

Planning, scheduling, merging and outputs only know this interface, never which engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from transcribed.planning import PieceLimits
from transcribed.retry import RetryPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class Word:
    """One word with its own times, where the engine gives them (seconds, like Segment)."""

    start: float
    end: float
    text: str
    speaker: str | None = None

    def shifted(self, offset: float) -> Word:
        return Word(start=self.start + offset, end=self.end + offset, text=self.text)

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
    def from_dict(cls, data: dict[str, Any]) -> Word:
        return cls(start=float(data["start"]), end=float(data["end"]), text=str(data["text"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """A stretch of speech with its text; times in seconds from the start of the piece (or,
    after merging, of the recording). `words` are the engine's word times, when it gives them;
    `speaker` is a diarization label, when one ran."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    speaker: str | None = None

    def shifted(self, offset: float) -> Segment:
        return Segment(
            start=self.start + offset,
            end=self.end + offset,
            text=self.text,
            words=tuple(w.shifted(offset) for w in self.words),
            speaker=self.speaker,
        )

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
        }
        if self.speaker is not None:
            data["speaker"] = self.speaker
        if self.words:
            data["words"] = [w.as_dict() for w in self.words]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        speaker = data.get("speaker")
        return cls(
            start=float(data["start"]),
            end=float(data["end"]),
            text=str(data["text"]),
            words=tuple(Word.from_dict(w) for w in data.get("words") or ()),
            speaker=None if speaker is None else str(speaker),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PieceResult:
    """What an engine made of one piece."""

    segments: list[Segment] = field(default_factory=list)
    cost: float = 0.0  # in US dollars; 0 for the embedded engine
    # what this piece's earlier attempts may have cost with nothing to show for it (sent in
    # full, then no usable answer: a hang, a 5xx, an unusable 200): the spent cost's upper bound
    possibly_billed_cost: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineTraits:
    """What an engine is and can do, declared once: everything the pipeline, the gate and the
    progress file need to know about it, so nothing above the engine asks which engine runs."""

    name: str
    model: str
    limits: PieceLimits  # how it wants its pieces
    capacity: int  # how many pieces it can usefully work on at once
    retry: RetryPolicy  # how hard each piece is tried
    requests_per_minute: float | None = None  # a rate limit shared by every job, if any
    price_per_minute: float = 0.0  # US dollars per audio minute; 0: costs nothing
    timestamps: bool = True  # its answers carry times inside the piece

    def cost(self, seconds: float) -> float:
        """The price of `seconds` of audio: the one cost formula."""
        return self.price_per_minute * seconds / 60.0


@dataclass(slots=True, kw_only=True)
class AttemptLedger:
    """What a piece's attempts have cost so far without a usable answer, kept across its retries
    (the one mutable part of a prepared piece)."""

    possibly_billed_cost: float = 0.0  # US dollars the server may have billed for nothing
    unusable_answers: int = 0  # answers that came back (billed) but could not be used


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedPiece:
    """A piece made ready for its engine once (an upload encoded, say), outside the gate's slot,
    then sent as often as its retries need. It keeps the samples only if the engine needs them."""

    seconds: float
    audio: np.ndarray | None = None
    payload: bytes = b""
    ledger: AttemptLedger = field(default_factory=AttemptLedger, compare=False)


class Engine(Protocol):
    """A transcription engine shared by every job of the daemon.

    `prepare` runs once per piece before it queues for the gate (so a retry never encodes again
    and a request slot is never spent encoding); `transcribe` is one attempt, inside the slot."""

    @property
    def traits(self) -> EngineTraits: ...

    async def prepare(self, audio: np.ndarray) -> PreparedPiece:
        """Ready 16 kHz mono int16 samples for sending."""
        ...

    async def transcribe(self, piece: PreparedPiece) -> PieceResult:
        """One attempt at a prepared piece. Raises RetryableError, PermanentError or a
        ServiceSuspended."""
        ...


async def transcribe_audio(engine: Engine, audio: np.ndarray) -> PieceResult:
    """Prepare and transcribe samples in one go (benchmarks; the pipeline keeps them apart)."""
    return await engine.transcribe(await engine.prepare(audio))
