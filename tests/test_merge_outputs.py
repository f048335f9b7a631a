"""Merging piece results into one transcript, and the txt/srt/vtt/json writers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transcribed.atomic import atomic_write_text, remove_stale_temps
from transcribed.engines.base import Segment
from transcribed.merge import merge_pieces
from transcribed.outputs import render_srt, render_txt, render_vtt, write_outputs
from transcribed.planning import SAMPLE_RATE, PieceSpan
from transcribed.subtitles import make_cues


def span(index: int, start: float, end: float, keep_start: float | None = None, keep_end: float | None = None) -> PieceSpan:
    s = round(start * SAMPLE_RATE)
    e = round(end * SAMPLE_RATE)
    return PieceSpan(
        index=index,
        start=s,
        end=e,
        keep_start=s if keep_start is None else round(keep_start * SAMPLE_RATE),
        keep_end=e if keep_end is None else round(keep_end * SAMPLE_RATE),
    )


def test_segments_are_shifted_by_the_piece_offset_in_samples() -> None:
    """A segment at 1.5 s in a piece starting at 30.25 s lands at 31.75 s."""
    merged = merge_pieces(
        [
            (span(1, 30.25, 60.0), [Segment(start=1.5, end=3.0, text="second")]),
            (span(0, 0.0, 30.25), [Segment(start=0.5, end=2.0, text="first")]),
        ]
    )
    assert [(s.start, s.end, s.text) for s in merged] == [(0.5, 2.0, "first"), (31.75, 33.25, "second")]


def test_overlapping_pieces_keep_each_line_once() -> None:
    """Around a forced cut at 40 s, the line heard by both pieces is kept by the one whose own
    region holds its middle."""
    first = span(0, 0.0, 41.0, keep_end=40.0)
    second = span(1, 39.0, 80.0, keep_start=40.0)
    merged = merge_pieces(
        [
            (first, [Segment(start=10, end=12, text="early"), Segment(start=38.6, end=40.8, text="across the cut")]),
            (second, [Segment(start=0.0, end=1.8, text="across the cut"), Segment(start=5, end=6, text="late")]),
        ]
    )
    assert [s.text for s in merged] == ["early", "across the cut", "late"]


def test_segments_never_overlap_and_blank_text_is_dropped() -> None:
    """Touching segments are trimmed so each starts after the previous one ends."""
    merged = merge_pieces(
        [(span(0, 0, 30), [Segment(start=1, end=5, text="a  b"), Segment(start=4, end=6, text="c"), Segment(start=7, end=8, text="  ")])]
    )
    assert [(s.start, s.end, s.text) for s in merged] == [(1, 4, "a b"), (4, 6, "c")]


SEGMENTS = [Segment(start=0.5, end=2.25, text="Ever tried."), Segment(start=3661.001, end=3662.5, text="Fail --> better.")]
CUES = make_cues(SEGMENTS)


def test_srt_uses_comma_milliseconds_and_numbers_cues() -> None:
    """SRT cues are numbered from 1 with HH:MM:SS,mmm times."""
    assert render_srt(CUES) == (
        "1\n00:00:00,500 --> 00:00:02,250\nEver tried.\n\n2\n01:01:01,001 --> 01:01:02,500\nFail --> better.\n"
    )


def test_vtt_has_a_header_and_no_cue_terminator_inside_text() -> None:
    """WebVTT starts with WEBVTT, uses dot milliseconds, and '-->' in text cannot end a cue."""
    text = render_vtt(CUES)
    assert text.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:02.250\nEver tried.\n")
    assert "01:01:01.001 --> 01:01:02.500\nFail -&gt; better.\n" in text
    assert "-->" not in text.split("\n")[-2]


def test_txt_is_paragraphs_opening_with_their_time() -> None:
    """A pause of an hour starts a new paragraph; each opens with [hh:mm:ss]."""
    assert render_txt(SEGMENTS) == "[00:00:00] Ever tried.\n\n[01:01:01] Fail --> better.\n"


def test_write_outputs_publishes_five_files_and_no_temp_files(tmp_path: Path) -> None:
    """All five outputs appear, the json carries metadata and segments, and no temp file stays."""
    paths = write_outputs(tmp_path, "hearing", SEGMENTS, {"source": "hearing.mp3"})
    assert sorted(p.name for p in paths) == ["hearing.docx", "hearing.json", "hearing.srt", "hearing.txt", "hearing.vtt"]
    document = json.loads((tmp_path / "hearing.json").read_text())
    assert document["source"] == "hearing.mp3"
    assert document["segments"][1] == {"start": 3661.001, "end": 3662.5, "text": "Fail --> better."}
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the write dies before the rename, readers still see the old complete file."""
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def broken_replace(*_: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_stale_temp_files_from_a_crash_are_swept(tmp_path: Path) -> None:
    """Temp files a crash left behind are removed; real files are not."""
    (tmp_path / ".a.txt.tmp-1234").write_text("half")
    (tmp_path / "a.txt").write_text("whole")
    assert remove_stale_temps(tmp_path) == 1
    assert os.listdir(tmp_path) == ["a.txt"]
