"""Transcript writers (txt, srt, vtt, json; docx in docx_output.py), each file published
atomically in the outbox.

.srt and .vtt show the same cues (subtitles.make_cues); .json keeps the full segments (with word
times and speakers where there are any); .txt is paragraphs for reading, each opening with its
time `[hh:mm:ss]` (and the speaker, when one is known); .docx is a document to file, one
paragraph per speaker turn. Config `outputs` chooses which are written.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from transcribed import memory
from transcribed.atomic import atomic_write_bytes, atomic_write_chunks, atomic_write_text
from transcribed.docx_output import render_docx
from transcribed.engines.base import Segment
from transcribed.failpoints import failpoint
from transcribed.subtitles import Cue, SubtitleRules, TimedWord, make_cues, timed_words

OUTPUT_SUFFIXES = (".txt", ".srt", ".vtt", ".docx", ".json")
# python-docx's transient allocations are large (tens of MiB a document); rendered in whatever
# worker thread wrote the outputs, each thread's malloc arena kept its own copy (measured: RSS
# +120 MiB over 100 documents from 4 threads, against a flat +0 from one). One thread renders
# every .docx, so the memory is paid once.
_DOCX_THREAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="docx")


def _render_docx_and_trim(
    segments: list[Segment], metadata: dict[str, Any], date: str, speakers: Any
) -> bytes:
    try:
        return render_docx(segments, metadata, date=date, speakers=speakers)
    finally:
        memory.trim()  # hand lxml's freed pages back (glibc keeps them otherwise)


NO_SPEECH_WARNING = (
    "no speech was found in this recording: check the microphone, the recording's level, "
    "or the audio track"
)
# a new paragraph starts after a pause this long, or after this many words at a sentence end
PARAGRAPH_PAUSE_SECONDS = 2.0
PARAGRAPH_WORDS = 80
_SENTENCE_END = (".", "?", "!", "…", '."', '?"', '!"')


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _stamp(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"[{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}]"


def paragraphs(segments: Sequence[Segment]) -> list[list[TimedWord]]:
    """Words grouped into paragraphs: a new one at a speaker change, after a long pause, or
    after about PARAGRAPH_WORDS words once a sentence ends (twice that at any clause end)."""
    groups: list[list[TimedWord]] = []
    for word in timed_words(segments):
        if groups:
            current = groups[-1]
            last = current[-1]
            sentence_done = last.text.endswith(_SENTENCE_END)
            new = (
                word.speaker != last.speaker
                or word.start - last.end >= PARAGRAPH_PAUSE_SECONDS
                or (len(current) >= PARAGRAPH_WORDS and sentence_done)
                or (len(current) >= 2 * PARAGRAPH_WORDS and last.text.endswith((",", ";", ":")))
            )
            if not new:
                current.append(word)
                continue
        groups.append([word])
    return groups


def render_txt(segments: Sequence[Segment]) -> str:
    blocks = []
    for words in paragraphs(segments):
        speaker = f"{words[0].speaker}: " if words[0].speaker is not None else ""
        blocks.append(f"{_stamp(words[0].start)} {speaker}{' '.join(w.text for w in words)}\n")
    return "\n".join(blocks)


def render_srt(cues: Sequence[Cue]) -> str:
    blocks = []
    for number, cue in enumerate(cues, start=1):
        lines = list(cue.lines)
        if cue.new_speaker and cue.speaker is not None:
            lines[0] = f"{cue.speaker}: {lines[0]}"
        text = "\n".join(lines)
        blocks.append(f"{number}\n{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}\n{text}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # "-->" would end the cue early (WebVTT has no escape for it); & and < start markup
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("--&gt;", "-&gt;")
    )


def render_vtt(cues: Sequence[Cue]) -> str:
    blocks = []
    for cue in cues:
        text = "\n".join(_vtt_escape(line) for line in cue.lines)
        if cue.speaker is not None:
            name = cue.speaker.replace(">", "").replace("\n", " ")
            text = f"<v {name}>{text}</v>"
        blocks.append(f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}\n{text}\n")
    return "WEBVTT\n\n" + "\n".join(blocks)


def render_json(segments: Sequence[Segment], metadata: dict[str, Any]) -> Iterator[str]:
    """The .json document, `{**metadata, "text": ..., "segments": [...]}` exactly as
    json.dumps(indent=2) writes it, in parts: a segment at a time, so a ten-hour transcript's
    document is never built whole (as dicts and as one string it was ~5 times the segments'
    own memory: 91 MiB at the peak for ten hours of word times)."""

    def indented(value: Any, level: int) -> str:
        # JSON strings escape newlines, so every newline in the text is between two tokens
        return json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + "  " * level)

    yield "{"
    for number, key in enumerate({**metadata, "text": None, "segments": None}):
        yield ("," if number else "") + "\n  " + json.dumps(key, ensure_ascii=False) + ": "
        if key == "text":
            yield indented(" ".join(s.text for s in segments), 1)
        elif key != "segments":
            yield indented(metadata[key], 1)
        elif not segments:
            yield "[]"
        else:
            yield "["
            for index, segment in enumerate(segments):
                yield ("," if index else "") + "\n    " + indented(segment.as_dict(), 2)
            yield "\n  ]"
    yield "\n}\n"


def output_paths(folder: Path, stem: str) -> dict[str, Path]:
    return {suffix: folder / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES}


def write_outputs(
    folder: Path,
    stem: str,
    segments: list[Segment],
    metadata: dict[str, Any],
    rules: SubtitleRules | None = None,
    *,
    date: str = "",
    formats: Collection[str] = ("txt", "srt", "vtt", "json", "docx"),
) -> list[Path]:
    """Write the chosen transcripts (config `outputs`; default all five); the .json goes last,
    so its presence means all are there. A transcript without any speech says so in the
    .json's warnings. `date` is the .docx title block's."""
    if not any(s.text.strip() for s in segments):
        warnings = list(metadata.get("warnings") or [])
        if NO_SPEECH_WARNING not in warnings:
            metadata = {**metadata, "warnings": [*warnings, NO_SPEECH_WARNING]}
    paths = output_paths(folder, stem)
    # the .docx renders in its own thread meanwhile (lxml does much of its work without the GIL)
    docx = (
        _DOCX_THREAD.submit(
            _render_docx_and_trim, segments, metadata, date, metadata.get("speakers", ())
        )
        if "docx" in formats
        else None
    )
    try:
        _write_text_outputs(paths, segments, rules, formats)
    finally:
        rendered = docx.result() if docx is not None else None
    if rendered is not None:
        atomic_write_bytes(paths[".docx"], rendered)
    if "json" in formats:
        atomic_write_chunks(paths[".json"], render_json(segments, metadata))
    failpoint("outputs.json_written")
    return [path for suffix, path in paths.items() if suffix[1:] in formats]


def _write_text_outputs(
    paths: dict[str, Path],
    segments: list[Segment],
    rules: SubtitleRules | None,
    formats: Collection[str],
) -> None:
    cues = make_cues(segments, rules) if {"srt", "vtt"} & set(formats) else []
    if "txt" in formats:
        atomic_write_text(paths[".txt"], render_txt(segments))
    failpoint("outputs.txt_written")
    if "srt" in formats:
        atomic_write_text(paths[".srt"], render_srt(cues))
    failpoint("outputs.srt_written")
    if "vtt" in formats:
        atomic_write_text(paths[".vtt"], render_vtt(cues))
    failpoint("outputs.vtt_written")
