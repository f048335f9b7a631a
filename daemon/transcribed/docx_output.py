"""The .docx transcript a clerk can file: a title block, the speakers with their talk time, and
one paragraph per speaker turn, each opening with its time and the speaker's name.

A turn is a run of consecutive segments with the same speaker (or each segment alone when no
speaker is known), so the paragraphs read like the .txt's. python-docx builds the document in
memory; the caller writes the bytes atomically.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transcribed.engines.base import Segment


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnParagraph:
    start: float
    speaker: str | None
    text: str


def clock(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def turn_paragraphs(segments: Sequence[Segment]) -> list[TurnParagraph]:
    """Consecutive segments of one speaker become one paragraph; without speakers, one
    paragraph a segment."""
    paragraphs: list[TurnParagraph] = []
    for segment in segments:
        text = segment.text.strip()
        if not text:
            continue
        last = paragraphs[-1] if paragraphs else None
        if last is not None and segment.speaker is not None and last.speaker == segment.speaker:
            paragraphs[-1] = TurnParagraph(
                start=last.start, speaker=last.speaker, text=f"{last.text} {text}"
            )
        else:
            paragraphs.append(
                TurnParagraph(start=segment.start, speaker=segment.speaker, text=text)
            )
    return paragraphs


def paragraph_text(paragraph: TurnParagraph) -> str:
    """`[hh:mm:ss] Name: text` (or `[hh:mm:ss] text` without a speaker)."""
    who = f" {paragraph.speaker}:" if paragraph.speaker else ""
    return f"[{clock(paragraph.start)}]{who} {paragraph.text}"


def render_docx(
    segments: Sequence[Segment],
    metadata: dict[str, Any],
    *,
    date: str,
    speakers: Sequence[dict[str, Any]] = (),
) -> bytes:
    """The document's bytes. metadata: the .json's (source, engine, model, audio_seconds);
    speakers: [{"name", "seconds"}] as in the .json."""
    from docx import Document
    from docx.shared import Pt

    document = Document()
    document.core_properties.title = f"Transcript of {metadata.get('source', '')}"
    document.add_heading(f"Transcript of {metadata.get('source', '')}", level=1)
    engine = str(metadata.get("engine", ""))
    if metadata.get("model"):
        engine += f" ({metadata['model']})"
    for label, value in (
        ("Source", str(metadata.get("source", ""))),
        ("Date", date),
        ("Duration", clock(float(metadata.get("audio_seconds", 0.0)))),
        ("Engine", engine),
    ):
        line = document.add_paragraph()
        line.add_run(f"{label}: ").bold = True
        line.add_run(value)
    if speakers:
        document.add_heading("Speakers", level=2)
        for speaker in speakers:
            document.add_paragraph(
                f"{speaker['name']}: {clock(float(speaker['seconds']))}", style="List Bullet"
            )
    document.add_heading("Transcript", level=2)
    for paragraph in turn_paragraphs(segments):
        line = document.add_paragraph()
        stamp = line.add_run(f"[{clock(paragraph.start)}]")
        stamp.font.size = Pt(9)
        if paragraph.speaker:
            line.add_run(f" {paragraph.speaker}:").bold = True
        line.add_run(f" {paragraph.text}")
    buffer = io.BytesIO()
    document.save(buffer)
    return _without_timestamps(buffer.getvalue())


def _without_timestamps(package: bytes) -> bytes:
    """The same package with every member dated 1980-01-01: the same transcript gives the same
    bytes (a resumed job's outputs are byte-identical to an uninterrupted run's)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as source, zipfile.ZipFile(out, "w") as target:
        for member in source.infolist():
            info = zipfile.ZipInfo(member.filename, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, source.read(member))
    return out.getvalue()
