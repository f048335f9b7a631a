"""Transcript writers (txt, srt, vtt, json; docx in docx_output.py), each file published
atomically in the outbox."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from transcribed.atomic import atomic_write_bytes, atomic_write_text
from transcribed.docx_output import render_docx
from transcribed.engines.base import Segment
from transcribed.failpoints import failpoint

OUTPUT_SUFFIXES = (".txt", ".srt", ".vtt", ".docx", ".json")


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render_txt(segments: list[Segment]) -> str:
    return "".join(f"{segment.text}\n" for segment in segments)


def render_srt(segments: list[Segment]) -> str:
    blocks = [
        f"{number}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
        for number, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def render_vtt(segments: list[Segment]) -> str:
    # "-->" inside cue text would end the cue early; WebVTT has no escape for it.
    blocks = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.replace('-->', '->')}\n"
        for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render_json(segments: list[Segment], metadata: dict[str, Any]) -> str:
    document = {
        **metadata,
        "text": " ".join(s.text for s in segments),
        "segments": [s.as_dict() for s in segments],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def output_paths(folder: Path, stem: str) -> dict[str, Path]:
    return {suffix: folder / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES}


def write_outputs(
    folder: Path,
    stem: str,
    segments: list[Segment],
    metadata: dict[str, Any],
    *,
    date: str = "",
    formats: Collection[str] = ("txt", "srt", "vtt", "json", "docx"),
) -> list[Path]:
    """Write the chosen transcripts (config `outputs`; default all five); the .json goes last,
    so its presence means all are there. `date` is the .docx title block's."""
    paths = output_paths(folder, stem)
    if "txt" in formats:
        atomic_write_text(paths[".txt"], render_txt(segments))
    failpoint("outputs.txt_written")
    if "srt" in formats:
        atomic_write_text(paths[".srt"], render_srt(segments))
    failpoint("outputs.srt_written")
    if "vtt" in formats:
        atomic_write_text(paths[".vtt"], render_vtt(segments))
    failpoint("outputs.vtt_written")
    if "docx" in formats:
        docx = render_docx(segments, metadata, date=date, speakers=metadata.get("speakers", ()))
        atomic_write_bytes(paths[".docx"], docx)
    if "json" in formats:
        atomic_write_text(paths[".json"], render_json(segments, metadata))
    failpoint("outputs.json_written")
    return [path for suffix, path in paths.items() if suffix[1:] in formats]
